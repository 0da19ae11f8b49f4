"""Curvature during training, drawn from the rows of ``landscape train --track`` (``STEM.curvature.jsonl``).

Panels over optimizer steps, one colour per run: ``lambda_max`` with the base optimizer's stability
threshold (dashed; ``2 / lr``, ``(2 + 2 beta) / lr`` with momentum, see :mod:`optimizers.tracker`) and,
where it differs, the plain ``2 / lr`` (dotted); the Hessian trace and the worst-case sharpness (when
tracked); the gradient norm; the loss on the tracked subset. :func:`training_figure` is the interactive
plotly version (also a section of the HTML report), :func:`plot_training` the static matplotlib one.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

Run = tuple[str, list[dict[str, Any]]]
PANELS = (("lambda_max", "top Hessian eigenvalue"), ("trace", "Hessian trace"),
          ("sharpness", "worst-case sharpness"), ("grad_norm", "gradient norm"), ("loss", "loss (tracked subset)"))


def rows_path(path: str | Path) -> Path:
    """The curvature rows of a run: ``run.pt`` -> ``run.curvature.jsonl`` (a ``.jsonl`` path as it is)."""
    path = Path(path)
    if path.name.endswith(".curvature.jsonl"):
        return path
    return path.with_name(f"{path.with_suffix('').name}.curvature.jsonl")


def load_runs(paths: Sequence[str | Path], labels: Sequence[str] | None = None) -> list[Run]:
    """``(label, rows)`` per run (``run.pt`` or its ``run.curvature.jsonl``); labels default to the stems."""
    from optimizers.tracker import read_rows

    if labels is not None and len(labels) != len(paths):
        raise ValueError(f"{len(labels)} labels for {len(paths)} runs")
    runs = []
    for i, p in enumerate(paths):
        src = rows_path(p)
        if not src.is_file():
            raise FileNotFoundError(f"{p}: no curvature rows at {src}; train with `landscape train --track`")
        rows = read_rows(src)
        if not rows:
            raise ValueError(f"{src}: holds no complete row")
        label = labels[i] if labels is not None else src.name[: -len(".curvature.jsonl")]
        runs.append((label, rows))
    return runs


def has_rows(path: str | Path) -> bool:
    """Whether the run of checkpoint ``path`` has curvature rows."""
    src = rows_path(path)
    try:
        return src.is_file() and any(line.strip() for line in src.read_text().splitlines())
    except OSError:
        return False


def _series(rows: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    if not pts:
        return np.zeros(0), np.zeros(0)
    a = np.asarray(pts, dtype=np.float64)
    return a[:, 0], a[:, 1]


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """``rows``, ``last_step``, ``lambda_max`` first/last/max, ``edge_ratio`` = ``lambda_max / threshold``
    (max and last) and ``at_edge`` = share of rows with the ratio >= 0.9."""
    lam = [r["lambda_max"] for r in rows if r.get("lambda_max") is not None]
    ratios = [r["lambda_max"] / r["threshold"] for r in rows
              if r.get("lambda_max") is not None and r.get("threshold")]
    return {"rows": len(rows), "last_step": rows[-1]["step"] if rows else None,
            "lambda_max_first": lam[0] if lam else None, "lambda_max_last": lam[-1] if lam else None,
            "lambda_max_max": max(lam) if lam else None, "edge_ratio_max": max(ratios) if ratios else None,
            "edge_ratio_last": ratios[-1] if ratios else None,
            "at_edge": sum(r >= 0.9 for r in ratios) / len(ratios) if ratios else None,
            "hvps": sum(r.get("hvps", 0) for r in rows), "seconds": sum(r.get("seconds", 0.0) for r in rows)}


def _log_scale(runs: Sequence[Run], key: str) -> bool:
    """Gradient norms and losses span decades: a log axis where every value is positive."""
    values = np.concatenate([_series(rows, key)[1] for _, rows in runs])
    return key in ("grad_norm", "loss") and len(values) > 0 and bool((values > 0).all())


def _panels(runs: Sequence[Run]) -> list[tuple[str, str]]:
    return [(k, t) for k, t in PANELS if any(r.get(k) is not None for _, rows in runs for r in rows)]


def _lambda_range(runs: Sequence[Run]) -> tuple[float, float, float | None] | None:
    """``(low, high, off)`` of the lambda panel: the eigenvalues, and the thresholds up to 1.5 x the largest
    of them (a decaying lr sends ``2 / lr`` to infinity); ``off``: the lowest threshold when every one is
    more than 3 x above the eigenvalues (then they are left out and named in the title)."""
    lam = np.concatenate([_series(rows, "lambda_max")[1] for _, rows in runs])
    if not len(lam):
        return None
    top = float(lam.max())
    edges = np.concatenate([_series(rows, k)[1] for _, rows in runs for k in ("threshold", "threshold_gd")])
    off = None
    if len(edges) and edges.min() < 3 * top:
        top = max(top, min(float(edges.max()), 1.5 * top))
    elif len(edges):
        off = float(edges.min())
    low = min(0.0, float(lam.min()))
    return low, 1.1 * top, off


def _lambda_title(rng: tuple[float, float, float | None] | None) -> str:
    title = PANELS[0][1]
    if rng is not None and rng[2] is not None:
        title += f" (stability thresholds >= {rng[2]:.4g}, off the scale)"
    return title


def training_figure(runs: Sequence[Run], title: str = "curvature during training") -> Any:
    """A plotly figure: one row of panels per quantity (:data:`PANELS` that the rows hold)."""
    import plotly.graph_objects as go
    from plotly.colors import qualitative
    from plotly.subplots import make_subplots

    panels = _panels(runs)
    rng = _lambda_range(runs)
    show_edges = rng is not None and rng[2] is None
    fig = make_subplots(rows=len(panels), cols=1, shared_xaxes=True, vertical_spacing=0.06,
                        subplot_titles=[_lambda_title(rng) if k == "lambda_max" else t for k, t in panels])
    colours = qualitative.Plotly
    for i, (label, rows) in enumerate(runs):
        colour = colours[i % len(colours)]
        for j, (key, _) in enumerate(panels, start=1):
            x, y = _series(rows, key)
            fig.add_trace(go.Scatter(x=x, y=y, mode="lines+markers", name=label, legendgroup=label,
                                     showlegend=j == 1, line={"color": colour}, marker={"size": 4}), row=j, col=1)
            if key != "lambda_max" or not show_edges:
                continue
            xt, yt = _series(rows, "threshold")
            fig.add_trace(go.Scatter(x=xt, y=yt, mode="lines", name=f"{label}: stability threshold",
                                     legendgroup=label, line={"color": colour, "dash": "dash"}), row=j, col=1)
            xg, yg = _series(rows, "threshold_gd")
            if len(yt) != len(yg) or not np.allclose(yt, yg, rtol=1e-9):
                fig.add_trace(go.Scatter(x=xg, y=yg, mode="lines", name=f"{label}: 2 / lr", legendgroup=label,
                                         line={"color": colour, "dash": "dot"}), row=j, col=1)
    if rng is not None and panels and panels[0][0] == "lambda_max":
        fig.update_yaxes(range=list(rng[:2]), row=1, col=1)
    for j, (key, _) in enumerate(panels, start=1):
        if _log_scale(runs, key):
            fig.update_yaxes(type="log", row=j, col=1)
    fig.update_xaxes(title_text="step", row=len(panels), col=1)
    fig.update_layout(title=title, height=260 * len(panels) + 80, template="plotly_white")
    return fig


def training_html(runs: Sequence[Run], path: str | Path, title: str = "curvature during training") -> Path:
    """A self-contained page with the figure and a summary table per run."""
    from landscape.report.page import Page

    page = Page(title, "rows of `landscape train --track`")
    page.add("training", "Curvature during training", *training_parts(page, runs))
    return page.write(path)


def training_parts(page: Any, runs: Sequence[Run]) -> list[str]:
    """The HTML of the summary table and the figure (for a :class:`~landscape.report.page.Page`)."""
    from landscape.report.page import table
    from landscape.study.compare import format_cell

    header = ["run", "rows", "last step", "lambda_max first", "last", "max", "max lambda/threshold",
              "rows at >= 0.9 threshold", "HVPs", "tracker s"]
    body = []
    for label, rows in runs:
        s = summary(rows)
        body.append((label, s["rows"], s["last_step"], *(format_cell(s[k]) for k in (
            "lambda_max_first", "lambda_max_last", "lambda_max_max", "edge_ratio_max")),
            "n/a" if s["at_edge"] is None else f"{100 * s['at_edge']:.0f}%", s["hvps"], f"{s['seconds']:.2f}"))
    note = ('<p class="note">Dashed: the base optimizer\'s stability threshold at each step\'s lr '
            "(2/lr for gradient descent, (2+2&beta;)/lr with heavy-ball momentum &beta;, less the L2 weight decay); "
            "dotted: 2/lr where that differs.</p>")
    return [note, table(header, body, numeric=[False] + [True] * 9), page.figure(training_figure(runs))]


def plot_training(runs: Sequence[Run], stem: str | Path, formats: Sequence[str] = ("png",)) -> list[Path]:
    """The static figure ``STEM.FORMAT`` (matplotlib), one panel per quantity."""
    from landscape.landscapes.plots import _figure, _save

    panels = _panels(runs)
    rng = _lambda_range(runs)
    show_edges = rng is not None and rng[2] is None
    fig = _figure(8.0, 2.6 * len(panels))
    axes = fig.subplots(len(panels), 1, sharex=True, squeeze=False)[:, 0]
    for i, (label, rows) in enumerate(runs):
        colour = f"C{i % 10}"
        for ax, (key, title) in zip(axes, panels):
            x, y = _series(rows, key)
            ax.plot(x, y, "-o", ms=2.5, color=colour, label=label)
            ax.set_title(_lambda_title(rng) if key == "lambda_max" else title, fontsize=10)
            if key == "lambda_max" and show_edges:
                xt, yt = _series(rows, "threshold")
                ax.plot(xt, yt, "--", color=colour, lw=1, label=f"{label}: stability threshold")
                xg, yg = _series(rows, "threshold_gd")
                if len(yt) != len(yg) or not np.allclose(yt, yg, rtol=1e-9):
                    ax.plot(xg, yg, ":", color=colour, lw=1, label=f"{label}: 2 / lr")
    if rng is not None and panels[0][0] == "lambda_max":
        axes[0].set_ylim(*rng[:2])
    axes[0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    axes[-1].set_xlabel("step")
    for ax, (key, _) in zip(axes, panels):
        ax.grid(alpha=0.3)
        if _log_scale(runs, key):
            ax.set_yscale("log")
    fig.tight_layout()
    return _save(fig, stem, formats)


def rows_json(runs: Sequence[Run]) -> str:
    """The runs' summaries as JSON (for ``--json``)."""
    return json.dumps({label: summary(rows) for label, rows in runs}, indent=2, sort_keys=True)


__all__ = ["PANELS", "has_rows", "load_runs", "plot_training", "rows_path", "summary", "training_figure",
           "training_html", "training_parts"]
