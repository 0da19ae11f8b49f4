"""GNR Fig. 2 at small scale: top Hessian eigenvalues and Hessian trace of SGD, SGD + GNR, SAM, SAM + GNR.

    python gallery/gnr_fig2.py [--quick] [--work runs/gallery] [--out gallery/gnr_fig2.png] [--threads 1]

gnr.txt Sec. 3.4, Fig. 2: ResNet-18 on CIFAR-100 trained 200 epochs by SGD, SGD + GNR, SAM and SAM + GNR; the
histogram of the top-50 Hessian eigenvalues (power iteration) and the Hessian trace (Hutchinson) at epochs 100
and 200. The paper finds GNR lowers both, and SAM + GNR lowest of all at convergence.

Here: the gallery problem of ``trained.py`` (MLP [128, 128] on MNIST-1D, ``trained.EPOCHS`` epochs, cosine
schedule), the four methods with the paper's CIFAR settings (GNR rho = alpha = 0.1, exact HVPs; SAM rho = 0.05,
SAM + GNR = GNR with ``oracle=sam``), the trajectory checkpoints at the middle and the end of training. For each,
:func:`landscape.analysis.analyze` on the full training set (eval mode): the top-``K`` eigenvalues by thick-restart
Lanczos and the trace by Hutch++ (Lanczos sketch, stopping at 1% relative standard error). The reports are cached
as JSON next to the runs (a re-run resumes). Prints the numbers; ``--quick``: toy size, seconds (for the tests).
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
from landscape.analysis import analyze  # noqa: E402
from landscape.checkpoint import open_checkpoint  # noqa: E402

METHODS = ["sgd", "sgd_gnr", "sam", "sam_gnr"]
COLOURS = {"sgd": "tab:blue", "sgd_gnr": "tab:cyan", "sam": "tab:red", "sam_gnr": "tab:orange"}


def measure(work: Path, quick: bool = False, seed: int = 0) -> dict[str, dict[int, dict[str, Any]]]:
    """``{method: {epoch: {"eigenvalues", "trace", "trace_stderr", "train_acc", "test_acc", "converged"}}}`` at
    the middle and the end of training."""
    top_k, trace_samples = (5, 40) if quick else (20, 150)
    out: dict[str, dict[int, dict[str, Any]]] = {}
    for name in METHODS:
        run = trained.train(name, work, quick=quick, seed=seed)
        out[name] = {}
        for epoch, path in trained.trajectory(run).items():
            if epoch == 0:
                continue
            _, model, data = open_checkpoint(path)
            r = analyze(model, data, json_path=path.with_suffix(".gnr_fig2.json"), top_k=top_k, residuals=False,
                        trace_samples=trace_samples, sharpness_rho=[], adaptive_rho=[], gap_rho=[], seed=0)
            eig, tr = r["hessian_eigenvalues"], r["hessian_trace"]
            out[name][epoch] = {"eigenvalues": eig["eigenvalues"], "trace": tr["trace"], "trace_stderr": tr["stderr"],
                                "converged": eig["converged"] and tr["converged"],
                                "train_acc": r["metrics"]["train_acc"], "test_acc": r["metrics"]["test_acc"]}
    return out


def plot(results: dict[str, dict[int, dict[str, Any]]], path: Path, k: int, epochs_total: int,
         quick: bool = False) -> Path:
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    stages = sorted({e for by in results.values() for e in by})
    names = list(results)
    labels = [trained.label(n, quick) for n in names]
    allev = np.concatenate([by[e]["eigenvalues"] for by in results.values() for e in by])
    bins = np.linspace(allev.min(), allev.max(), 13)
    fig = Figure(figsize=(12.0, 3.4 * len(stages) + 0.8))
    axes = fig.subplots(len(stages), 2, squeeze=False, gridspec_kw={"width_ratios": [1.9, 1.0]})
    for row, epoch in enumerate(stages):
        ax, bx = axes[row]
        evs = [np.asarray(results[n][epoch]["eigenvalues"]) for n in names]
        ax.hist(evs, bins=bins, color=[COLOURS[n] for n in names],
                label=[f"{lab}: λ_max = {ev.max():.3g}, mean = {ev.mean():.3g}" for lab, ev in zip(labels, evs)])
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel("count")
        ax.set_title(f"epoch {epoch} of {epochs_total}: histogram of the top-{k} Hessian eigenvalues (Lanczos)",
                     fontsize=10)
        ax.legend(fontsize=8, loc="upper right")
        tr = [results[n][epoch]["trace"] for n in names]
        se = [results[n][epoch]["trace_stderr"] for n in names]
        bars = bx.bar(range(len(names)), tr, yerr=se, capsize=3, color=[COLOURS[n] for n in names])
        bx.bar_label(bars, labels=[f"{t:.1f}" for t in tr], fontsize=8, padding=2)
        bx.set_xticks(range(len(names)), labels, fontsize=8)
        bx.set_ylabel("Hessian trace")
        bx.set_ylim(0, 1.15 * max(tr))
        bx.set_title(f"epoch {epoch}: Hessian trace (Hutch++ ± std. error)", fontsize=10)
    axes[-1][0].set_xlabel("eigenvalue of the Hessian of the training loss (full training set)")
    fig.suptitle("gnr.txt Fig. 2 at small scale: Hessian spectra of SGD, SGD + GNR, SAM, SAM + GNR (paper: GNR lowers "
                 "the top eigenvalues and the trace)\npaper: ResNet-18 / CIFAR-100 at epochs 100 and 200; here: "
                 "MLP / MNIST-1D in the middle and at the end of training", fontsize=11)
    fig.tight_layout()
    return trained.save_png(fig, path)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    trained.add_arguments(p, "gnr_fig2.png")
    p.add_argument("--seed", type=int, default=0, help="training seed [default: 0]")
    args = p.parse_args()
    trained.setup(args)
    results = measure(args.work, args.quick, args.seed)
    k = len(next(iter(next(iter(results.values())).values()))["eigenvalues"])
    epochs = trained.QUICK_EPOCHS if args.quick else trained.EPOCHS
    print(f"seed {args.seed}; top-{k} Hessian eigenvalues (Lanczos) and trace (Hutch++) on the training set")
    print(f"{'method':<10} {'epoch':>5} {'lambda_max':>10} {f'lambda_{k}':>10} {'mean top-' + str(k):>11} "
          f"{'trace':>9} {'± se':>6} {'train acc':>9} {'test acc':>8}")
    for name, by in results.items():
        for epoch, r in sorted(by.items()):
            ev = r["eigenvalues"]
            print(f"{trained.label(name, args.quick):<10} {epoch:>5} {max(ev):>10.4g} {min(ev):>10.4g} "
                  f"{np.mean(ev):>11.4g} {r['trace']:>9.4g} {r['trace_stderr']:>6.2g} {r['train_acc']:>9.4f} "
                  f"{r['test_acc']:>8.4f}" + ("" if r["converged"] else "  (not converged)"))
    path = plot(results, args.out, k, epochs, args.quick)
    print(f"wrote {path} ({path.stat().st_size // 1024} KB)")


if __name__ == "__main__":
    main()
