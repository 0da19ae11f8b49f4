"""GNR Fig. 1a (gnr.txt Sec. 2.3): SAM's sharpness cannot tell a flat minimum from a sharp one, GNR's can.

    python gallery/gnr_fig1a.py [--quick] [--out gallery]

L1(t) = cos(pi t + pi) and L2(t) = cos(3 pi t + pi) on [-1, 1], both minimal at t = 0, radius rho = 1:

    R_SAM = max_{|t'| <= rho} L(t') - L(0)          = 2 for both        (gnr.txt eq. 10)
    R_GNR = rho max_{|t'| <= rho} |L'(t')|          = pi and 3 pi       (gnr.txt eq. 1)

Both values are measured, not typed in: ``landscape.sharpness.worst_case_sharpness`` (projected ascent with
random restarts) and ``landscape.sharpness.gradient_norm_regularizer`` (projected ascent on ``|L'|`` along
``H g / |g|``) on a :class:`landscape.analytic.FunctionObjective` of each function. Writes
``gnr_fig1a.png`` and prints the numbers.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from landscape.analytic import FunctionObjective  # noqa: E402
from landscape.sharpness import gradient_norm_regularizer, worst_case_sharpness  # noqa: E402

RHO = 1.0
FUNCTIONS = {"L1(t) = cos(pi t + pi)": 1, "L2(t) = cos(3 pi t + pi)": 3}


def cosine(k: int):
    def f(w: torch.Tensor) -> torch.Tensor:
        return torch.cos(k * math.pi * w[0] + math.pi)
    return f


def measure(k: int, steps: int, restarts: int) -> dict[str, Any]:
    """R_SAM and R_GNR of ``cos(k pi t + pi)`` at ``t = 0`` and where each maximum was found."""
    obj = FunctionObjective(cosine(k), torch.zeros(1, dtype=torch.float64))
    sam = worst_case_sharpness(obj, RHO, steps=steps, restarts=restarts, seed=0)
    gnr = gradient_norm_regularizer(obj, RHO, steps=steps, restarts=restarts, seed=0)
    return {"k": k, "R_sam": sam.sharpness, "sam_argmax": float(sam.perturbation[0]), "R_gnr": gnr.R,
            "max_grad_norm": gnr.max_grad_norm, "gnr_argmax": float(gnr.perturbation[0]),
            "sam_work": sam.work, "gnr_work": gnr.work, "loss0": sam.loss}


def plot(results: list[dict[str, Any]], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 4.0))
    axes = fig.subplots(1, 2, sharey=True)
    t = np.linspace(-1.0, 1.0, 801)
    for ax, (label, r) in zip(axes, zip(FUNCTIONS, results)):
        k = r["k"]
        L = np.cos(k * np.pi * t + np.pi)
        ax.plot(t, L, color="tab:blue", lw=2, label=label)
        ax.axvspan(-RHO, RHO, color="tab:blue", alpha=0.06, lw=0)
        ax.annotate("", xy=(-RHO, -1.32), xytext=(RHO, -1.32), arrowprops=dict(arrowstyle="<->", color="grey"))
        ax.text(0, -1.28, f"ball B(0, rho={RHO:g})", ha="center", va="bottom", fontsize=8, color="grey")
        ax.plot([0], [r["loss0"]], "ko", ms=6)
        ax.annotate("minimum t = 0", (0, r["loss0"]), xytext=(0.05, r["loss0"] + 0.12), fontsize=8)
        # SAM: the highest point of the ball, and the rise to it
        ts = r["sam_argmax"]
        ls = np.cos(k * np.pi * ts + np.pi)
        ax.plot([ts], [ls], "s", color="tab:red", ms=7)
        ax.annotate("", xy=(ts, ls), xytext=(ts, r["loss0"]), arrowprops=dict(arrowstyle="<->", color="tab:red"))
        ax.axhline(ls, color="tab:red", lw=0.6, ls=":")
        # GNR: the steepest point of the ball, and the tangent there
        tg = r["gnr_argmax"]
        lg = np.cos(k * np.pi * tg + np.pi)
        slope = -k * np.pi * np.sin(k * np.pi * tg + np.pi)
        dt = 0.22 / k
        ax.plot([tg - dt, tg + dt], [lg - slope * dt, lg + slope * dt], color="tab:green", lw=2.5)
        ax.plot([tg], [lg], "o", color="tab:green", ms=6)
        ax.text(0.5, 0.97,
                f"R_SAM = max L - L(0) = {r['R_sam']:.4f}\n"
                f"R_GNR = rho max|L'| = {r['R_gnr']:.4f} = {r['R_gnr'] / math.pi:.4f} pi",
                transform=ax.transAxes, va="top", ha="center", fontsize=9,
                bbox=dict(boxstyle="round", facecolor="white", edgecolor="0.7"))
        ax.set_title(("flat minimum" if k == 1 else "sharp minimum") + f": {label}", fontsize=10)
        ax.set_xlabel("t")
        ax.set_xlim(-1.05, 1.05)
        ax.set_ylim(-1.4, 1.85)
    axes[0].set_ylabel("loss L(t)")
    handles = [axes[0].plot([], [], "s", color="tab:red")[0], axes[0].plot([], [], color="tab:green", lw=2.5)[0]]
    fig.legend(handles, ["SAM's maximizer of L in the ball (R_SAM: the red rise)",
                         "GNR's maximizer of |L'| in the ball (tangent)"],
               loc="lower center", ncol=2, fontsize=8, frameon=False)
    fig.suptitle("GNR Fig. 1a reproduced: R_SAM = 2 for both minima, R_GNR = pi vs 3 pi "
                 "(measured by landscape.sharpness)", fontsize=10)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="fewer ascent steps (for tests)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = p.parse_args(argv)
    steps, restarts = (20, 2) if args.quick else (50, 4)
    results = [measure(k, steps, restarts) for k in FUNCTIONS.values()]
    for label, r in zip(FUNCTIONS, results):
        print(f"{label}: R_SAM = {r['R_sam']:.6f} (max at t = {r['sam_argmax']:+.3f}), R_GNR = {r['R_gnr']:.6f} "
              f"= {r['R_gnr'] / math.pi:.6f} pi   [{r['sam_work']['grads']} + {r['gnr_work']['grads']} gradients, "
              f"{r['gnr_work']['hvps']} HVPs]")
    path = args.out / "gnr_fig1a.png"
    plot(results, path)
    print(f"wrote {path}")
    return {"results": results, "png": path}


if __name__ == "__main__":
    main()
