"""LETS: the radius rho learned over training, and the generalization gap of SAM / ASAM with and without LETS.

    python gallery/lets_rho.py [--quick] [--seeds 0 1 2] [--work runs/gallery] [--out gallery/lets_rho.png]
                               [--threads 1]

lets.txt learns SAM's radius rho = exp(beta) by a hypergradient step on the squared train/validation loss gap
every iteration (Alg. 1), and its Fig. 2 (CIFAR-100, ResNet-18) shows the generalization gap over the epochs:
LETS-SAM (LETS-ASAM) ends with a smaller gap than SAM (ASAM). Here: SAM (rho = 0.05) and ASAM (rho = 0.5,
eta = 0.01) against LETS-SAM / LETS-ASAM started from the same rho, on the gallery problem of ``trained.py`` (MLP
on MNIST-1D, ``trained.EPOCHS`` epochs, SGD base, cosine lr), validation batches drawn from the training set as
in the paper (Sec. 4.1). LETS runs twice: with the paper's beta lr 1e-4 (decay 0.99999 per step), and with the beta
lr that gives this run's 2,000 steps the same total Adam step budget as the paper's 78,200
(``trained.scaled_beta_lr``). Left: rho at every step (the trainer's step log ``X.steps.jsonl``); middle and
right: train acc - test acc and test loss - train loss after every epoch (``X.metrics.jsonl``), mean over
``--seeds`` with the min-max band. Prints the numbers; ``--quick``: toy size, one seed, seconds (for the tests).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

import trained  # noqa: E402

FAMILIES = {"SAM": ["sam", "lets_sam", "lets_sam_scaled"], "ASAM": ["asam", "lets_asam", "lets_asam_scaled"]}
STYLE = {"sam": ("black", "-"), "asam": ("black", "-"), "lets_sam": ("tab:blue", "--"),
         "lets_asam": ("tab:blue", "--"), "lets_sam_scaled": ("tab:red", "-"), "lets_asam_scaled": ("tab:red", "-")}


def collect(work: Path, seeds: list[int], quick: bool = False) -> dict[str, dict[str, Any]]:
    """``{method: {"rho": [per seed: (epoch position of each step, rho of each step)], "gen_gap"/"loss_gap":
    array (seeds, epochs), "test_acc": array (seeds,), "epochs": array}}`` for every method of ``FAMILIES``."""
    out: dict[str, dict[str, Any]] = {}
    for name in (n for names in FAMILIES.values() for n in names):
        rho, gen, loss, acc = [], [], [], []
        for seed in seeds:
            run = trained.train(name, work, quick=quick, seed=seed)
            rows = trained.metrics(run)
            gen.append([r["gen_gap"] for r in rows])
            loss.append([r["loss_gap"] for r in rows])
            acc.append(rows[-1]["test_acc"])
            if name.startswith("lets"):
                steps = trained.steps(run)
                per_epoch = len(steps) / len(rows)
                rho.append((np.array([s["step"] for s in steps]) / per_epoch, np.array([s["rho"] for s in steps])))
        out[name] = {"rho": rho, "gen_gap": np.array(gen), "loss_gap": np.array(loss), "test_acc": np.array(acc),
                     "epochs": np.arange(1, len(gen[0]) + 1), "label": trained.label(name, quick),
                     "rho0": trained.methods(quick)[name][1].get("rho")}
    return out


def plot(res: dict[str, dict[str, Any]], path: Path, seeds: list[int]) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import FormatStrFormatter

    n = len(seeds)
    fig = Figure(figsize=(15.0, 8.4))
    axes = fig.subplots(len(FAMILIES), 3, squeeze=False)
    for row, (family, names) in enumerate(FAMILIES.items()):
        ax_rho, ax_gen, ax_loss = axes[row]
        for name in names[1:]:
            colour, ls = STYLE[name]
            for k, (x, r) in enumerate(res[name]["rho"]):
                ax_rho.plot(x, r, ls, color=colour, lw=1.2, label=res[name]["label"] if k == 0 else None)
        ax_rho.axhline(res[names[0]]["rho0"], color="black", lw=1.0, label=f"{family}: rho = {res[names[0]]['rho0']:g}")
        ax_rho.set_yscale("log")
        ax_rho.yaxis.set_major_formatter(FormatStrFormatter("%g"))
        ax_rho.yaxis.set_minor_formatter(FormatStrFormatter("%g"))
        ax_rho.tick_params(axis="y", which="minor", labelsize=7)
        ax_rho.set_ylabel("rho")
        ax_rho.set_title(f"{family}: rho = exp(beta) learned by LETS at every step ({n} seed{'s' * (n > 1)})",
                         fontsize=10)
        ax_rho.legend(fontsize=8, loc="upper left")
        for ax, key, what in ((ax_gen, "gen_gap", "train acc - test acc"),
                              (ax_loss, "loss_gap", "test loss - train loss")):
            for name in names:
                colour, ls = STYLE[name]
                r = res[name]
                ys, x = r[key], r["epochs"]
                ax.plot(x, ys.mean(0), ls, color=colour, lw=1.5,
                        label=f"{r['label']}: {ys[:, -1].mean():.3f} at the end")
                if n > 1:
                    ax.fill_between(x, ys.min(0), ys.max(0), color=colour, alpha=0.12, lw=0)
            ax.set_ylabel(f"gap: {what}")
            ax.set_title(f"{family}: generalization gap, {what}", fontsize=10)
            ax.legend(fontsize=8, loc="upper left")
        for ax in axes[row]:
            ax.set_xlabel("epoch")
    band = f"mean of seeds {', '.join(map(str, seeds))} with min-max band" if n > 1 else f"seed {seeds[0]}"
    fig.suptitle("lets.txt Fig. 2 at small scale (MLP / MNIST-1D; paper: ResNet-18 / CIFAR-100): "
                 "LETS should end with a smaller gap than SAM / ASAM\n"
                 f"left: the learned radius; middle, right: gap after every epoch ({band}); "
                 "beta lr 1e-4 = the paper's, the other one scaled to this run's length", fontsize=11)
    fig.tight_layout()
    return trained.save_png(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trained.add_arguments(p, "lets_rho.png")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="training seeds [default: 0 1 2; quick: 0]")
    args = p.parse_args()
    trained.setup(args)
    seeds = args.seeds or ([0] if args.quick else [0, 1, 2])
    res = collect(args.work, seeds, args.quick)
    print(f"seeds {seeds}; at the end of training, mean ± std over the seeds")
    print(f"{'method':<30} {'gap: train-test acc':>20} {'gap: test-train loss':>21} {'test acc':>16}  final rho")
    for name, r in res.items():
        final = ", ".join(f"{x[-1]:.4g}" for _, x in r["rho"]) or f"{r['rho0']:g} (fixed)"
        cells = [f"{v.mean():.4f} ± {v.std():.4f}" for v in (r["gen_gap"][:, -1], r["loss_gap"][:, -1], r["test_acc"])]
        print(f"{r['label']:<30} {cells[0]:>20} {cells[1]:>21} {cells[2]:>16}  {final}")
    path = plot(res, args.out, seeds)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
