"""The study report: ranked correlation tables (terminal and markdown) and scatter plots
(measure vs generalization gap coloured by optimizer; matplotlib PNG and a self-contained plotly HTML)."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Sequence

from landscape.study.spec import axis_label

PNG_PANELS = 12
COLORS = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
          "#17becf"]


def _f(x: Any, digits: int = 3) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:+.{digits}f}"


def _ci(ci: Sequence[float] | None) -> str:
    if not ci or any(v is None or not math.isfinite(v) for v in ci):
        return "n/a"
    return f"[{ci[0]:+.2f}, {ci[1]:+.2f}]"


def ranked(corr: dict[str, Any], group: str = "all", target: str = "gen_gap") -> tuple[list[str], list[list[str]]]:
    """Header and rows (strings) of the ranked table of ``group`` against ``target``."""
    g = corr["groups"][group]
    axes = g["axes"]
    pct = f"{round(100 * corr['bootstrap']['confidence'])}%"
    other = [t for t in corr["targets"] if t != target]
    header = ["#", "measure", "n", "tau", f"{pct} CI", *[f"psi {axis_label(a)}" for a in axes]]
    if axes:
        header += ["Psi", f"{pct} CI"]
    header += [f"tau vs {t}" for t in other]
    by_measure = {t: {s["measure"]: s for s in g["targets"][t]} for t in other}
    rows = []
    for i, s in enumerate(g["targets"][target], 1):
        row = [str(i), s["measure"], str(s["n"]), _f(s["tau"]), _ci(s["tau_ci"]), *[_f(s["psi"][a]) for a in axes]]
        if axes:
            row += [_f(s["Psi"]), _ci(s["Psi_ci"])]
        row += [_f(by_measure[t].get(s["measure"], {}).get("tau")) for t in other]
        rows.append(row)
    return header, rows


def title(corr: dict[str, Any], group: str, target: str) -> str:
    g = corr["groups"][group]
    who = "all runs" if group == "all" else f"optimizer {group}"
    filt = "" if corr["min_train_acc"] is None else f", train_acc >= {corr['min_train_acc']:g}"
    return f"{corr['study']}: Kendall tau vs {target} ({who}, {g['runs']} runs{filt})"


def terminal_table(corr: dict[str, Any], group: str = "all", target: str = "gen_gap") -> Any:
    """A rich table of the ranked measures."""
    from rich.markup import escape
    from rich.table import Table

    header, rows = ranked(corr, group, target)
    t = Table(title=escape(title(corr, group, target)))
    for h in header:
        t.add_column(escape(h), justify="left" if h == "measure" else "right", style="bold" if h == "measure" else None)
    for r in rows:
        t.add_row(*map(escape, r))  # names such as worst[rho=0.05] are not markup
    return t


def markdown_table(header: list[str], rows: list[list[str]]) -> str:
    rule = "|".join("---" if h == "measure" else "---:" for h in header)
    lines = ["| " + " | ".join(header) + " |", f"|{rule}|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def ascent_convergence(study: Any, study_dir: str | Path) -> str:
    """One line on the worst-case ascents of the finished runs (:func:`landscape.report.figures.ascent_traces`):
    how many converged, and which did not (run: ascent), so that an unconverged sharpness is not correlated
    unawares; ``""`` when there are none."""
    from landscape.report.figures import ascent_traces
    from landscape.study.table import analysis_file, read_json, run_dir

    total, bad = 0, []
    for run in study.runs:
        for pass_name in study.passes:
            path = run_dir(study_dir, run) / analysis_file(pass_name)
            report = read_json(path) if path.exists() else None
            for name, _, converged in ascent_traces(report or {}):
                total += 1
                if not converged:
                    bad.append(f"{run.name}{':' + pass_name if pass_name else ''} {name}")
    if not total:
        return ""
    line = f"Worst-case ascents: {total - len(bad)} of {total} converged"
    if bad:
        more = f" and {len(bad) - 10} more" if len(bad) > 10 else ""
        line += "; NOT converged (raise the ascent steps): " + "; ".join(bad[:10]) + more
    return line + "."


def markdown(corr: dict[str, Any], study: Any, counts: dict[str, int], plots: Sequence[str] = (),
             convergence: str = "") -> str:
    """The whole report: runs, method, the ascents' convergence, then a ranked table per group and target."""
    b = corr["bootstrap"]
    tau = {"a": "tau-a (asam.txt App. B)", "b": "tau-b (scipy.stats.kendalltau)", "c": "tau-c"}[corr["tau_variant"]]
    status = ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
    excl = ", ".join(f"{n} {k}" for k, n in sorted(corr["runs"]["excluded"].items())) or "none"
    out = [f"# Study: {corr['study']}", "",
           f"{corr['runs']['total']} runs ({status}); {corr['runs']['used']} used for the correlations "
           f"(left out: {excl}" + ("" if corr["min_train_acc"] is None else
                                   f"; filter train_acc >= {corr['min_train_acc']:g}") + ").", "",
           f"Kendall {tau} of each measure against the target; granulated coefficients psi_i (Jiang et al. "
           f"2019): the mean over the fixed settings of the other axes (and seed) of tau along axis i, and "
           f"Psi = mean_i psi_i. {round(100 * b['confidence'])}% bootstrap percentile intervals "
           f"({b['draws']} draws, seed {b['seed']}). Ranked by "
           + ("Psi, then tau." if corr.get("rank_by", "psi") == "psi" else "tau, then Psi."), "",
           "Axes: " + "; ".join(f"{axis_label(a)} = {_values(v)}" for a, v in study.axes.items())
           + "; optimizer = " + ", ".join(sorted({r.variant for r in study.runs}, key=_variant_order(study)))
           + "; seeds = " + _values(study.seeds) + ".", ""]
    if convergence:
        out += [convergence, ""]
    for group in corr["groups"]:
        for target in corr["targets"]:
            header, rows = ranked(corr, group, target)
            out += [f"## {'All runs' if group == 'all' else group} vs {target}", "", markdown_table(header, rows), ""]
    if plots:
        out += ["Scatter plots: " + ", ".join(f"[{Path(p).name}]({Path(p).name})" for p in plots) + ".", ""]
    return "\n".join(out)


def _values(v: Sequence[Any]) -> str:
    return "[" + ", ".join(f"{x:g}" if isinstance(x, float) else str(x) for x in v) + "]"


def _variant_order(study: Any) -> Any:
    order = list(dict.fromkeys(r.variant for r in study.runs))
    return order.index


# -------------------------------------------------------------------------- scatter plots
def _points(rows: Sequence[dict[str, Any]], measure: str, target: str) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        x, y = r.get(measure), r.get(target)
        if isinstance(x, (int, float)) and isinstance(y, (int, float)) and math.isfinite(x) and math.isfinite(y):
            out.append(r)
    return out


def _log_scale(xs: Sequence[float]) -> bool:
    return bool(xs) and min(xs) > 0 and max(xs) / min(xs) > 100


def _taus(corr: dict[str, Any], target: str) -> dict[str, float]:
    return {s["measure"]: s["tau"] for s in corr["groups"]["all"]["targets"].get(target, [])}


def scatter_png(rows: Sequence[dict[str, Any]], measures: Sequence[str], target: str, path: str | Path,
                corr: dict[str, Any] | None = None, optimizers: Sequence[str] = (), *,
                titles: Sequence[str] | None = None, columns: int = 3, suptitle: str | None = None) -> Path:
    """One panel per measure: ``target`` against the measure, a colour per optimizer, Kendall tau (all runs,
    from ``corr``) in the panel title. ``titles``: panel titles instead of the measure names (the x labels
    stay the measures); ``columns``: panels per row; ``suptitle``: a title over the whole figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from landscape.io import atomic_write

    taus = _taus(corr, target) if corr else {}
    optimizers = list(optimizers) or list(dict.fromkeys(r["optimizer"] for r in rows))
    if titles is not None and len(titles) != len(measures):
        raise ValueError(f"{len(titles)} titles for {len(measures)} measures")
    n = max(1, len(measures))
    cols = min(max(1, columns), n)
    nrows = math.ceil(n / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.4 * nrows), squeeze=False)
    for k, (ax, m) in enumerate(zip(axes.flat, measures)):
        pts = _points(rows, m, target)
        for i, opt in enumerate(optimizers):
            mine = [r for r in pts if r["optimizer"] == opt]
            if mine:
                ax.scatter([r[m] for r in mine], [r[target] for r in mine], s=18, alpha=0.8,
                           color=COLORS[i % len(COLORS)], label=opt)
        if _log_scale([r[m] for r in pts]):
            ax.set_xscale("log")
        t = taus.get(m)
        name = m if titles is None else titles[k]
        ax.set_title(name + ("" if t is None or not math.isfinite(t) else f"\ntau = {t:+.3f}"), fontsize=9)
        ax.set_xlabel(m, fontsize=8)
        ax.set_ylabel(target, fontsize=8)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(measures):]:
        ax.set_visible(False)
    height = fig.get_figheight()
    title_h = 0.2 * (suptitle.count("\n") + 1) + 0.1 if suptitle else 0.0  # inches
    if suptitle:
        fig.suptitle(suptitle, fontsize=10, y=1.0 - 0.05 / height, va="top")
    if measures:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        if handles:
            fig.legend(handles, labels, loc="upper center", ncol=min(len(labels), 6), fontsize=8,
                       bbox_to_anchor=(0.5, 1.0 - title_h / height))
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / height))  # room for the legend (tight_layout sees the title)
    path = Path(path)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=110))
    plt.close(fig)
    return path


def scatter_html(rows: Sequence[dict[str, Any]], measures: Sequence[str], target: str, path: str | Path,
                 corr: dict[str, Any] | None = None, optimizers: Sequence[str] = (), title_text: str = "") -> Path:
    """A self-contained plotly page: pick the measure in a menu; hover shows the run."""
    import plotly.graph_objects as go

    from landscape.io import atomic_write_text

    taus = _taus(corr, target) if corr else {}
    optimizers = list(optimizers) or list(dict.fromkeys(r["optimizer"] for r in rows))
    fig = go.Figure()
    buttons = []
    per = len(optimizers)
    for k, m in enumerate(measures):
        pts = _points(rows, m, target)
        for i, opt in enumerate(optimizers):
            mine = [r for r in pts if r["optimizer"] == opt]
            fig.add_trace(go.Scatter(
                x=[r[m] for r in mine], y=[r[target] for r in mine], mode="markers", name=opt, legendgroup=opt,
                marker={"color": COLORS[i % len(COLORS)], "size": 8, "opacity": 0.85}, visible=k == 0,
                text=[r["name"] for r in mine],
                hovertemplate="%{text}<br>" + m + " = %{x:.4g}<br>" + target + " = %{y:.4f}<extra></extra>"))
        t = taus.get(m)
        visible = [j // per == k for j in range(per * len(measures))]
        log = _log_scale([r[m] for r in pts])
        buttons.append({"label": m, "method": "update",
                        "args": [{"visible": visible},
                                 {"xaxis.title.text": m, "xaxis.type": "log" if log else "linear",
                                  "title.text": f"{title_text}{m}" + ("" if t is None or not math.isfinite(t)
                                                                      else f" (tau = {t:+.3f})")}]})
    if buttons:
        first = buttons[0]["args"][1]
        fig.update_layout(title={"text": first["title.text"]}, xaxis={"title": {"text": measures[0]},
                                                                       "type": first["xaxis.type"]},
                          updatemenus=[{"buttons": buttons, "direction": "down", "x": 1.0, "xanchor": "right",
                                        "y": 1.15, "yanchor": "top"}])
    fig.update_layout(yaxis={"title": {"text": target}}, template="plotly_white",
                      legend={"title": {"text": "optimizer"}})
    path = Path(path)
    atomic_write_text(path, fig.to_html(include_plotlyjs=True, full_html=True))
    return path


def write_report(study: Any, table: Any, corr: dict[str, Any], study_dir: str | Path,
                 counts: dict[str, int]) -> dict[str, Path]:
    """``correlation.json``, ``report.md``, ``scatter_<target>.png`` and ``.html`` (first target) in ``study_dir``.
    The plots show the measures in rank order (all runs); the PNG the best ``PNG_PANELS`` of them."""
    from landscape.io import atomic_write_json, atomic_write_text
    from landscape.study.correlation import usable

    study_dir = Path(study_dir)
    paths = {"correlation": study_dir / "correlation.json", "markdown": study_dir / "report.md"}
    atomic_write_json(paths["correlation"], _finite(corr))
    used, _ = usable(table.rows, corr["min_train_acc"])
    target = corr["targets"][0]
    plots: list[Path] = []
    if corr["measures"]:
        opts = study.optimizers
        order = [s["measure"] for s in corr["groups"]["all"]["targets"][target]]
        paths["png"] = scatter_png(used, order[:PNG_PANELS], target, study_dir / f"scatter_{target}.png", corr, opts)
        paths["html"] = scatter_html(used, order, target, study_dir / f"scatter_{target}.html", corr,
                                     opts, title_text=f"{study.name}: ")
        plots = [paths["png"], paths["html"]]
    atomic_write_text(paths["markdown"], markdown(corr, study, counts, [str(p) for p in plots],
                                                  ascent_convergence(study, study_dir)) + "\n")
    return paths


def _finite(obj: Any) -> Any:
    """NaN/inf -> None, for strict JSON."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


__all__ = ["markdown", "markdown_table", "ranked", "scatter_html", "scatter_png", "terminal_table", "title",
           "write_report"]
