"""GA-SAM Fig. 3: the top-50 eigenvalues of the Hessian "under the Fisher information matrix assumption".

    python gallery/gasam_fig3_eigenvalues.py [--quick] [--seeds 0 1 2]

The paper (ga-sam.txt Sec. 5.3) estimates the Hessian by the empirical Fisher F = E_z[g_z g_z^T] (Pascanu
and Bengio 2013) and shows that its top-50 eigenvalues are lower for GA-SAM than for the baselines. Here:
the models of gasam_runs.py (TextCNN on synthetic text, the IMDB stand-in; a 2-layer LSTM language model on
the generated corpus, the PTB stand-in), each trained with its baseline optimizer, SAM and GA-SAM at the
paper's settings (App. C.2), GA-SAM at 3x and 10x the paper's eps (at this scale the paper's eps is a small
perturbation: see gasam_runs.METHODS), and a control: GA-SAM with eps = 1e-9, i.e. its K + 1 = 2 passes per
step (two dropout masks, averaged gradients) without a perturbation worth the name. Three training seeds by
default (about 13 minutes on one core when nothing is cached; the runs and their eigenvalues are cached under
runs/gallery/gasam/, so re-plotting takes seconds; ``--seeds 0`` for one seed). Every eigenvalue is exact:
``landscape analyze --fisher-k 50 --fisher-method gram`` (the Gram matrix of the per-sample gradients over
the whole training set). Writes gallery/gasam_fig3_eigenvalues.png and .json; prints the ratios to the
baseline (per seed, then averaged).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import gasam_runs as R  # noqa: E402
from landscape.analysis import analyze  # noqa: E402
from landscape.checkpoint import open_checkpoint  # noqa: E402

TASKS = {"textcnn": "TextCNN, synthetic text (IMDB stand-in)",
         "lstm": "2-layer LSTM LM, generated corpus (PTB stand-in)"}
METHODS = ["baseline", "sam", "ga_sam", "ga_sam_x3", "ga_sam_x10", "ga_sam_control"]
STYLE = {"baseline": ("tab:blue", "o", "-"), "sam": ("tab:orange", "s", "-"), "ga_sam": ("tab:green", "^", "-"),
         "ga_sam_x3": ("tab:purple", "P", "-"), "ga_sam_x10": ("tab:red", "D", "-"),
         "ga_sam_control": ("black", "v", ":")}
K = 50


def measure(path: Path) -> dict:
    """Metrics and the top-K empirical Fisher eigenvalues of a checkpoint (cached next to it, resumable)."""
    _, model, data = open_checkpoint(path)
    report = analyze(model, data, json_path=path.with_suffix(".fisher.json"), device="cpu", top_k=0,
                     trace_samples=0, sharpness_rho=[], adaptive_rho=[], gap_rho=[], fisher_k=K,
                     fisher_method="gram")
    m = report["metrics"]
    return {"checkpoint": str(path), "train_loss": m["train_loss"], "test_loss": m["test_loss"],
            "train_acc": m["train_acc"], "test_acc": m["test_acc"],
            "eigenvalues": report["fisher_eigenvalues"]["eigenvalues"]}


def ratios(ev: np.ndarray, base: np.ndarray) -> np.ndarray:
    """``ev / base`` where the baseline eigenvalue is positive (past the Fisher's rank both are 0)."""
    ok = base > 0
    return ev[ok] / base[ok]


def summarize(runs: dict[str, dict[str, list[dict]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Per task and method, over seeds: mean of lambda_1, of the top-K sum, and their ratios to the baseline."""
    out: dict[str, dict[str, dict[str, float]]] = {}
    for task, by_method in runs.items():
        base = by_method["baseline"]
        out[task] = {}
        for method, seeds in by_method.items():
            ev = np.array([s["eigenvalues"] for s in seeds])
            bev = np.array([s["eigenvalues"] for s in base])
            out[task][method] = {
                "lambda_1": float(ev[:, 0].mean()), "top_sum": float(ev.sum(1).mean()),
                "ratio_lambda_1": float((ev[:, 0] / bev[:, 0]).mean()),
                "ratio_top_sum": float((ev.sum(1) / bev.sum(1)).mean()),
                "ratio_median": float(np.median(ratios(ev, bev))),  # over seeds and the K indices
                "train_loss": float(np.mean([s["train_loss"] for s in seeds])),
                "test_loss": float(np.mean([s["test_loss"] for s in seeds])),
                "test_acc": float(np.mean([s["test_acc"] for s in seeds])),
                "seeds": len(seeds)}
    return out


def plot(runs: dict, summary: dict, path: Path, quick: bool) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(12, 6.2))
    grid = fig.subplots(2, len(runs), squeeze=False, gridspec_kw={"height_ratios": [3.2, 1]})
    axes, keys = grid[0], grid[1]
    idx = np.arange(1, K + 1)
    for ax, key, (task, by_method) in zip(axes, keys, runs.items()):
        for method, seeds in by_method.items():
            colour, marker, ls = STYLE[method]
            ev = np.array([s["eigenvalues"] for s in seeds])
            s = summary[task][method]
            head = (f"{R.method_label(task, method)}: λ1 {s['lambda_1']:.3g} "
                    f"(×{s['ratio_lambda_1']:.2f} of the baseline's)")
            label = (f"{head}, train loss {s['train_loss']:.3f}, test acc {s['test_acc']:.3f}" if task == "textcnn"
                     else f"{head}, train / test ppl {np.exp(s['train_loss']):.2f} / {np.exp(s['test_loss']):.2f}")
            ax.plot(idx, ev.mean(0), ls=ls, marker=marker, ms=3, lw=1.2, color=colour, label=label)
            if len(seeds) > 1:
                ax.fill_between(idx, ev.min(0), ev.max(0), color=colour, alpha=0.15, lw=0)
        ax.set_yscale("log")
        ax.set_xlabel("eigenvalue index")
        ax.set_ylabel("eigenvalue of the empirical Fisher")
        n = len(next(iter(by_method.values())))
        ax.set_title(f"{TASKS[task]}" + (f" — mean of {n} seeds (band: min-max)" if n > 1 else ""), fontsize=9)
        key.axis("off")  # the legend under its panel
        key.legend(*ax.get_legend_handles_labels(), fontsize=7.5, loc="upper center", frameon=False,
                   title="λ1: mean over seeds (× the mean ratio to the baseline of the same seed)", title_fontsize=7.5)
        ax.grid(alpha=0.3, which="both", lw=0.4)
    fig.suptitle("GA-SAM Fig. 3 reproduced: top-50 eigenvalues of the Hessian under the Fisher assumption "
                 "(exact empirical Fisher, whole training set)" + ("  [--quick]" if quick else ""), fontsize=10)
    fig.tight_layout()
    return R.save_png(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    R.add_common_args(p)
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds [default: 0 1 2]")
    args = p.parse_args(argv)
    R.setup(args)
    runs: dict[str, dict[str, list[dict]]] = {}
    for task in TASKS:
        runs[task] = {m: [measure(R.checkpoint(task, m, quick=args.quick, seed=s, work=args.work))
                          for s in args.seeds] for m in METHODS}
    summary = summarize(runs)
    png = plot(runs, summary, args.out / "gasam_fig3_eigenvalues.png", args.quick)
    result = {"k": K, "seeds": args.seeds, "quick": args.quick, "summary": summary, "runs": runs,
              "settings": {t: {m: R.describe(t, m) for m in METHODS} for t in TASKS}}
    (args.out / "gasam_fig3_eigenvalues.json").write_text(json.dumps(result, indent=1))
    for task in TASKS:
        print(f"\n{TASKS[task]}")
        for method in METHODS:
            s = summary[task][method]
            print(f"  {R.method_label(task, method):28s} lambda_1 {s['lambda_1']:.4g}  top-{K} sum {s['top_sum']:.4g}  "
                  f"ratio to baseline: lambda_1 {s['ratio_lambda_1']:.3f}, sum {s['ratio_top_sum']:.3f}, "
                  f"median {s['ratio_median']:.3f}  | train loss {s['train_loss']:.4f}, "
                  f"test loss {s['test_loss']:.4f}, "
                  f"test acc {s['test_acc']:.4f}")
    print(f"\nwrote {png} ({png.stat().st_size // 1024} KB) and {args.out / 'gasam_fig3_eigenvalues.json'}")
    return result


if __name__ == "__main__":
    main()
