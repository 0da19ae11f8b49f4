"""Plotly figures of analysis sections (``landscape analyze`` JSON sections), one or several checkpoints
on shared axes, a colour per checkpoint (:data:`landscape.landscapes.interactive.COLOURS`)."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from landscape.landscapes.interactive import colour

DENSITY_FLOOR = 1e-6
"""The log-scale density plot starts this far below the highest peak."""


def density_figure(sections: Sequence[dict[str, Any]], labels: Sequence[str],
                   eigenvalues: Sequence[Sequence[float] | None] = ()) -> Any:
    """SLQ spectral densities ``phi_sigma(t)`` (``spectral_density`` sections) on one log-scale axis;
    ``eigenvalues[i]`` (e.g. the Lanczos top-k of the same checkpoint) are marked along the bottom."""
    import plotly.graph_objects as go

    fig = go.Figure()
    top = max(float(np.max(s["density"])) for s in sections)
    floor = DENSITY_FLOOR * top
    for i, (s, label) in enumerate(zip(sections, labels)):
        y = np.maximum(np.asarray(s["density"], dtype=np.float64), floor)
        fig.add_trace(go.Scatter(
            x=s["grid"], y=y, mode="lines", name=f"{label} (sigma {s['sigma']:.2g}, trace ~ {s['trace_estimate']:.4g})",
            line={"color": colour(i)}, legendgroup=str(i),
            hovertemplate="eigenvalue %{x:.4g}<br>density %{y:.3g}<extra>" + str(label) + "</extra>"))
        ev = eigenvalues[i] if i < len(eigenvalues) else None
        if ev:
            fig.add_trace(go.Scatter(x=list(ev), y=[floor * 2.0 ** (i + 1)] * len(ev), mode="markers",
                                     marker={"color": colour(i), "symbol": "line-ns-open", "size": 14,
                                             "line": {"width": 2}},
                                     name=f"{label} Lanczos top-{len(ev)}", legendgroup=str(i),
                                     hovertemplate="lambda %{x:.5g}<extra>" + str(label) + "</extra>"))
    fig.update_layout(title="Hessian spectral density (stochastic Lanczos quadrature)",
                      xaxis_title="eigenvalue", yaxis_title="density (log scale)", yaxis_type="log",
                      yaxis_range=[np.log10(floor), np.log10(top) + 0.3], height=440, template="plotly_white")
    return fig


def eigenvalues_figure(sections: Sequence[dict[str, Any]], labels: Sequence[str]) -> Any:
    """The Hessian eigenvalues of ``hessian_eigenvalues`` sections against their index; the true
    residuals ``||Hv - lambda v||`` in the hover text."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (s, label) in enumerate(zip(sections, labels)):
        ev = s["eigenvalues"]
        res = s.get("residuals") or [None] * len(ev)
        fig.add_trace(go.Scatter(
            x=list(range(1, len(ev) + 1)), y=ev, mode="lines+markers", name=str(label), line={"color": colour(i)},
            customdata=[[r if r is not None else float("nan")] for r in res],
            hovertemplate="#%{x}: lambda = %{y:.6g}<br>residual %{customdata[0]:.2e}<extra>" + str(label)
                          + "</extra>"))
    what = {s["which"] for s in sections}
    method = {s.get("method", "lanczos") for s in sections}
    fig.update_layout(title=f"Hessian eigenvalues ({', '.join(sorted(what))}; {', '.join(sorted(method))})",
                      xaxis_title="index", yaxis_title="eigenvalue", xaxis_dtick=1, height=400,
                      template="plotly_white")
    return fig


def gradient_norms_figure(sections: Sequence[dict[str, Any]], labels: Sequence[str]) -> Any:
    """Per-layer gradient norms ``||g_i||`` (top) and strengths ``||g_i|| / sqrt(n_i)`` (GA-SAM's G_i,
    bottom) of ``gradient_norms`` sections, grouped bars per parameter tensor (or module)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    names = list(dict.fromkeys(g for s in sections for g in s["groups"]))
    batch = {s["batch_size"] for s in sections}
    what = "||grad L||" if batch == {None} else "E ||g_batch||"
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=(f"norm {what} per layer", "strength = norm / sqrt(parameters)"))
    for i, (s, label) in enumerate(zip(sections, labels)):
        for row, key in ((1, "norm"), (2, "strength")):
            vals = [s["groups"].get(n, {}).get(key) for n in names]
            fig.add_trace(go.Bar(x=names, y=vals, name=str(label), marker_color=colour(i), legendgroup=str(i),
                                 showlegend=row == 1,
                                 hovertemplate="%{x}: %{y:.4g}<extra>" + f"{label} {key}" + "</extra>"), row, 1)
    fig.update_layout(barmode="group", height=560, template="plotly_white",
                      title="gradient norms per layer (whole model: " + ", ".join(
                          f"{label} {s['norm']:.3g}" for s, label in zip(sections, labels)) + ")")
    fig.update_yaxes(title_text="norm", row=1, col=1)
    fig.update_yaxes(title_text="strength", row=2, col=1)
    return fig


def ascent_traces(report: dict[str, Any]) -> list[tuple[str, list[list[float]], bool]]:
    """``(name, trace, converged)`` of every worst-case ascent in an analysis report: sharpness and adaptive
    sharpness per rho, the surrogate gap where it ran the ascent, GNR, adversarial corruptions."""
    out = []
    for section, what in (("sharpness", "sharpness"), ("adaptive_sharpness", "adaptive")):
        for row in (report.get(section) or {}).get("rows", []):
            w = row.get("worst_case", {})
            if w.get("trace"):
                out.append((f"{what} rho={row['rho']:g}", w["trace"], bool(w.get("converged"))))
    for row in (report.get("surrogate_gap") or {}).get("rows", []):
        if row.get("trace"):
            out.append((f"surrogate gap rho={row['rho']:g}", row["trace"], bool(row.get("converged"))))
    for row in (report.get("gnr") or {}).get("rows", []):
        if row.get("trace"):
            out.append((f"GNR max ||g|| rho={row['rho']:g}", row["trace"], bool(row.get("converged"))))
    for row in (report.get("corruption") or {}).get("rows", []):
        if row.get("trace"):
            out.append((f"corruption L{row['p']} eps={row['eps']:g}", row["trace"], bool(row.get("converged"))))
    return out


def ascent_figure(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> Any:
    """The convergence traces of the worst-case ascents (:func:`ascent_traces`): the best value found so far
    against the step, one line per run (restarts dotted), a colour per checkpoint; not converged in the legend."""
    import plotly.graph_objects as go

    fig = go.Figure()
    for i, (report, label) in enumerate(zip(reports, labels)):
        for name, trace, converged in ascent_traces(report):
            for r, run in enumerate(trace):
                flag = "" if converged else " (NOT converged)"
                fig.add_trace(go.Scatter(
                    x=list(range(len(run))), y=run, mode="lines+markers", marker={"size": 4},
                    name=f"{label}: {name}{flag}" + (f" restart {r}" if r else ""), legendgroup=f"{i}{name}",
                    line={"color": colour(i), "dash": "dot" if r else "solid"},
                    hovertemplate="step %{x}: best %{y:.6g}<extra>" + f"{label}: {name}" + "</extra>"))
    fig.update_layout(title="worst-case ascents: best value so far per step (gain over the unperturbed value)",
                      xaxis_title="step (gradients)", yaxis_title="best value so far", height=440,
                      template="plotly_white")
    return fig


__all__ = ["ascent_figure", "ascent_traces", "density_figure", "eigenvalues_figure", "gradient_norms_figure"]
