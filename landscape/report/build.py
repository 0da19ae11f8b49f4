"""The HTML report of one checkpoint (``landscape analyze --html``) or several side by side
(``landscape compare``, ``landscape demo``), built from ``landscape analyze`` report dicts and loss
surfaces.

Sections, each present when its inputs are: overview (checkpoints, with a one-line verdict when there
are several), measures (one checkpoint: every section's rows with its settings and run time; several:
one column per checkpoint, then each checkpoint's full table), top Hessian eigenvalues, spectral
density, gradient norms per layer, the worst-case ascents' convergence traces, 1-D landscape (random
direction), 2-D landscape (one checkpoint: 3-D surface and contours; several: contours with shared axes
and one colour scale, and 3-D surfaces with one z-range), interpolations with their barrier heights, and
the run settings.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

from landscape.landscapes.surface import Surface
from landscape.report.page import Page, esc, table
from landscape.study.compare import format_cell, optimizer_label


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.6g}"
    if isinstance(v, (list, tuple)):
        return ",".join(_fmt(x) for x in v)
    return str(v)


def measures_rows(report: dict[str, Any]) -> tuple[list[tuple[Any, ...]], list[int]]:
    """Rows ``(label, value)`` of every section of ``report`` in report order: a group heading per
    section (its title and run time), its table rows, and its settings (the options of its flags);
    first the settings shared by all sections. Returns ``(rows, indices of the group headings)``."""
    from landscape.analysis import load_measures, measure_options

    settings = report.get("settings", {})
    options = measure_options()
    rows: list[tuple[Any, ...]] = []
    groups: list[int] = []
    shared = [k for k in options[""] if k in settings]
    if shared:
        groups.append(len(rows))
        rows.append(("data and numerics",))
        rows.append(("settings", (", ".join(f"{k}={_fmt(settings[k])}" for k in shared), "settings")))
    for name, measure in load_measures().items():
        section = report.get(name)
        if not isinstance(section, dict):
            continue
        secs = section.get("seconds")
        groups.append(len(rows))
        rows.append((f"{measure.title}" + ("" if secs is None else f"  ({secs:.1f} s)"),))
        rows += [(label.replace("  ", "\u2003", 1) if label.startswith("  ") else label, value)
                 for label, value in measure.rows(section)]
        keys = [k for k in options.get(name, []) if k in settings]
        if keys:
            rows.append(("settings", (", ".join(f"{k}={_fmt(settings[k])}" for k in keys), "settings")))
    return rows, groups


def _measures_table(report: dict[str, Any]) -> str:
    rows, groups = measures_rows(report)
    return table(["measure", "value"], rows, groups=groups, cls="measures")


def _ratio(values: list[Any]) -> str:
    a, b = values[0], values[-1]
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and a and math.isfinite(a) and math.isfinite(b):
        return f"{b / a:.3g}"
    return ""


def _comparison_table(labels: list[str], rows: list[tuple[str, list[Any]]]) -> str:
    header = ["measure", *labels]
    two = len(labels) == 2
    if two:
        header.append(f"{labels[1]} / {labels[0]}")
    def cell(v: Any) -> Any:  # numbers right-aligned, text (the optimizer) left to wrap
        return (format_cell(v), "num") if v is None or isinstance(v, (int, float)) else format_cell(v)

    body = [(name, *map(cell, values), *([(_ratio(values), "num")] if two else [])) for name, values in rows]
    return table(header, body)


def _overview(reports: Sequence[dict[str, Any]], labels: Sequence[str]) -> str:

    rows = []
    for r, label in zip(reports, labels):
        ck, model, data, m = r.get("checkpoint", {}), r.get("model", {}), r.get("data", {}), r.get("metrics", {})
        kwargs = json.dumps(model.get("kwargs", {}), sort_keys=True)
        rows.append((label, ck.get("path", ""), (ck.get("sha256") or "")[:12], f"{model.get('name', '')} {kwargs}",
                     data.get("name", ""), optimizer_label(r) or "",
                     *(format_cell(m.get(k)) for k in ("train_acc", "test_acc", "gen_gap"))))
    return table(["", "checkpoint", "sha256", "model", "data", "optimizer", "train acc", "test acc", "gap"], rows,
                 numeric=[False] * 6 + [True] * 3)


def _sections(reports: Sequence[dict[str, Any]], labels: Sequence[str], name: str) -> tuple[list[Any], list[str]]:
    have = [(r[name], label) for r, label in zip(reports, labels) if isinstance(r.get(name), dict)]
    return [s for s, _ in have], [label for _, label in have]


def _subset_note(s: Surface) -> str:
    splits = s.meta.get("splits", {})
    n = ", ".join(f"{k} {v['samples']}" for k, v in splits.items())
    d = s.meta.get("directions", {})
    seed = f", seed {d['seed']}" if "seed" in d else ""
    return f"{d.get('kind', '')} directions ({d.get('norm', 'none')}-normalized{seed}); samples per split: {n}; " \
           f"BatchNorm {s.meta.get('bn', 'frozen')}."


def html_report(
    reports: Sequence[dict[str, Any]],
    path: str | Path,
    *,
    labels: Sequence[str] | None = None,
    curves: Sequence[Surface] = (),
    surfaces: Sequence[Surface] = (),
    interpolations: Sequence[tuple[str, Surface]] = (),
    training: Sequence[tuple[str, list[dict[str, Any]]]] = (),
    title: str | None = None,
    log: bool = False,
) -> Path:
    """Write the report page (see the module docstring) of the analysis ``reports`` (one per checkpoint)
    to ``path``. ``curves``/``surfaces``: a 1-D / 2-D surface per checkpoint (same order; all or none),
    ``interpolations``: ``(name, 1-D interpolation surface)``; ``training``: ``(label, curvature rows)`` of
    runs trained with ``--track`` (:mod:`landscape.report.training`); ``log``: log-scale landscape plots."""
    from landscape.landscapes import interactive as I
    from landscape.report import figures as F
    from landscape.study.compare import comparison, headline

    if not reports:
        raise ValueError("a report needs at least one analysis report")
    labels, rows = comparison(list(reports), labels=labels)
    several = len(reports) > 1
    for what, given in (("curves", curves), ("surfaces", surfaces)):
        if given and len(given) != len(reports):
            raise ValueError(f"{len(given)} {what} for {len(reports)} reports")
    title = title or ("comparison: " + " vs ".join(labels) if several else f"analysis of {labels[0]}")
    data = reports[0].get("data", {}).get("name", "")
    page = Page(title, f"landscape analysis report; data {data}; {len(reports)} checkpoint(s)")

    parts = [_overview(reports, labels)]
    if several:
        parts.insert(0, f'<p class="headline">{esc(headline(labels, rows))}</p>')
    page.add("overview", "Overview", *parts)

    from landscape.analysis import load_measures

    if not any(isinstance(r.get(name), dict) for r in reports for name in load_measures()):
        pass
    elif several:
        details = "".join(f"<details><summary>{esc(label)}: every measure, its settings and cost</summary>"
                          f"{_measures_table(r)}</details>" for r, label in zip(reports, labels))
        page.add("measures", "Measures",
                 '<p class="note">One column per checkpoint (the scalars a study correlates; '
                 "<code>landscape.study.compare</code>); each checkpoint's full table below.</p>",
                 _comparison_table(labels, rows), details)
    else:
        page.add("measures", "Measures", '<p class="note">Every section of the analysis with its settings, '
                 "cost and run time (as <code>landscape analyze</code> prints it).</p>", _measures_table(reports[0]))

    eig, eig_labels = _sections(reports, labels, "hessian_eigenvalues")
    if eig:
        page.add("eigenvalues", "Top Hessian eigenvalues", page.figure(F.eigenvalues_figure(eig, eig_labels)))
    dens, dens_labels = _sections(reports, labels, "spectral_density")
    if dens:
        top = {label: (r.get("hessian_eigenvalues") or {}).get("eigenvalues") for r, label in zip(reports, labels)}
        page.add("density", "Hessian spectral density",
                 page.figure(F.density_figure(dens, dens_labels, [top.get(label) for label in dens_labels]),
                             "Gaussian-smoothed SLQ estimate; the ticks at the bottom are the Lanczos eigenvalues."))
    grads, grad_labels = _sections(reports, labels, "gradient_norms")
    if grads:
        page.add("gradient-norms", "Gradient norms per layer",
                 page.figure(F.gradient_norms_figure(grads, grad_labels)))
    if any(F.ascent_traces(r) for r in reports):
        page.add("ascents", "Worst-case ascents",
                 page.figure(F.ascent_figure(reports, labels),
                             "Each ascent's best value per step and restart; a flat end means it converged."))
    if curves:
        page.add("landscape-1d", "1-D loss landscape",
                 page.figure(I.curves_figure(curves, labels, log=log, accuracy=True,
                                             title="loss along a random direction (shared axes)"),
                             _subset_note(curves[0])))
    if surfaces:
        if several:
            figs = [page.figure(I.contours_figure(surfaces, labels, metric=m, log=log), _subset_note(surfaces[0]))
                    for m in ("train_loss", "test_loss") if m in surfaces[0].metrics]
            figs.append(page.figure(I.compare_figure(surfaces, labels, log=log)))
        else:
            figs = [page.figure(I.surface_figure(surfaces[0], log=log), _subset_note(surfaces[0]))]
        page.add("landscape-2d", "2-D loss landscape", *figs)
    if interpolations:
        from landscape.landscapes.interpolation import barrier_heights

        brows = []
        for name, s in interpolations:
            t = s.axes[0]
            for split in I._splits(s):
                b = barrier_heights(t, s[f"{split}_loss"])
                brows.append((name, split, format_cell(s.meta.get("directions", {}).get("distance")),
                              *(format_cell(b[k]) for k in ("loss_start", "loss_end", "barrier", "t_max",
                                                            "barrier_linear"))))
        page.add("interpolation", "Linear interpolation",
                 page.figure(I.interpolation_figure(interpolations, log=log)),
                 table(["path", "split", "||w_b - w_a||", "L(0)", "L(1)", "barrier max L(t) - max(L(0), L(1))",
                        "at t", "above the straight line"], brows, numeric=[False, False] + [True] * 6))
    if training:
        from landscape.report.training import training_parts

        page.add("training", "Curvature during training", *training_parts(page, training))
    page.add("settings", "Runtime",
             table(["", "device", "world size", "versions"],
                   [(label, r.get("runtime", {}).get("device", ""), r.get("runtime", {}).get("world_size", ""),
                     ", ".join(f"{k} {v}" for k, v in r.get("runtime", {}).get("versions", {}).items()))
                    for r, label in zip(reports, labels)]))
    return page.write(path)


__all__ = ["html_report", "measures_rows"]
