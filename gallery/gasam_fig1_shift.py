"""GA-SAM Fig. 1: near a minimum the test loss is the training loss shifted by delta = theta* - theta.

    python gallery/gasam_fig1_shift.py [--quick]

Theorem 1 of the paper (ga-sam.txt Sec. 2.3): with theta the training minimum and theta* the test minimum,
L(w; D*) ~ L(w - delta; D) + C near them, C = L(theta*; D*) - L(theta; D). Its Fig. 1 (an MLP on MNIST, App.
C.1) plots the training loss, the test loss and the shifted training loss along the line through theta and
theta*. Here ``landscape shift`` does it for two models of gasam_runs.py: theta* is theta fine-tuned on the
test split by full-batch gradient descent (heavy ball), and the losses are evaluated on the whole splits along
w = theta + t delta.

(a) an MLP (one hidden layer of 32) on MNIST-1D with 32000 training / 8000 test samples: 20 samples per
    parameter, so the training and test minima are close and the loss around them nearly quadratic, the
    small-shift regime of the theorem (the paper's MNIST MLP is the same kind of model);
(b) the TextCNN of Fig. 3, which interpolates its noisy training labels (114k parameters, 2000 texts): the test
    set can be memorized too, so theta* is far from theta and the small-shift approximation holds only close
    to theta*.

Prints and stores (gallery/gasam_fig1_shift.json) the RMS gap between the test loss and the shifted training
loss, and between the test loss and the unshifted one, with GA-SAM's C and with the best constant for each,
over the whole line and over the neighbourhood t in [0.5, 1.5] of theta*.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import gasam_runs as R  # noqa: E402
from landscape.cli import main as landscape  # noqa: E402
from landscape.landscapes.interpolation import shifted_curves  # noqa: E402
from landscape.landscapes.plots import draw_shift  # noqa: E402

PANELS = {"mlp": "(a) MLP [32] on MNIST-1D, 32k train / 8k test (20 samples per parameter):\n"
                 "minima close, the theorem's regime: shifted train loss ≈ test loss",
          "textcnn": "(b) TextCNN of Fig. 3 (114k parameters, 2000 texts, 20% noisy labels):\n"
                     "it memorizes the test set too: θ* is far, the shift holds only close to θ*"}
QUICK_PANELS = {"mlp": "(a) MLP on MNIST-1D [--quick]", "textcnn": "(b) TextCNN on synthetic text [--quick]"}
FINETUNE = {"steps": 500, "lr": 0.1, "momentum": 0.9}
RANGE, PER_UNIT = (-0.5, 1.5), 20
NEAR = (0.5, 1.5)
"""The neighbourhood of theta* (t = 1) where the theorem's small-shift approximation is claimed."""


def shift(task: str, args: argparse.Namespace) -> dict:
    """``landscape shift`` on the task's baseline checkpoint; its JSON (resumable: the CLI reuses its files)."""
    ckpt = R.checkpoint(task, "baseline", quick=args.quick, work=args.work)
    stem = ckpt.with_suffix("").as_posix() + ".shift"
    steps = 50 if args.quick else FINETUNE["steps"]
    per_unit = 5 if args.quick else PER_UNIT
    code = landscape(["shift", str(ckpt), "--finetune-steps", str(steps), "--finetune-lr", str(FINETUNE["lr"]),
                      "--finetune-momentum", str(FINETUNE["momentum"]), "--range", *map(str, RANGE),
                      "--per-unit", str(per_unit), "--device", "cpu", "--out", stem, "--quiet"])
    if code:
        raise SystemExit(code)
    result = json.loads(Path(stem + ".json").read_text())
    with np.load(stem + ".npz") as z:  # the whole grid, for the same RMS gaps on the neighbourhood of theta*
        near = shifted_curves(z["axis_0"], z["train_loss"], z["test_loss"], per_unit, *NEAR)
    result["near"] = {k: v for k, v in near.items() if k.startswith("rms_")}
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    R.add_common_args(p)
    args = p.parse_args(argv)
    R.setup(args)
    results = {task: shift(task, args) for task in PANELS}

    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5.2))
    titles = QUICK_PANELS if args.quick else PANELS
    for ax, (task, r) in zip(fig.subplots(1, 2), results.items()):
        draw_shift(ax, r, title=titles[task])
        near = r["near"]
        ax.text(0.5, -0.2, f"‖δ‖ = {r['delta_norm']:.3g}.  RMS(test − shifted train) vs RMS(test − train):\n"
                f"with the theorem's C {r['rms_test_vs_shifted']:.3g} vs {r['rms_test_vs_train']:.3g};  with the best "
                f"constant {r['rms_test_vs_shifted_best_constant']:.3g} vs {r['rms_test_vs_train_best_constant']:.3g}"
                f"\n(near θ*, t ∈ [{NEAR[0]}, {NEAR[1]}]: {near['rms_test_vs_shifted_best_constant']:.3g} vs "
                f"{near['rms_test_vs_train_best_constant']:.3g})",
                transform=ax.transAxes, ha="center", va="top", fontsize=8.5,
                bbox={"boxstyle": "round", "fc": "white", "ec": "0.8"})
    fig.suptitle("GA-SAM Fig. 1 reproduced: training loss, test loss and the training loss shifted by δ = θ* − θ "
                 f"(θ* = θ fine-tuned on the test set, t ∈ [{RANGE[0]}, {RANGE[1]}])", fontsize=10)
    fig.tight_layout()
    png = R.save_png(fig, args.out / "gasam_fig1_shift.png")
    keys = ("delta_norm", "constant", "rms_test_vs_shifted", "rms_test_vs_train", "rms_test_vs_shifted_best_constant",
            "rms_test_vs_train_best_constant")
    summary = {task: {k: r[k] for k in keys} | {"near": r["near"], "theta_star": r["theta_star"]}
               for task, r in results.items()}
    out = {"quick": args.quick, "range": RANGE, "near_range": NEAR, "finetune": FINETUNE, "summary": summary,
           "curves": {task: {k: r[k] for k in ("t", "train", "test", "shifted")} for task, r in results.items()},
           "settings": {t: R.describe(t, "baseline") for t in PANELS}}
    (args.out / "gasam_fig1_shift.json").write_text(json.dumps(out, indent=1))
    for task, s in summary.items():
        ft = s["theta_star"]["finetune"]
        print(f"{titles[task]}\n  fine-tune: test loss {ft['test_loss_before']:.4f} -> {ft['test_loss_after']:.4f}; "
              f"||delta|| {s['delta_norm']:.4g}, C {s['constant']:.4g}\n"
              f"  RMS(test - shifted train) {s['rms_test_vs_shifted']:.4g} vs RMS(test - train) "
              f"{s['rms_test_vs_train']:.4g}; with the best constant for each "
              f"{s['rms_test_vs_shifted_best_constant']:.4g} "
              f"vs {s['rms_test_vs_train_best_constant']:.4g}\n  near theta* (t in {list(NEAR)}), best constant: "
              f"RMS(test - shifted train) {s['near']['rms_test_vs_shifted_best_constant']:.4g} vs RMS(test - train) "
              f"{s['near']['rms_test_vs_train_best_constant']:.4g}")
    print(f"wrote {png} ({png.stat().st_size // 1024} KB) and {args.out / 'gasam_fig1_shift.json'}")
    return out


if __name__ == "__main__":
    main()
