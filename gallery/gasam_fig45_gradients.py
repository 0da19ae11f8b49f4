"""GA-SAM Figs. 4-5: gradient strengths in different learning phases and in different layers.

    python gallery/gasam_fig45_gradients.py [--quick] [--samples 500]

GA-SAM's scales T_(i) = sqrt(n_(i)) / (||g_(i)|| sqrt(n)) (eq. 13) rest on Prop. 3: the right corruption
strength of a parameter group goes as 1 / G_(i), with G_(i) = E_z ||grad_(i) l(w; z)|| / sqrt(n_(i)) the
average per-sample gradient strength of the group. Its Sec. 5.5 motivates them with Fig. 4 (gradient norms are
much larger early in training) and Fig. 5 (higher layers of the Transformer have larger gradients). Here G and
G_(i) are measured with ``landscape.curvature.gradients.gradient_norms(batch_size=1, by="layer")`` (per-sample
gradients, one group per layer, the LSTM's two layers apart) at every epoch's trajectory checkpoint (epoch 0 =
the initialization) of the baseline runs of gasam_runs.py, on a fixed seeded subset of the training set.
Writes gallery/gasam_fig45_gradients.png and .json and prints the numbers.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402

import gasam_runs as R  # noqa: E402
from landscape.checkpoint import open_checkpoint  # noqa: E402
from landscape.curvature.gradients import gradient_norms  # noqa: E402
from landscape.objective import Objective  # noqa: E402

TASKS = {"textcnn": "TextCNN, synthetic text (Adam)", "lstm": "2-layer LSTM LM, generated corpus (SGD)"}
LAYER_NAMES = {"embedding": "embedding", "convs.0": "conv k=3", "convs.1": "conv k=4", "convs.2": "conv k=5",
               "fc": "output (fc)", "lstm.l0": "LSTM layer 1", "lstm.l1": "LSTM layer 2", "decoder": "output (decoder)"}


def strengths(path: Path, samples: int | None) -> dict:
    """Per-sample gradient strength G and G_(i) per layer of one checkpoint, with its training loss."""
    ckpt, model, data = open_checkpoint(path)
    obj = Objective.from_bundle(model, data, "train", subset=samples, seed=0)
    r = gradient_norms(obj, batch_size=1, by="layer")
    return {"epoch": int(ckpt.epoch), "loss": obj.loss(), "G": r.strength, "norm": r.norm, "samples": r.num_batches,
            "layers": {k: v["strength"] for k, v in r.groups.items()},
            "numel": {k: v["numel"] for k, v in r.groups.items()}}


def phases(epochs: list[int]) -> list[int]:
    """Early, middle and late: epoch 1, the middle epoch and the last (plus 0, the initialization)."""
    last = epochs[-1]
    return sorted({0, min(1, last), last // 2, last} & set(epochs))


def plot(results: dict[str, list[dict]], path: Path, quick: bool, samples: int | None) -> Path:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 7.4))
    axes = fig.subplots(len(results), 2, squeeze=False)
    for row, (task, rows) in enumerate(results.items()):
        ax = axes[row, 0]
        epochs = [r["epoch"] for r in rows]
        layers = list(rows[0]["layers"])
        cmap = [f"C{i}" for i in range(len(layers))]
        ax.plot(epochs, [r["G"] for r in rows], "k-o", ms=4, lw=2, label="whole model: G")
        for c, layer in zip(cmap, layers):
            ax.plot(epochs, [r["layers"][layer] for r in rows], "-", color=c, lw=1, marker=".",
                    label=LAYER_NAMES.get(layer, layer))
        ax.set_yscale("log")
        ax.set_xlabel("epoch (0 = initialization)")
        ax.set_ylabel("gradient strength  E‖∇l(w; z)‖ / √n")
        ax.set_title(f"Fig. 4: learning phases — {TASKS[task]}, {rows[0]['samples']} samples", fontsize=9)
        ax.grid(alpha=0.3, which="both", lw=0.4)
        twin = ax.twinx()
        twin.plot(epochs, [r["loss"] for r in rows], color="grey", ls="--", lw=1)
        twin.set_ylabel("training loss (dashed)", color="grey", fontsize=8)
        twin.tick_params(axis="y", colors="grey", labelsize=7)
        ax.legend(fontsize=7, loc="best", framealpha=0.7)

        ax = axes[row, 1]
        chosen = [r for r in rows if r["epoch"] in phases(epochs)]
        width = 0.8 / len(chosen)
        x = np.arange(len(layers))
        for j, r in enumerate(chosen):
            shade = 0.25 + 0.65 * j / max(1, len(chosen) - 1)
            ax.bar(x + (j - (len(chosen) - 1) / 2) * width, [r["layers"][k] for k in layers], width,
                   color=(0.1, 0.3 + 0.4 * shade, 0.9 - 0.6 * shade), label=f"epoch {r['epoch']}")
        ax.set_xticks(x, [LAYER_NAMES.get(k, k) for k in layers], fontsize=7, rotation=15)
        ax.set_yscale("log")
        ax.set_ylabel("gradient strength G_(i)")
        ax.set_title(f"Fig. 5: layers, input → output — {TASKS[task]}", fontsize=9)
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3, axis="y", which="both", lw=0.4)
    n = f"a seeded subset of at most {samples} training samples" if samples else "the training set"
    fig.suptitle("GA-SAM Figs. 4-5 reproduced: per-sample gradient strength G_(i) = E_z‖∇_(i) l‖ / √n_(i) "
                 f"over {n}, at every epoch of the baseline runs" + ("  [--quick]" if quick else ""), fontsize=10)
    fig.tight_layout()
    return R.save_png(fig, path)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    R.add_common_args(p)
    p.add_argument("--samples", type=int, default=500,
                   help="seeded subset of the training set the expectation runs over (0: all) [default: 500]")
    args = p.parse_args(argv)
    R.setup(args)
    samples = args.samples or None
    results = {}
    for task in TASKS:
        run = R.checkpoint(task, "baseline", quick=args.quick, work=args.work)
        results[task] = [strengths(f, samples) for _, f in R.trajectory(run)]
    png = plot(results, args.out / "gasam_fig45_gradients.png", args.quick, samples)
    summary = {}
    for task, rows in results.items():
        first, peak = rows[0], max(rows, key=lambda r: r["G"])
        last = rows[-1]
        layers = list(last["layers"])
        summary[task] = {"G_init": first["G"], "G_peak": peak["G"], "epoch_peak": peak["epoch"], "G_final": last["G"],
                         "peak_over_final": peak["G"] / last["G"],
                         "final_layer_ratio_top_over_bottom": last["layers"][layers[-1]] / last["layers"][layers[0]],
                         "layer_order_final": sorted(layers, key=lambda k: -last["layers"][k])}
    out = {"quick": args.quick, "samples": samples, "summary": summary, "results": results,
           "settings": {t: R.describe(t, "baseline") for t in TASKS}}
    (args.out / "gasam_fig45_gradients.json").write_text(json.dumps(out, indent=1))
    for task, rows in results.items():
        print(f"\n{TASKS[task]}: G and G_(i) per epoch (loss)")
        layers = list(rows[0]["layers"])
        print("  epoch   loss      G         " + "  ".join(f"{LAYER_NAMES.get(k, k)[:12]:>12s}" for k in layers))
        for r in rows:
            print(f"  {r['epoch']:5d}  {r['loss']:.4f}  {r['G']:.3e}  "
                  + "  ".join(f"{r['layers'][k]:12.3e}" for k in layers))
        s = summary[task]
        print(f"  G peaks at epoch {s['epoch_peak']} ({s['G_peak']:.3g}), {s['peak_over_final']:.2f}x its final value; "
              f"at the end the output layer is {s['final_layer_ratio_top_over_bottom']:.3g}x the embedding; "
              f"order (strongest first): {', '.join(s['layer_order_final'])}")
    print(f"\nwrote {png} ({png.stat().st_size // 1024} KB) and {args.out / 'gasam_fig45_gradients.json'}")
    assert all(math.isfinite(r["G"]) for rows in results.values() for r in rows)
    return out


if __name__ == "__main__":
    main()
