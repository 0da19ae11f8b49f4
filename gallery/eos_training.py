"""The edge of stability (Cohen et al., 2021) at small scale, measured by ``landscape train --track``.

    python gallery/eos_training.py [--quick] [--methods] [--out gallery]

1. Full-batch gradient descent (no momentum, no weight decay, constant lr) on a small regression task
   (``synthetic``: 200 rows, 10 inputs, a depth-2 tanh teacher; MSE) with a tanh MLP 10-32-32-1, at three
   learning rates. The tracker measures lambda_max of the full training loss (warm-started Lanczos) every
   25 steps. Progressive sharpening: lambda_max rises while it is below 2 / lr; at the edge of stability it
   stops at 2 / lr and oscillates around it (loss spikes where it overshoots), instead of GD diverging.
2. ``--methods``: SGD, SAM, GSAM and GA-SAM on the demo task (MLP 100-100 on MNIST-1D, lr 0.05, batch 100,
   momentum 0.9, cosine schedule, 10 epochs), lambda_max on a fixed 512-row subset every 20 steps, with the
   stability threshold (2 + 2 beta) / lr of SGD with momentum, and GA-SAM's per-layer gradient strengths.

Lanczos runs at ``tol=1e-4`` here (the tracker's default is 1e-3). Writes ``eos_training.png`` (and
``eos_methods.png``, ``eos_gasam_strengths.png``), the rows' summaries in ``eos_training.json``, and
prints them. Runs go under ``--runs`` (resumable: re-running redoes nothing finished).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from landscape.report.training import load_runs, plot_training, summary  # noqa: E402
from optimizers.config import TrainConfig  # noqa: E402
from optimizers.tracker import TrackConfig, read_rows  # noqa: E402
from optimizers.trainer import Trainer, run_paths  # noqa: E402

DATA = {"task": "regression", "n_train": 200, "n_test": 50, "dim": 10, "hidden": 32, "depth": 2, "num_outputs": 1}
GD = dict(model="mlp", model_kwargs={"hidden": [32, 32], "activation": "tanh"}, data="synthetic", data_kwargs=DATA,
          batch_size=200, momentum=0.0, weight_decay=0.0, schedule="constant", seed=0)
LRS = (0.25, 0.4, 0.55)
METHODS = {"sgd": {}, "sam": {"rho": 0.05}, "gsam": {"rho_max": 0.04, "rho_min": 0.02, "alpha": 0.01},
           "ga_sam": {"rho": 1e-4}}
DEMO = dict(model="mlp", model_kwargs={"hidden": [100, 100]}, data="mnist1d", lr=0.05, batch_size=100,
            weight_decay=5e-4, seed=0)


def run(config: TrainConfig, track: TrackConfig, out: Path) -> list[dict[str, Any]]:
    """Train (or resume, or reuse) the run and return its curvature rows."""
    if not out.exists():
        Trainer(config, out, progress=False, track=track).run()
    return read_rows(run_paths(out)["curvature"])


def edge_of_stability(runs_dir: Path, steps: int, lrs: tuple[float, ...]) -> dict[str, dict[str, Any]]:
    results = {}
    for lr in lrs:
        rows = run(TrainConfig(**GD, lr=lr, steps=steps), TrackConfig(every=25, subset=200, tol=1e-4),
                   runs_dir / f"gd_lr{lr}_{steps}.pt")
        late = [r["lambda_max"] for r in rows if r["step"] >= steps // 2]
        s = summary(rows)
        s.update(lr=lr, edge=2 / lr, late_mean=sum(late) / len(late), late_min=min(late), late_max=max(late))
        results[f"lr {lr}"] = s
    return results


def methods(runs_dir: Path, epochs: int) -> dict[str, dict[str, Any]]:
    results = {}
    for name, hp in METHODS.items():
        rows = run(TrainConfig(**DEMO, optimizer=name, hparams=hp, epochs=epochs), TrackConfig(every=20, tol=1e-4),
                   runs_dir / f"demo_{name}_{epochs}.pt")
        results[name] = summary(rows)
    return results


def plot_strengths(rows: list[dict[str, Any]], stem: Path) -> list[Path]:
    """GA-SAM's gradient strength ``||g_(i)|| / sqrt(n_(i))`` of each layer over the steps (one run)."""
    from landscape.landscapes.plots import _figure, _save

    fig = _figure(7.0, 3.2)
    ax = fig.subplots()
    for layer in rows[-1]["layers"]:
        ax.plot([r["step"] for r in rows], [r["layers"][layer] for r in rows], "-o", ms=2.5, label=f"layer {layer}")
    ax.plot([r["step"] for r in rows], [r["grad_strength"] for r in rows], "k--", lw=1, label="whole model")
    ax.set(xlabel="step", ylabel="gradient strength ||g|| / sqrt(n)", yscale="log",
           title="GA-SAM: gradient strength per layer (tracked subset)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, stem, ("png",))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="two learning rates, 300 steps (seconds)")
    p.add_argument("--methods", action="store_true", help="also SGD / SAM / GSAM / GA-SAM on the demo task")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    p.add_argument("--runs", type=Path, default=Path("runs/eos"))
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    steps, lrs = (300, (0.25, 0.55)) if args.quick else (1500, LRS)
    out: dict[str, Any] = {"edge_of_stability": edge_of_stability(args.runs, steps, lrs)}
    paths = [args.runs / f"gd_lr{lr}_{steps}.pt" for lr in lrs]
    figs = plot_training(load_runs(paths, [f"GD lr {lr} (2/lr = {2 / lr:.2f})" for lr in lrs]),
                         args.out / "eos_training", ("png",))
    for label, s in out["edge_of_stability"].items():
        print(f"{label}: 2/lr {s['edge']:.3f}; lambda_max {s['lambda_max_first']:.3f} at step 0, over the 2nd half "
              f"mean {s['late_mean']:.3f} (min {s['late_min']:.3f}, max {s['late_max']:.3f}) = "
              f"{s['late_mean'] / s['edge']:.3f} x 2/lr; {s['hvps']} HVPs in {s['rows']} measurements")
    if args.methods:
        epochs = 2 if args.quick else 10
        out["methods"] = methods(args.runs, epochs)
        paths = [args.runs / f"demo_{name}_{epochs}.pt" for name in METHODS]
        runs = load_runs(paths, list(METHODS))
        figs += plot_training(runs, args.out / "eos_methods", ("png",))
        figs += plot_strengths(runs[-1][1], args.out / "eos_gasam_strengths")
        for name, s in out["methods"].items():
            print(f"{name}: lambda_max {s['lambda_max_first']:.3f} -> {s['lambda_max_last']:.3f} (max "
                  f"{s['lambda_max_max']:.3f}); max lambda_max / threshold {s['edge_ratio_max']:.3f}")
    if not args.quick:
        (args.out / "eos_training.json").write_text(json.dumps(out, indent=2, sort_keys=True) + "\n")
    print("wrote " + " ".join(map(str, figs)))
    out["files"] = figs
    return out


if __name__ == "__main__":
    main()
