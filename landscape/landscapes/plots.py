"""Static loss-landscape plots (matplotlib, PNG/PDF; no pyplot, no display needed).

Every function takes an output ``stem`` and the ``formats`` to write (``("png",)``,
``("png", "pdf")``) and returns the paths written (each atomically). 2-D values are
``surface[metric][i, j]`` at ``(axis_0[i], axis_1[j])``; :func:`plot_grid` turns them into
matplotlib's ``Z[j, i]`` layout, so non-square grids come out the right way round.
"""
from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from landscape.landscapes.surface import Surface

PLOTS_2D = ("contour", "filled", "surface")
SPLIT_COLOURS = {"train": "tab:blue", "test": "tab:orange"}


def plot_grid(surface: Surface, metric: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(X, Y, Z)`` for matplotlib/plotly: ``X``/``Y`` of shape ``(ny, nx)``, ``Z[j, i]`` the value at
    ``(axis_0[i], axis_1[j])``."""
    if surface.ndim != 2:
        raise ValueError("a 2-D plot needs a 2-D surface")
    X, Y = np.meshgrid(surface.axes[0], surface.axes[1])
    return X, Y, np.asarray(surface[metric], dtype=np.float64).T


def _save(fig: Any, stem: str | Path, formats: Sequence[str], suffix: str = "") -> list[Path]:
    from landscape.io import atomic_write

    paths = []
    for fmt in formats:
        if fmt not in ("png", "pdf", "svg"):
            raise ValueError(f"static plot format must be png, pdf or svg, got {fmt!r}")
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, dpi=110, bbox_inches="tight")
        path = Path(f"{stem}{suffix}.{fmt}")
        atomic_write(path, lambda f: f.write(buf.getvalue()))
        paths.append(path)
    return paths


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height))


def axis_labels(surface: Surface) -> list[str]:
    """Axis titles from the directions' metadata."""
    d = surface.meta.get("directions", {})
    kind = d.get("kind", "")
    if kind == "interpolation":
        return ["t   (w = (1 - t) w_start + t w_end)"]
    if kind == "plane":
        return ["plane coordinate 1 (to point 2)", "plane coordinate 2"]
    if kind == "pca":
        ev = d.get("explained_variance_ratio", [])
        return [f"PC{i + 1}" + (f" ({100 * ev[i]:.1f}% var.)" if i < len(ev) else "") for i in range(surface.ndim)]
    if kind == "eigen":
        ev = d.get("eigenvalues", [])
        return [f"Hessian eigvec {i + 1}" + (f" (λ={ev[i]:.3g})" if i < len(ev) else "") for i in range(surface.ndim)]
    norm = d.get("norm", "")
    return [f"direction {i + 1}" + (f" ({norm}-normalized)" if norm and norm != "none" else "")
            for i in range(surface.ndim)]


def _levels(z: np.ndarray, levels: int, log: bool, vmin: float | None, vmax: float | None) -> tuple[np.ndarray, Any]:
    from matplotlib.colors import LogNorm, Normalize

    finite = z[np.isfinite(z)]
    lo = vmin if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    hi = vmax if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if log:
        lo = max(lo, float(finite[finite > 0].min()) if np.any(finite > 0) else 1e-12, 1e-12)
        hi = max(hi, lo * 1.0001)
        return np.geomspace(lo, hi, levels), LogNorm(lo, hi)
    hi = hi if hi > lo else lo + 1e-12
    return np.linspace(lo, hi, levels), Normalize(lo, hi)


def _colorbar(fig: Any, mappable: Any, ax: Any, label: str, log: bool, **kwargs: Any) -> Any:
    """A colour bar with a few round ticks (1-2-5 steps on a log scale) instead of one per level."""
    from matplotlib.ticker import FormatStrFormatter, LogLocator, MaxNLocator, NullLocator

    cb = fig.colorbar(mappable, ax=ax, label=label, **kwargs)
    lo, hi = mappable.norm.vmin, mappable.norm.vmax
    if log:
        ticks = [t for t in LogLocator(subs=(1.0, 2.0, 5.0)).tick_values(lo, hi) if lo <= t <= hi]
    else:
        ticks = [t for t in MaxNLocator(7).tick_values(lo, hi) if lo <= t <= hi]
    cb.set_ticks(ticks)
    cb.ax.yaxis.set_major_formatter(FormatStrFormatter("%.3g"))
    cb.ax.yaxis.set_minor_locator(NullLocator())
    return cb


def _markers(ax: Any, surface: Surface, three_d: bool = False) -> None:
    d = surface.meta.get("directions", {})
    path = d.get("path")
    if path and not three_d:
        p = np.asarray(path)
        ax.plot(p[:, 0], p[:, 1], "-o", color="crimson", ms=3, lw=1.2, label="trajectory")
    for m in d.get("markers", []) if not three_d else []:
        x, y = m["coords"][:2]
        ax.plot([x], [y], "o", color="black", ms=5)
        ax.annotate(m.get("label", ""), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if not three_d:
        ax.plot([0], [0], "*", color="white", mec="black", ms=10)


def plot_curves(surface: Surface, stem: str | Path, formats: Sequence[str] = ("png",), *, log: bool = False,
                title: str | None = None) -> list[Path]:
    """A 1-D surface: loss of every split (left axis, solid) and accuracy (right axis, dashed)."""
    if surface.ndim != 1:
        raise ValueError("a curve plot needs a 1-D surface")
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    t = surface.axes[0]
    splits = sorted({k.rsplit("_", 1)[0] for k in surface.metrics}, key=lambda s: (s != "train", s))
    for split in splits:
        ax.plot(t, surface[f"{split}_loss"], "-", color=SPLIT_COLOURS.get(split), label=f"{split} loss")
    ax.set_yscale("log" if log else "linear")
    ax.set_xlabel(axis_labels(surface)[0])
    ax.set_ylabel("loss")
    acc = [s for s in splits if np.isfinite(surface[f"{s}_acc"]).any()]
    handles, labels = ax.get_legend_handles_labels()
    if acc:
        ax2 = ax.twinx()
        for split in acc:
            ax2.plot(t, surface[f"{split}_acc"], "--", color=SPLIT_COLOURS.get(split), label=f"{split} acc")
        ax2.set_ylabel("accuracy")
        ax2.set_ylim(-0.02, 1.02)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    for m in surface.meta.get("directions", {}).get("markers", []):
        ax.axvline(m["coords"][0], color="grey", lw=0.8, ls=":")
    ax.legend(handles, labels, fontsize=8, loc="best")
    ax.set_title(title or _title(surface), fontsize=10)
    return _save(fig, stem, formats)


def plot_2d(surface: Surface, stem: str | Path, formats: Sequence[str] = ("png",), *,
            kinds: Sequence[str] = PLOTS_2D, metric: str = "train_loss", log: bool = False, levels: int = 30,
            vmin: float | None = None, vmax: float | None = None, title: str | None = None) -> list[Path]:
    """Contour lines, filled contours and/or a 3-D surface of ``metric``; writes ``{stem}.{kind}.{fmt}``."""
    unknown = set(kinds) - set(PLOTS_2D)
    if unknown:
        raise ValueError(f"unknown plot kind(s) {sorted(unknown)}; choose from {PLOTS_2D}")
    X, Y, Z = plot_grid(surface, metric)
    lv, norm = _levels(Z, levels, log, vmin, vmax)
    Zc = np.clip(Z, lv[0], lv[-1]) if vmax is not None or vmin is not None else Z
    xl, yl = axis_labels(surface)
    title = title or _title(surface, metric)
    paths = []
    for kind in kinds:
        fig = _figure(6.0, 5.0)
        if kind == "surface":
            ax = fig.add_subplot(projection="3d")
            Zs = np.log10(np.maximum(Zc, 1e-12)) if log else Zc
            ax.plot_surface(X, Y, Zs, cmap="viridis", linewidth=0, antialiased=True)
            ax.set_zlabel(f"log10 {metric}" if log else metric)
        else:
            ax = fig.add_subplot()
            if kind == "filled":
                cs = ax.contourf(X, Y, Zc, levels=lv, cmap="viridis", norm=norm, extend="both")
                _colorbar(fig, cs, ax, metric, log)
            else:
                cs = ax.contour(X, Y, Zc, levels=lv, cmap="viridis", norm=norm, linewidths=0.9)
                ax.clabel(cs, cs.levels[:: max(1, len(cs.levels) // 8)], inline=True, fontsize=7, fmt="%.3g")
            ax.set_aspect("auto")
        _markers(ax, surface, three_d=kind == "surface")
        ax.set_xlabel(xl, fontsize=8)
        ax.set_ylabel(yl, fontsize=8)
        ax.set_title(title, fontsize=10)
        paths += _save(fig, stem, formats, f".{kind}")
    return paths


def plot_side_by_side(surfaces: Sequence[Surface], labels: Sequence[str], stem: str | Path,
                      formats: Sequence[str] = ("png",), *, metric: str = "train_loss", log: bool = False,
                      levels: int = 30, vmin: float | None = None, vmax: float | None = None,
                      title: str | None = None) -> list[Path]:
    """Filled contours (top row) and 3-D surfaces (bottom row) of several surfaces with shared axes,
    one colour scale and one z-range, for comparing checkpoints (e.g. SGD vs SAM); ``title`` over them all
    (default: the metric)."""
    if any(s.ndim != 2 for s in surfaces):
        raise ValueError("side-by-side plots need 2-D surfaces")
    allz = np.concatenate([np.asarray(s[metric], dtype=np.float64).ravel() for s in surfaces])
    lv, norm = _levels(allz, levels, log, vmin, vmax)
    n = len(surfaces)
    fig = _figure(4.0 * n + 1.0, 7.4)
    top = [fig.add_subplot(2, n, i + 1) for i in range(n)]
    for ax in top[1:]:
        ax.sharex(top[0])
        ax.sharey(top[0])
        ax.tick_params(labelleft=False)  # the shared y axis is labelled once, on the left
    cs = None
    for i, (s, label) in enumerate(zip(surfaces, labels)):
        X, Y, Z = plot_grid(s, metric)
        Zc = np.clip(Z, lv[0], lv[-1])
        cs = top[i].contourf(X, Y, Zc, levels=lv, cmap="viridis", norm=norm, extend="both")
        _markers(top[i], s)
        top[i].set_title(label, fontsize=10)
        top[i].set_xlabel(axis_labels(s)[0], fontsize=8)
        if i == 0:
            top[i].set_ylabel(axis_labels(s)[1], fontsize=8)
        ax3 = fig.add_subplot(2, n, n + i + 1, projection="3d")
        Zs = np.log10(np.maximum(Zc, 1e-12)) if log else Zc
        ax3.plot_surface(X, Y, Zs, cmap="viridis", linewidth=0,
                         vmin=np.log10(lv[0]) if log else lv[0], vmax=np.log10(lv[-1]) if log else lv[-1])
        ax3.set_zlim(np.log10(lv[0]) if log else lv[0], np.log10(lv[-1]) if log else lv[-1])
        ax3.set_zlabel(f"log10 {metric}" if log else metric, fontsize=8)
    _colorbar(fig, cs, top, metric, log, shrink=0.9)
    fig.suptitle(title or f"{metric}: shared axes and colour scale", fontsize=11)
    return _save(fig, stem, formats)


def plot_interpolation(t: np.ndarray, curves: dict[str, dict[str, np.ndarray]], stem: str | Path,
                       formats: Sequence[str] = ("png",), *, barriers: dict[str, dict[str, float]] | None = None,
                       log: bool = False, title: str = "linear interpolation") -> list[Path]:
    """Loss along interpolations: ``curves[label][split]`` over ``t``; barrier heights in the legend."""
    fig = _figure(6.4, 4.2)
    ax = fig.add_subplot()
    styles = {"train": "-", "test": "--"}
    for i, (label, by_split) in enumerate(curves.items()):
        colour = f"C{i}"
        for split, loss in by_split.items():
            b = (barriers or {}).get(label, {}).get(split)
            extra = f", barrier {b['barrier']:.3g} (linear {b['barrier_linear']:.3g})" if b else ""
            ax.plot(t, loss, styles.get(split, ":"), color=colour, label=f"{label} {split}{extra}")
    for x in (0.0, 1.0):
        ax.axvline(x, color="grey", lw=0.8, ls=":")
    ax.set_yscale("log" if log else "linear")
    ax.set_xlabel("t   (w = (1 - t) w_a + t w_b)")
    ax.set_ylabel("loss")
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    return _save(fig, stem, formats)


def plot_shift(curves: dict[str, Any], stem: str | Path, formats: Sequence[str] = ("png",), *,
               title: str = "GA-SAM: test loss vs training loss shifted by delta") -> list[Path]:
    """GA-SAM Fig. 1: train loss, test loss and the shifted train loss along ``theta + t delta``."""
    fig = _figure(6.4, 4.2)
    draw_shift(fig.add_subplot(), curves, title=title)
    return _save(fig, stem, formats)


def draw_shift(ax: Any, curves: dict[str, Any], *, title: str = "", legend: bool = True) -> None:
    """The curves of :func:`plot_shift` on a matplotlib ``ax`` (to compose figures)."""
    t = curves["t"]
    ax.plot(t, curves["train"], "-", color=SPLIT_COLOURS["train"], label="train loss")
    ax.plot(t, curves["test"], "-", color=SPLIT_COLOURS["test"], label="test loss")
    ax.plot(t, curves["shifted"], "--", color="tab:green",
            label=f"train loss at w − δ, + C (C = {curves['constant']:.3g})")
    for x, name in ((0.0, "θ (train)"), (1.0, "θ* (test-fine-tuned)")):
        ax.axvline(x, color="grey", lw=0.8, ls=":")
        ax.annotate(name, (x, 0.0), xycoords=("data", "axes fraction"), xytext=(3, 4),
                    textcoords="offset points", fontsize=8, color="dimgrey")
    ax.set_xlabel("t   (w = θ + t δ,  δ = θ* − θ)")
    ax.set_ylabel("loss")
    if legend:
        ax.legend(fontsize=8, loc="upper center")
    if title:
        ax.set_title(title, fontsize=10)


def _title(surface: Surface, metric: str | None = None) -> str:
    ck = surface.meta.get("checkpoint", {})
    name = Path(ck["path"]).name if ck.get("path") else ""
    d = surface.meta.get("directions", {})
    kind = d.get("kind", "")
    seed = f", seed {d['seed']}" if "seed" in d and kind == "random" else ""
    parts = [p for p in (name, f"{kind} directions{seed}" if kind else "", metric or "") if p]
    return " — ".join(parts)


__all__ = ["PLOTS_2D", "axis_labels", "draw_shift", "plot_2d", "plot_curves", "plot_grid", "plot_interpolation",
           "plot_shift", "plot_side_by_side"]
