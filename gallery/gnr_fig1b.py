"""GNR Fig. 1b (gnr.txt Sec. 3.1): how many local minima and maxima lie within rho along random directions?

    python gallery/gnr_fig1b.py [--quick] [--out gallery] [--runs runs/gallery]

The paper trains ResNet-18 with SAM on CIFAR-100 (rho = 0.1), then, for 100 random directions d_i with
||d_i||_2 = 0.01, evaluates the training loss at w + k d_i, k = 0..10 (radius 0.1), and histograms the number
of local minima and maxima along each direction; it finds more than one local minimum within rho for most
directions. Here: an MLP (40-256-256-10, 77k parameters) trained with the library's SAM (rho = 0.1, SGD
momentum 0.9, lr 0.05 cosine, batch 100, 60 epochs) on MNIST-1D (4000 training samples), through the library's
``Trainer`` (cached under ``runs/gallery/``; re-running reuses the checkpoint), then
``landscape.sharpness.local_extrema`` with the paper's settings (100 directions, step 0.01, 10 steps; strict
interior extrema of each 11-point sequence), on the full training set in float64 and, as the paper's models
compute, in float32. Writes ``gnr_fig1b.png`` and prints the counts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from landscape.checkpoint import load_checkpoint, open_checkpoint  # noqa: E402
from landscape.objective import Objective  # noqa: E402
from landscape.sharpness import count_extrema, local_extrema  # noqa: E402
from optimizers.config import TrainConfig  # noqa: E402
from optimizers.trainer import Trainer  # noqa: E402

RHO, STEP, STEPS, DIRECTIONS = 0.1, 0.01, 10, 100


def config(quick: bool) -> TrainConfig:
    if quick:
        return TrainConfig(model="mlp", model_kwargs={"hidden": [32, 32]}, data="mnist1d",
                           data_kwargs={"num_samples": 600}, optimizer="sam", hparams={"rho": RHO}, lr=0.05,
                           momentum=0.9, epochs=3, batch_size=100, weight_decay=5e-4, seed=0)
    return TrainConfig(model="mlp", model_kwargs={"hidden": [256, 256]}, data="mnist1d", optimizer="sam",
                       hparams={"rho": RHO}, lr=0.05, momentum=0.9, epochs=60, batch_size=100, weight_decay=5e-4,
                       seed=0)


def train(cfg: TrainConfig, out: Path, progress: bool) -> Path:
    """The SAM checkpoint at ``out``: reused when it holds this very configuration, else (re)trained."""
    if out.exists() and load_checkpoint(out).train_config == cfg.to_dict():
        return out
    Trainer(cfg, out, progress=progress).run()
    return out


def extrema(ckpt_path: Path, dtype: torch.dtype, directions: int) -> dict[str, Any]:
    ckpt, model, data = open_checkpoint(ckpt_path)
    obj = Objective(model, data.x_train, data.y_train, task=data.task, dtype=dtype)
    # chunk_size=1: on a CPU, vmap over several weight vectors of an MLP is slower than one point at a time
    r = local_extrema(obj, directions=directions, step=STEP, steps=STEPS, seed=0, chunk_size=1)
    return {"result": r, "loss": float(r.losses[0][0]), "metrics": ckpt.metrics, "params": obj.num_params}


def histograms(losses: list[list[float]], endpoints: str) -> dict[str, Any]:
    """Counts per direction under ``count_extrema``'s rule (``exclude``: interior points only; ``include``: the
    two ends count on their one comparison, so w itself is a minimum along d if L(w) < L(w + d))."""
    counts = np.array([count_extrema(s, endpoints) for s in losses])
    top = STEPS + 1
    return {"minima": np.bincount(counts[:, 0], minlength=top), "maxima": np.bincount(counts[:, 1], minlength=top),
            "mean_minima": float(counts[:, 0].mean()), "mean_maxima": float(counts[:, 1].mean()),
            "at_least_two_minima": float(np.mean(counts[:, 0] >= 2))}


RULES = {"interior points only": ("exclude", "tab:blue"), "ends included": ("include", "tab:purple")}


def plot(losses64: list[list[float]], losses32: list[list[float]], hists: dict[str, dict[str, Any]], path: Path,
         info: str) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(14.0, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    width = 0.4
    for ax, kind in zip(axes[:2], ("minima", "maxima")):
        top = 3
        for i, (rule, (_, colour)) in enumerate(RULES.items()):
            hist = hists[rule][kind]
            top = max(top, int(np.flatnonzero(hist).max()))
            ax.bar(np.arange(len(hist)) + (i - 0.5) * width, hist, width, color=colour,
                   label=f"{rule}: mean {hists[rule]['mean_' + kind]:.2f}")
        ax.set_xlim(-0.6, top + 0.6)
        ax.set_xticks(range(top + 1))
        ax.set_xlabel(f"local {kind} along one direction within rho = {RHO:g}")
        ax.set_ylabel("directions")
        ax.set_title(f"local {kind} per direction ({len(losses64)} directions)", fontsize=10)
        ax.legend(fontsize=8, title="float64; counting", title_fontsize=8)
    ax = axes[2]
    k = np.arange(STEPS + 1) * STEP
    n = min(8, len(losses64))
    rise = np.array([np.array(s) - s[0] for s in losses64[:n] + losses32[:n]])
    exp = int(np.floor(np.log10(max(np.abs(rise).max(), 1e-300))))
    for i in range(n):
        ax.plot(k, rise[i] / 10.0 ** exp, color="tab:blue", lw=1.2, alpha=0.8, label="float64" if i == 0 else None)
        ax.plot(k, rise[n + i] / 10.0 ** exp, color="tab:orange", lw=1, ls="--", label="float32" if i == 0 else None)
    ax.axhline(0, color="0.6", lw=0.6)
    ax.set_xlabel("distance along d_i (k x 0.01)")
    ax.set_ylabel(f"L(w + k d_i) - L(w)   (x 1e{exp})")
    ax.set_title("the training loss along the first 8 directions", fontsize=10)
    ax.legend(fontsize=8)
    fig.suptitle(f"GNR Fig. 1b at toy scale: local minima / maxima of the training loss along random directions "
                 f"(||d|| = {STEP:g}, {STEPS} steps: radius {RHO:g}) around a SAM solution\n{info}", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=85)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a tiny model, 3 epochs, 20 directions (for tests)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--runs", type=Path, default=ROOT / "runs" / "gallery", help="where the SAM checkpoint is cached")
    args = p.parse_args(argv)
    cfg = config(args.quick)
    ckpt = train(cfg, args.runs / ("gnr_fig1b_sam_quick.pt" if args.quick else "gnr_fig1b_sam.pt"),
                 progress=not args.quick)
    directions = 20 if args.quick else DIRECTIONS
    results = {name: extrema(ckpt, dtype, directions) for name, dtype in
               (("float64", torch.float64), ("float32", torch.float32))}
    m = results["float64"]["metrics"]
    info = (f"MLP {cfg.model_kwargs['hidden']} ({results['float64']['params']} parameters), SAM rho = {RHO:g}, "
            f"{cfg.epochs} epochs on MNIST-1D: train loss {results['float64']['loss']:.4f}, "
            f"train acc {m['train_acc']:.3f}, test acc {m['test_acc']:.3f}")
    print(info)
    losses = {name: r["result"].losses for name, r in results.items()}
    hists = {rule: histograms(losses["float64"], endpoints) for rule, (endpoints, _) in RULES.items()}
    for name, ls in losses.items():
        for rule, (endpoints, _) in RULES.items():
            h = hists[rule] if name == "float64" else histograms(ls, endpoints)
            print(f"{name}, {rule}: mean minima {h['mean_minima']:.2f}, mean maxima {h['mean_maxima']:.2f}, "
                  f"directions with >= 2 minima {h['at_least_two_minima']:.2f}; minima histogram "
                  f"{h['minima'].tolist()}, maxima histogram {h['maxima'].tolist()}")
    same = [[count_extrema(a), count_extrema(b)] for a, b in zip(losses["float64"], losses["float32"])]
    agree = float(np.mean([a == b for a, b in same]))
    print(f"float32 and float64 give the same counts on {agree:.0%} of the directions")
    path = args.out / "gnr_fig1b.png"
    most = max(int(np.flatnonzero(h["minima"]).max()) for h in hists.values())
    plot(losses["float64"], losses["float32"], hists, path,
         f"{info}\nthe paper (ResNet-18, CIFAR-100): more than one local minimum within rho along most directions; "
         f"here: at most {most}")
    print(f"wrote {path}")
    return {"results": results, "histograms": hists, "float_agreement": agree, "checkpoint": ckpt, "png": path}


if __name__ == "__main__":
    torch.set_num_threads(1)  # a small MLP: on a busy 2-core machine thread hand-offs cost more than they save
    main()
