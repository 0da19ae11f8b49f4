"""ASAM Fig. 3 (asam.txt Sec. 5.1): trajectories of SAM and ASAM on L(w) = |w1 ReLU(w2) - 0.04|.

    python gallery/asam_fig3.py [--quick] [--out gallery]

The minimizers form the valley w1 w2 = 0.04 (w2 > 0), and every point of it is the same function up to the
rescaling (w1, w2) -> (a w1, w2 / a). Plain sharpness still differs along the valley (the slope of |.| across it
is sqrt(w1^2 + w2^2), smallest at (0.2, 0.2)), adaptive sharpness (T = |w|) does not. The paper: SAM
(rho = 0.05) "tries to converge to (0.2, 0.2)", ASAM "converges to the point in the red line near the initial
point", and from w0 = (0.3, 0.033) SAM "even fails to converge to the valley" while ASAM converges for any
rho < sqrt(2).

The trajectories come from the library's real optimizers (``optimizers.analytic.optimize_function``: ``sam``
and ``asam`` stepped through a closure on a two-weight module, ``w1`` and ``w2`` as 1x1 weight matrices, i.e.
the two-layer ReLU net x -> w1 ReLU(w2 x) at x = 1 with an L1 loss to the target 0.04). The paper gives rho = 0.05
for SAM only; ASAM runs with the library's (and the paper's CIFAR) defaults rho = 0.5, eta = 0.01; base: plain
SGD, lr = 0.01, 1000 steps (lr and steps are not in the paper), with plain SGD as a reference. End points are
measured with ``landscape.sharpness.worst_case_sharpness`` (plain, rho = 0.05, and adaptive, element-wise
T = |w|, rho = 0.5) and the Hessian of the library's ``FunctionObjective``. Writes ``asam_fig3.png``.
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

from landscape.analytic import FunctionObjective  # noqa: E402
from landscape.geometry import Geometry  # noqa: E402
from landscape.sharpness import worst_case_sharpness  # noqa: E402
from optimizers.analytic import optimize_function  # noqa: E402

TARGET = 0.04
STARTS = [(0.2, 0.05), (0.3, 0.033)]
SHAPES, NAMES = [(1, 1), (1, 1)], ["w1", "w2"]
LR = 0.01
METHODS = {  # label: (optimizer, hyper-parameters, colour, line style)
    "SGD": ("sgd", {}, "0.45", ":"),
    "SAM (rho=0.05)": ("sam", {"rho": 0.05}, "tab:blue", "-"),
    "ASAM (rho=0.5, eta=0.01)": ("asam", {"rho": 0.5, "eta": 0.01}, "tab:green", "-"),
}
DRIFT_EXTRA = {"ASAM (rho=0.5, eta=0)": ("asam", {"rho": 0.5, "eta": 0.0}, "tab:olive", "--")}


def loss(w: torch.Tensor) -> torch.Tensor:
    """``L(w) = |w1 ReLU(w2) - 0.04|`` (asam.txt Sec. 5.1)."""
    return (w[0] * torch.relu(w[1]) - TARGET).abs()


def run(label: str, start: tuple[float, float], steps: int, table: dict = METHODS):
    name, hp, *_ = table[label]
    return optimize_function(loss, start, name, steps=steps, lr=LR, shapes=SHAPES, names=NAMES, **hp)


def valley_point(w: np.ndarray) -> np.ndarray:
    """The minimizer with the same ``w2 / w1`` as ``w`` (``w`` rescaled onto ``w1 w2 = 0.04``)."""
    return w * np.sqrt(TARGET / (w[0] * w[1]))


def measure_point(w: np.ndarray) -> dict[str, float]:
    """At the valley point of ``w``'s ray: plain and adaptive worst-case sharpness and the Hessian's top eigenvalue
    (at ``w`` itself: the Hessian of |.| is undefined on the valley)."""
    obj = FunctionObjective(loss, torch.tensor(valley_point(w), dtype=torch.float64), shapes=SHAPES, names=NAMES)
    plain = worst_case_sharpness(obj, 0.05, steps=50, restarts=4, schedule="cosine")
    adaptive = worst_case_sharpness(obj, 0.5, geometry=Geometry(normalization="element"), steps=50, restarts=4,
                                    schedule="cosine")
    at_w = FunctionObjective(loss, torch.tensor(w, dtype=torch.float64), shapes=SHAPES, names=NAMES)
    hessian = at_w.hvp(torch.eye(2, dtype=torch.float64)).numpy()
    return {"loss": at_w.loss(), "sharpness": plain.sharpness, "adaptive_sharpness": adaptive.sharpness,
            "lambda_max": float(np.linalg.eigvalsh(0.5 * (hessian + hessian.T))[-1]),
            "balance": float(w[1] / w[0]), "valley_point": valley_point(w).tolist()}


def plot(trajs: dict, drift: dict, ends: dict, path: Path, steps: int, drift_steps: int) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(15.5, 6.6))
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [1, 1, 1.15]})
    w1 = np.linspace(0.08, 0.36, 281)
    w2 = np.linspace(0.0, 0.28, 281)
    grid = torch.tensor(np.stack(np.meshgrid(w1, w2), -1).reshape(-1, 2))
    Z = FunctionObjective(loss, grid[0]).evaluate_many(grid)["loss"].reshape(len(w2), len(w1))
    v = np.linspace(0.1, 0.4, 300)
    for ax, start in zip(axes[:2], STARTS):
        cs = ax.contour(w1, w2, Z, levels=[0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05], colors="0.75",
                        linewidths=0.7)
        ax.clabel(cs, cs.levels[::2], fontsize=6, fmt="%.3g")
        ax.plot(v, TARGET / v, color="red", lw=2.2, alpha=0.8, label="minimizers: w1 w2 = 0.04")
        for label, (_, _, colour, ls) in METHODS.items():
            t = trajs[start][label]
            m = ends[start][label]
            ax.plot(t.points[:, 0], t.points[:, 1], color=colour, ls=ls, lw=1.2 if ls == "-" else 1.8,
                    label=f"{label}: ends at w2/w1 = {m['balance']:.2f}")
            ax.plot(*t.end, "o", color=colour, ms=8, mec="black", mew=0.6, zorder=5)
        ax.plot(*start, "k*", ms=13, zorder=6, label="start w0")
        ax.plot([0.2], [0.2], "x", color="black", ms=10, mew=2, label="(0.2, 0.2): least plain sharpness on the valley")
        ax.set_xlim(w1[0], w1[-1])
        ax.set_ylim(w2[0], w2[-1])
        ax.set_aspect("equal")
        ax.set_xlabel("w1")
        ax.set_ylabel("w2")
        ax.set_title(f"w0 = {start}: {steps} steps, lr = {LR}", fontsize=10)
        ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    sam = trajs[STARTS[1]]["SAM (rho=0.05)"]
    if np.allclose(sam.end, sam.points[0]):
        axes[1].annotate("SAM never moves: w2 + e2 < 0, so\nReLU kills the perturbed gradient",
                         xy=STARTS[1], xytext=(0.11, 0.07), fontsize=8, color="tab:blue",
                         arrowprops=dict(arrowstyle="->", color="tab:blue"))
    ax = axes[2]
    for label, (_, _, colour, ls) in {**METHODS, **DRIFT_EXTRA}.items():
        t = drift[label]
        k = np.arange(1, len(t.points))
        ax.plot(k, t.points[1:, 1] / t.points[1:, 0], color=colour, ls=ls, lw=1.6, label=label)
    ax.axhline(1.0, color="black", lw=0.8, ls=":")
    ax.axvline(steps, color="0.6", lw=0.8)
    ax.text(steps * 1.05, 0.03, "end of the\nleft panels", fontsize=7, color="0.4")
    ax.set_xscale("log")
    ax.set_xlim(1, drift_steps)
    ax.set_ylim(0, 1.08)
    ax.set_xlabel("step")
    ax.set_ylabel("w2 / w1   (1: the point (0.2, 0.2))")
    ax.set_title(f"w0 = {STARTS[0]}: position along the valley, {drift_steps} steps", fontsize=10)
    ax.legend(fontsize=7.5, loc="upper center", bbox_to_anchor=(0.5, -0.13), frameon=False)
    fig.suptitle("ASAM Fig. 3 reproduced with the library's sam / asam on L(w) = |w1 ReLU(w2) - 0.04|:\n"
                 "SAM slides along the valley of minima to (0.2, 0.2), and from (0.3, 0.033) never moves; "
                 "ASAM converges to the valley near where it lands (as SGD does)", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.93))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=85, bbox_inches="tight")


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer steps (for tests)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = p.parse_args(argv)
    steps, drift_steps = (200, 400) if args.quick else (1000, 5000)
    trajs = {s: {label: run(label, s, steps) for label in METHODS} for s in STARTS}
    drift = {label: run(label, STARTS[0], drift_steps, {**METHODS, **DRIFT_EXTRA})
             for label in {**METHODS, **DRIFT_EXTRA}}
    ends: dict[tuple, dict[str, dict[str, float]]] = {}
    for start in STARTS:
        ends[start] = {}
        for label, t in trajs[start].items():
            m = ends[start][label] = {**measure_point(t.end), "moved": float(np.linalg.norm(t.end - t.points[0]))}
            print(f"w0 = {start}  {label:26s} end ({t.end[0]:.4f}, {t.end[1]:.4f})  L = {m['loss']:.5f}  "
                  f"w2/w1 = {m['balance']:.3f}  at its valley point: sharpness(0.05) = {m['sharpness']:.5f}  "
                  f"adaptive(0.5) = {m['adaptive_sharpness']:.5f}  lambda_max = {m['lambda_max']:.3f}")
    for label, t in drift.items():
        print(f"w0 = {STARTS[0]}  {label:26s} after {drift_steps} steps: ({t.end[0]:.4f}, {t.end[1]:.4f}), "
              f"w2/w1 = {t.end[1] / t.end[0]:.3f}")
    path = args.out / "asam_fig3.png"
    plot(trajs, drift, ends, path, steps, drift_steps)
    print(f"wrote {path}")
    return {"trajectories": trajs, "ends": ends, "drift": drift, "png": path}


if __name__ == "__main__":
    main()
