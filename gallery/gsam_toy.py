"""GSAM Figs. 1 and 3 (gsam.txt Secs. 3-4) on toy losses, with the library's measures and optimizers.

    python gallery/gsam_toy.py [--quick] [--out gallery]

**Fig. 1** (``gsam_fig1.png``): the perturbed loss f_p(w) = max_{|d| <= rho} f(w + d) and the surrogate gap
h = f_p - f on a 1-D loss with three minima w1, w2, w3 whose valleys get flatter from left to right: f is
``2 - sum_i D_i exp(-(w - c_i)^2 / (2 s_i^2))`` with widths s = 0.25, 0.5, 1, D_2 = D_3 = 1 (so f(w2) = f(w3)) and
D_1 chosen so that the Gaussians alone give f_p(w1) = f_p(w3). f_p is ``worst_case_sharpness``'s perturbed
loss (projected ascent with random restarts on a ``FunctionObjective``) at every grid point; GSAM's one-step
surrogate ``surrogate_gap`` (h ~ f(w + rho g/|g|) - f(w)) is drawn beside it, and at the minima the Hessian's
eigenvalue sigma_max is compared with 2 h / rho^2 (Lemma 3.3).

**Fig. 3** (``gsam_fig3.png``): SGD, SAM and GSAM trajectories on a 2-D loss with a few sharp local minima: a
valley along the "ridge" y = 0 descending to a flat minimum at (4, 0), ``0.02 (x - 4)^2 + 0.25 y^2``, minus
three Gaussian pits of depth 0.5 and width 0.25 beside it at (-2, 0.6), (0, -0.6), (2, 0.6) (sharp minima,
curvature ~8 against 0.5 at the flat one; the last two are deeper than the flat minimum). The runs are the
library's ``sgd``, ``sam`` and ``gsam`` (``optimizers.analytic.optimize_function``: the real optimizers stepped
through a closure on a two-parameter module) with one learning rate 0.1, no momentum, 1000 steps, from five
starts on the left edge; SAM and GSAM use the same radius rho = 0.25 (the pits' width; a constant lr makes
GSAM's radius rho_max), GSAM alpha = 0.3 (the top of the paper's search range for ViTs). End points are
classified by the Hessian (``FunctionObjective``): a negative eigenvalue is a saddle, sigma_max > 2 a sharp
minimum. The default run also sweeps rho and alpha and prints where each run ends.
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
from landscape.sharpness import surrogate_gap, worst_case_sharpness  # noqa: E402
from optimizers.analytic import optimize_function  # noqa: E402

# ---------------------------------------------------------------------------- Fig. 1: 1-D
RHO_1D = 0.25
CENTRES = (0.0, 2.5, 6.0)
WIDTHS = (0.25, 0.5, 1.0)
DEPTHS = (math.exp(-RHO_1D ** 2 / (2 * WIDTHS[2] ** 2)) / math.exp(-RHO_1D ** 2 / (2 * WIDTHS[0] ** 2)), 1.0, 1.0)


def f1d(w: torch.Tensor) -> torch.Tensor:
    """``2 - sum_i D_i exp(-(w - c_i)^2 / (2 s_i^2))``: three minima, flatter from left to right."""
    c, s, d = (torch.tensor(v, dtype=w.dtype) for v in (CENTRES, WIDTHS, DEPTHS))
    return 2.0 - (d * torch.exp(-(w[0] - c) ** 2 / (2 * s ** 2))).sum()


def hessian_eigenvalues(obj: FunctionObjective, w: torch.Tensor) -> np.ndarray:
    """All eigenvalues (ascending) of the Hessian at ``w``, from the objective's Hessian-vector products."""
    n = obj.num_params
    H = obj.hvp(torch.eye(n, dtype=torch.float64), w).numpy()
    return np.linalg.eigvalsh(0.5 * (H + H.T))


def fig1(points: int, steps: int, restarts: int) -> dict[str, Any]:
    grid = np.linspace(-1.0, 8.5, points)
    f, fp, one_step = [], [], []
    for w in grid:
        obj = FunctionObjective(f1d, torch.tensor([w], dtype=torch.float64))
        r = worst_case_sharpness(obj, RHO_1D, steps=steps, restarts=restarts, schedule="cosine")
        f.append(r.loss)
        fp.append(r.perturbed_loss)
        one_step.append(surrogate_gap(obj, RHO_1D).gap)
    minima = []
    for c in CENTRES:  # the minima themselves: Newton on f' from each centre
        x = torch.tensor([c], dtype=torch.float64)
        obj = FunctionObjective(f1d, x)
        for _ in range(30):
            x = x - obj.grad(x) / hessian_eigenvalues(obj, x)[-1]
        obj = FunctionObjective(f1d, x)
        r = worst_case_sharpness(obj, RHO_1D, steps=steps, restarts=max(restarts, 2), schedule="cosine")
        sigma = float(hessian_eigenvalues(obj, x)[-1])
        minima.append({"w": float(x[0]), "f": r.loss, "f_p": r.perturbed_loss, "h": r.sharpness,
                       "two_h_over_rho2": r.curvature_estimate, "sigma_max": sigma,
                       "one_step_h": surrogate_gap(obj, RHO_1D).gap})
    return {"grid": grid, "f": np.array(f), "f_p": np.array(fp), "h_one_step": np.array(one_step), "minima": minima}


def plot_fig1(r: dict[str, Any], path: Path) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10.0, 6.2))
    top, bottom = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [1.6, 1]})
    x = r["grid"]
    top.plot(x, r["f"], color="black", lw=2, label="f(w)")
    top.plot(x, r["f_p"], color="tab:blue", lw=1.8, ls="--",
             label=f"f_p(w) = max_|d|<={RHO_1D:g} f(w + d)  (worst_case_sharpness)")
    for i, m in enumerate(r["minima"], 1):
        top.plot([m["w"]], [m["f"]], "ko", ms=5)
        top.plot([m["w"]], [m["f_p"]], "o", color="tab:blue", ms=5)
        top.annotate(f"w{i}\nf = {m['f']:.3f}\nf_p = {m['f_p']:.3f}", (m["w"], m["f"]),
                     xytext=(m["w"] + 0.15, m["f"] - 0.05), fontsize=8, va="top")
    top.axhline(r["minima"][0]["f_p"], color="tab:blue", lw=0.6, ls=":")
    top.set_ylabel("loss")
    top.set_ylim(min(r["f"]) - 0.45, 2.15)
    top.legend(fontsize=8, loc="lower right")
    top.set_title("f_p(w1) = f_p(w3) < f_p(w2): SAM cannot prefer the flat w3 over the sharp w1", fontsize=10)
    bottom.plot(x, r["f_p"] - r["f"], color="tab:red", lw=1.8, label="h = f_p - f (surrogate gap)")
    bottom.plot(x, r["h_one_step"], color="tab:orange", lw=1.0, ls=":",
                label="GSAM's one-step h = f(w + rho g/|g|) - f(w)  (surrogate_gap)")
    top_h = max(r["f_p"] - r["f"])
    for i, (m, x_text) in enumerate(zip(r["minima"], (-1.0, 2.6, 4.3)), 1):
        bottom.plot([m["w"]], [m["h"]], "o", color="tab:red", ms=5)
        bottom.annotate(f"h(w{i}) = {m['h']:.3f}\n2h/rho^2 = {m['two_h_over_rho2']:.2f}\n"
                        f"sigma_max = {m['sigma_max']:.2f}",
                        (m["w"], m["h"]), xytext=(x_text, 1.05 * top_h), fontsize=8, va="bottom",
                        arrowprops=dict(arrowstyle="->", color="0.5", lw=0.7))
    bottom.set_ylim(-0.05, top_h * 2.3)
    bottom.set_xlabel("w")
    bottom.set_ylabel("surrogate gap")
    bottom.legend(fontsize=8, loc="upper right", framealpha=0.95)
    bottom.set_title("h falls from w1 to w3 as the minima get flatter, and 2h/rho^2 tracks sigma_max (Lemma 3.3)",
                     fontsize=10)
    fig.suptitle(f"GSAM Fig. 1 reproduced (rho = {RHO_1D:g}): f, the perturbed loss f_p and the surrogate gap h, "
                 "measured by landscape.sharpness", fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)


# ---------------------------------------------------------------------------- Fig. 3: 2-D
PITS = ((-2.0, 0.6), (0.0, -0.6), (2.0, 0.6))
PIT_DEPTH, PIT_WIDTH = 0.5, 0.25
FLAT = (4.0, 0.0)
STARTS = tuple((-4.0, y) for y in (-1.5, -0.75, 0.0, 0.75, 1.5))
LR, RHO, ALPHA = 0.1, 0.25, 0.3
METHODS = {"SGD": ("sgd", {}), f"SAM (rho={RHO:g})": ("sam", {"rho": RHO}),
           f"GSAM (rho={RHO:g}, alpha={ALPHA:g})": ("gsam", {"rho_max": RHO, "rho_min": RHO, "alpha": ALPHA})}
COLOURS = {"SGD": "tab:orange", "SAM": "tab:green", "GSAM": "tab:red"}


def f2d(w: torch.Tensor) -> torch.Tensor:
    """A valley along y = 0 down to a flat minimum at (4, 0), minus three sharp Gaussian pits beside it."""
    x, y = w[0], w[1]
    pits = torch.tensor(PITS, dtype=w.dtype)
    valley = 0.02 * (x - FLAT[0]) ** 2 + 0.25 * (y - FLAT[1]) ** 2
    return valley - PIT_DEPTH * torch.exp(-((x - pits[:, 0]) ** 2 + (y - pits[:, 1]) ** 2) / (2 * PIT_WIDTH ** 2)).sum()


def classify(w: np.ndarray, rho: float) -> dict[str, Any]:
    """Where a run ended: loss, gradient norm, Hessian eigenvalues, GSAM's surrogate gap and a label."""
    obj = FunctionObjective(f2d, torch.tensor(w, dtype=torch.float64))
    eig = hessian_eigenvalues(obj, obj.w0)
    sigma = float(eig[np.argmax(np.abs(eig))])  # the dominant eigenvalue (largest |.|), as gsam.txt defines it
    near_flat = np.hypot(*(w - np.array(FLAT))) < 0.5
    label = "saddle" if eig[0] < -1e-3 else ("flat minimum" if near_flat else
                                              "sharp minimum" if eig[-1] > 2 else "other")
    return {"w": w.tolist(), "loss": obj.loss(), "grad_norm": float(obj.grad().norm()), "eigenvalues": eig.tolist(),
            "sigma_max": sigma, "surrogate_gap": surrogate_gap(obj, rho).gap, "kind": label}


def fig3_runs(steps: int, methods: dict = METHODS, starts=STARTS) -> dict[str, list]:
    out = {}
    for label, (name, hp) in methods.items():
        rho = hp.get("rho", hp.get("rho_max", RHO))
        runs = []
        for s in starts:
            t = optimize_function(f2d, s, name, steps=steps, lr=LR, **hp)
            runs.append({"trajectory": t, "end": classify(t.end, rho)})
        out[label] = runs
    return out


MARKERS = {"sharp minimum": ("X", "black"), "flat minimum": ("o", "white"), "saddle": ("s", "yellow"),
           "other": ("D", "grey")}


def plot_fig3(runs: dict[str, list], path: Path, steps: int) -> None:
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D

    fig = Figure(figsize=(11.0, 10.0), layout="constrained")
    axes = fig.subplots(3, 1, sharex=True)
    xs, ys = np.linspace(-4.4, 4.6, 361), np.linspace(-1.7, 1.7, 137)
    grid = torch.tensor(np.stack(np.meshgrid(xs, ys), -1).reshape(-1, 2))
    Z = FunctionObjective(f2d, grid[0]).evaluate_many(grid)["loss"].reshape(len(ys), len(xs))
    levels = np.linspace(Z.min(), 0.9, 28)
    for ax, (label, rs) in zip(axes, runs.items()):
        colour = COLOURS[label.split()[0]]
        cs = ax.contourf(xs, ys, Z, levels=levels, cmap="Blues_r", extend="max")
        ax.contour(xs, ys, Z, levels=levels[::3], colors="white", linewidths=0.3)
        ax.axhline(0.0, color="0.5", lw=0.8, ls="--")
        for r in rs:
            t = r["trajectory"]
            ax.plot(t.points[:, 0], t.points[:, 1], color=colour, lw=1.4)
            ax.plot(*t.points[0], "*", color=colour, ms=11, mec="black", mew=0.5)
            m, fc = MARKERS[r["end"]["kind"]]
            ax.plot(*t.end, m, color=fc, mec="black", ms=10, mew=1.0, zorder=5)
        counts = {k: sum(r["end"]["kind"] == k for r in rs) for k in MARKERS}
        ax.set_title(f"{label}: ends at " + ", ".join(f"{k} x{n}" for k, n in counts.items() if n) +
                     f"  (median: sigma_max {np.median([r['end']['sigma_max'] for r in rs]):+.2f}, "
                     f"loss {np.median([r['end']['loss'] for r in rs]):.3f}, "
                     f"h {np.median([r['end']['surrogate_gap'] for r in rs]):+.3f})", fontsize=10)
        ax.set_ylabel("y")
    axes[-1].set_xlabel("x")
    fig.colorbar(cs, ax=list(axes), shrink=0.6, pad=0.01, label="loss f(x, y)", format="%.2f")
    handles = [Line2D([], [], ls="--", color="0.5", label="ridge: valley floor y = 0")]
    handles += [Line2D([], [], marker=m, ls="", color=fc, mec="black", ms=9, label=f"end: {k}")
                for k, (m, fc) in MARKERS.items()]
    handles += [Line2D([], [], marker="*", ls="", color="0.6", mec="black", ms=11, label="start")]
    fig.legend(handles=handles, fontsize=8.5, loc="outside lower center", ncol=6, frameon=False)
    fig.suptitle(f"GSAM Fig. 3 on a toy loss with the library's sgd / sam / gsam "
                 f"(lr = {LR}, {steps} steps, 5 starts):\n"
                 "sharp pits at (-2, 0.6), (0, -0.6), (2, 0.6) beside a valley to the flat minimum at (4, 0). "
                 "GSAM avoids the first pit but stops at the saddle on its rim", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)


def sweep(steps: int) -> dict[str, list]:
    """Where SAM and GSAM end for other radii and ascent coefficients (same starts)."""
    methods = {}
    for rho in (0.1, 0.25, 0.4):
        methods[f"SAM rho={rho:g}"] = ("sam", {"rho": rho})
        for alpha in (0.1, 0.3, 1.0):
            methods[f"GSAM rho={rho:g} alpha={alpha:g}"] = ("gsam", {"rho_max": rho, "rho_min": rho, "alpha": alpha})
    return fig3_runs(steps, methods)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a coarser 1-D grid, fewer steps, no sweep (for tests)")
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent)
    args = p.parse_args(argv)
    points, asc_steps, restarts, steps = (60, 10, 1, 400) if args.quick else (240, 20, 2, 1000)

    r1 = fig1(points, asc_steps, restarts)
    for i, m in enumerate(r1["minima"], 1):
        print(f"w{i} = {m['w']:.3f}: f = {m['f']:.4f}  f_p = {m['f_p']:.4f}  h = {m['h']:.4f}  "
              f"2h/rho^2 = {m['two_h_over_rho2']:.3f}  sigma_max = {m['sigma_max']:.3f}  "
              f"one-step h = {m['one_step_h']:.4f}")
    p1 = args.out / "gsam_fig1.png"
    plot_fig1(r1, p1)
    print(f"wrote {p1}")

    runs = fig3_runs(steps)
    for label, rs in runs.items():
        for s, r in zip(STARTS, rs):
            e = r["end"]
            print(f"{label:26s} from {s}: {e['kind']:13s} at ({e['w'][0]:+.3f}, {e['w'][1]:+.3f})  "
                  f"loss {e['loss']:.4f}  sigma_max {e['sigma_max']:+.3f}  "
                  f"eigenvalues ({e['eigenvalues'][0]:+.3f}, {e['eigenvalues'][1]:+.3f})  "
                  f"h {e['surrogate_gap']:+.4f}")
    p3 = args.out / "gsam_fig3.png"
    plot_fig3(runs, p3, steps)
    print(f"wrote {p3}")
    swept = None
    if not args.quick:
        swept = sweep(steps)
        print("sweep (ends from the 5 starts):")
        for label, rs in swept.items():
            kinds = [r["end"]["kind"] for r in rs]
            print(f"  {label:26s} " + ", ".join(f"{k} {kinds.count(k)}" for k in MARKERS if kinds.count(k)) +
                  f"; median sigma_max {np.median([r['end']['sigma_max'] for r in rs]):+.2f}")
    return {"fig1": r1, "fig3": runs, "sweep": swept, "png": [p1, p3]}


if __name__ == "__main__":
    main()
