"""LETS Fig. 5 at small scale: 2-D loss landscapes of SGD, SAM and LETS-SAM side by side (``landscape compare``).

    python gallery/lets_landscapes.py [--quick] [--work runs/gallery] [--out gallery/lets_landscapes.png] [--threads 1]

lets.txt Sec. 4.7, Fig. 5 (ResNet-18, CIFAR-10): the training-loss landscape of LETS-SAM is flatter than SAM's.
Here: the gallery problem of ``trained.py`` (MLP on MNIST-1D) trained by SGD, SAM (rho = 0.05) and LETS-SAM from
rho = 0.05 with the paper's beta lr 1e-4 and with the beta lr scaled to this run's length (see ``lets_rho.py``),
all from the same initialization (seed 0). ``landscape compare`` draws the training loss on the plane of two
random filter-normalized directions (the same seed for every model, each normalized to its own weights) with
shared axes and one colour scale (clipped at ln 10, the loss of a uniform guess, so that the basins show),
and the linear interpolations between consecutive models. The numbers printed: the loss at each centre, the
mean rise of the training loss over the grid and the fraction of the grid below ln 10 (the basin), then the
library's sharpness measures of the four models (``landscape analyze``: lambda_max, Hessian trace, worst-case and
adaptive sharpness). ``--quick``: toy size, coarse grid, seconds (for the tests).
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import trained  # noqa: E402
from landscape.analysis import analyze, file_digest  # noqa: E402
from landscape.checkpoint import open_checkpoint  # noqa: E402
from landscape.cli import main as landscape  # noqa: E402
from landscape.landscapes.surface import Surface  # noqa: E402

METHODS = ["sgd", "sam", "lets_sam", "lets_sam_scaled"]
CHANCE = math.log(10)  # cross-entropy of a uniform guess over MNIST-1D's 10 classes: the colour scale's top
MEASURES = {"top_k": 1, "trace_samples": 150, "sharpness_rho": [0.05], "adaptive_rho": [0.5], "gap_rho": []}


def landscapes(runs: dict[str, Path], stem: Path, quick: bool) -> dict[str, Any]:
    """``landscape compare`` of the runs; returns its summary (``STEM.json``) with each surface's mean rise."""
    labels = [trained.label(n, quick) for n in runs]
    grid = ["--xpoints", "7", "--interp-points", "7"] if quick else ["--xpoints", "41"]
    code = landscape(["compare", *map(str, runs.values()), "--labels", *labels, "--split", "train", *grid,
                      "--vmax", f"{CHANCE:.4f}", "--no-html", "--quiet", "--out", str(stem), "--title",
                      "lets.txt Fig. 5 at small scale (MLP / MNIST-1D): training loss around SGD, SAM and LETS-SAM "
                      "minima (paper: LETS-SAM flatter than SAM)\nrandom filter-normalized directions, shared axes; "
                      f"one colour scale clipped at the loss of a uniform guess, ln 10 = {CHANCE:.2f}"])
    if code:
        raise SystemExit(code)
    summary = json.loads(Path(f"{stem}.json").read_text())["landscapes"]
    for c in summary["checkpoints"]:
        s = Surface.load(c["surface"])
        z = np.asarray(s["train_loss"], dtype=np.float64)
        c["mean_rise"] = float(np.mean(z - c["at_checkpoint"]["train_loss"]))
        c["basin"] = float(np.mean(z < CHANCE))
    return summary


def measures(runs: dict[str, Path], quick: bool) -> list[Path]:
    """``landscape analyze`` reports of the runs (cached as ``X.lets_landscapes.json``)."""
    out = []
    for path in runs.values():
        ckpt, model, data = open_checkpoint(path)
        header = {"checkpoint": {"path": str(path), "sha256": file_digest(path)},
                  "model": {"name": ckpt.model_name, "kwargs": ckpt.model_kwargs},
                  "data": {"name": ckpt.data_name, "kwargs": ckpt.data_kwargs}}  # the labels name the optimizer
        json_path = path.with_suffix(".lets_landscapes.json")
        analyze(model, data, header=header, json_path=json_path, seed=0,
                **{**MEASURES, "trace_samples": 40 if quick else MEASURES["trace_samples"]})
        out.append(json_path)
    return out


def main() -> None:
    from rich.console import Console

    from landscape.study.compare import measures_table

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trained.add_arguments(p, "lets_landscapes.png")
    args = p.parse_args()
    trained.setup(args)
    runs = {name: trained.train(name, args.work, quick=args.quick) for name in METHODS}
    stem = Path(args.work) / ("lets_landscapes-quick" if args.quick else "lets_landscapes") / "compare"
    summary = landscapes(runs, stem, args.quick)
    print("over the plotted grid w + a d1 + b d2, a, b in [-1, 1]: the mean rise of the training loss, and the basin "
          "(the fraction of the grid where the loss is below ln 10)")
    for c in summary["checkpoints"]:
        print(f"  {c['label']:<28} L(w) = {c['at_checkpoint']['train_loss']:.4f}  mean rise = {c['mean_rise']:.4f}  "
              f"basin = {c['basin']:.3f}")
    labels = [trained.label(n, args.quick) for n in runs]
    Console(width=160).print(measures_table(measures(runs, args.quick), labels=labels,
                                            title="landscape analyze (training set)"))
    path = trained.convert_png(f"{stem}.png", args.out)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
