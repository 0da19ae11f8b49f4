"""``landscape compare a.pt b.pt ...``: measures and loss landscapes of several checkpoints side by side.

Sections (each a function of the opened checkpoints, adding to one summary written as
``STEM.json``): :func:`measures_section` analyzes every checkpoint (``landscape analyze``, resumable
``STEM.LABEL.analysis.json``; or reads ``--analysis`` reports) and lays the measures out with a column
per checkpoint; :func:`landscape_section` computes 1-D and 2-D surfaces along random directions with
shared axes and colour scale and the 1-D interpolations between consecutive checkpoints with their
barrier heights. Everything is printed, and drawn in one self-contained HTML report (``STEM.html``).
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.cli import landscape_args as A
from landscape.cli.common import add_entry_point_args, loss_from_args, open_from_args, parse_assignments
from landscape.cli.guards import add_nonfinite_flag, check_weights


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="measures and loss landscapes of several checkpoints side by side (e.g. SGD vs SAM)",
        description="For every checkpoint the measures of `landscape analyze` (a column per checkpoint; with the "
                    "spectral density), a 1-D curve and a 2-D surface along random directions (same seed, each "
                    "normalized to its own weights), drawn side by side with shared axes and one colour scale, and "
                    "the linear interpolation between consecutive checkpoints with its barrier heights. Printed, "
                    "written to STEM.json and STEM.measures.md, drawn as PNG/PDF and in one self-contained HTML "
                    "report (STEM.html). Every analysis and surface is resumable.")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="two or more checkpoints of the same model and data")
    p.add_argument("--labels", nargs="+", default=None, help="names in the plots [default: optimizer names]")
    g = p.add_argument_group("directions")
    g.add_argument("--norm", choices=["filter", "layer", "model", "none"], default="filter",
                   help="normalization of the random directions [default: filter]")
    g.add_argument("--bias-bn", choices=["zero", "include", "copy"], default="zero",
                   help="1-D parameters (biases, norm layers) in the directions [default: zero]")
    A.add_grid_args(p, 2).add_argument("--curve-points", type=int, default=41, metavar="N",
                                       help="points of the 1-D curve along a random direction over --xrange "
                                            "(0: none) [default: 41]")
    g = p.add_argument_group("measures")
    g.add_argument("--no-measures", action="store_true", help="skip the measures")
    g.add_argument("--measure", action="append", metavar="KEY=VALUE",
                   help="a `landscape analyze` option by dest name (top_k=10, sharpness_rho=[0.01,0.05], "
                        "density=false); the analysis uses --subset, --seed, --dtype, --params, --device and the "
                        "spectral density unless set here [default: the analyze defaults]")
    g.add_argument("--analysis", nargs="+", metavar="JSON", default=None,
                   help="use these `landscape analyze --json` reports (one per checkpoint, in order) instead")
    g = p.add_argument_group("interpolation")
    g.add_argument("--no-interp", action="store_true", help="skip the interpolations")
    g.add_argument("--interp-range", nargs=2, type=float, default=[-0.25, 1.25], metavar=("LO", "HI"),
                   help="range of t [default: -0.25 1.25]")
    g.add_argument("--interp-points", type=int, default=31,
                   help="points along t; 0 and 1 are added if not among them [default: 31]")
    A.add_evaluation_args(p)
    A.add_output_args(p)
    g = p.add_argument_group("plots")
    g.add_argument("--metric", default=None, help="what the 2-D plots show [default: the first split's loss]")
    g.add_argument("--levels", type=int, default=30, help="contour levels [default: 30]")
    g.add_argument("--vmax", type=float, default=None, help="clip the shared colour scale at this value")
    g.add_argument("--title", default=None, help="title over the side-by-side plot [default: the metric]")
    add_entry_point_args(p)
    add_nonfinite_flag(p)
    p.set_defaults(func=run)


@dataclass
class Opened:
    label: str
    ckpt: Any
    model: Any
    data: Any


def open_all(args: argparse.Namespace) -> list[Opened]:
    """Every checkpoint with its model and data; labels unique and file-name safe."""
    if len(args.checkpoints) < 2:
        raise ValueError("compare needs at least two checkpoints")
    if args.labels is not None and len(args.labels) != len(args.checkpoints):
        raise ValueError(f"{len(args.labels)} labels for {len(args.checkpoints)} checkpoints")
    opened = []
    for path in args.checkpoints:
        ckpt, model, data = open_from_args(args, path)
        opened.append(Opened("", ckpt, model, data))
    for o in opened:
        check_weights(o.ckpt, args)
    first = opened[0].ckpt
    for o in opened[1:]:
        if (o.ckpt.data_name, o.ckpt.data_kwargs) != (first.data_name, first.data_kwargs):
            raise ValueError(f"{o.ckpt.path} was trained on other data than {first.path}; compare needs the same data")
        other = architecture_difference(first.state_dict, o.ckpt.state_dict)
        if other:
            raise ValueError(f"{o.ckpt.path} holds another architecture than {first.path} ({other}); compare "
                             "needs checkpoints of the same model")
    if args.labels is not None and len({_safe(name) for name in args.labels}) < len(args.labels):
        raise ValueError(f"--labels {' '.join(args.labels)}: two of them give the same file name")
    labels = args.labels or [o.ckpt.optimizer.get("name") or Path(o.ckpt.path).stem for o in opened]
    if len(set(labels)) < len(labels):
        labels = [Path(o.ckpt.path).stem for o in opened]
    if len({_safe(name) for name in labels}) < len(labels):  # unique as file names too
        labels = [f"{i}-{name}" for i, name in enumerate(labels)]
    for o, label in zip(opened, labels):
        o.label = label
    return opened


def architecture_difference(a: dict[str, Any], b: dict[str, Any]) -> str | None:
    """How the weights ``b`` differ in names or shapes from ``a`` (the first difference), or None."""
    missing, extra = sorted(set(a) - set(b)), sorted(set(b) - set(a))
    if missing or extra:
        return f"{'missing ' + missing[0] if missing else 'extra ' + extra[0]}" + (
            f" and {len(missing) + len(extra) - 1} more names differ" if len(missing) + len(extra) > 1 else "")
    for k, v in a.items():
        if tuple(v.shape) != tuple(b[k].shape):
            return f"{k} has shape {tuple(b[k].shape)}, not {tuple(v.shape)}"
    return None


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


@dataclass
class Drawn:
    """The surfaces a comparison report draws: per checkpoint a 1-D curve and a 2-D surface, and the
    interpolations ``(name, surface)``."""

    curves: list[Any]
    surfaces: list[Any]
    interpolations: list[tuple[str, Any]]


def landscape_section(args: argparse.Namespace, opened: list[Opened], stem: str,
                      device: Any) -> tuple[dict[str, Any], Drawn]:
    """1-D curves and 2-D surfaces side by side and the interpolations; returns the summary section (files
    included) and the surfaces."""
    from landscape import distributed as D
    from landscape.landscapes.directions import checkpoint_vector, interpolation_direction
    from landscape.landscapes.interpolation import barrier_heights
    from landscape.landscapes.surface import compute_surface

    x = A.resolve_axis(args.xrange, args.xpoints, (-1.0, 1.0), 51)
    y = A.resolve_axis(args.yrange or args.xrange, args.ypoints or args.xpoints, (-1.0, 1.0), 51)
    t1 = A.resolve_axis(args.xrange, args.curve_points, (-1.0, 1.0), 41) if args.curve_points > 0 else None
    drawn, section = Drawn([], [], []), {"checkpoints": [], "interpolations": [], "files": []}
    objs_of = {}
    for o in opened:
        objs = A.objectives(o.model, o.data, args, device)
        objs_of[o.label] = objs
        sub = f"{stem}.{_safe(o.label)}"
        head = A.header(o.ckpt, args)
        common = dict(seed=args.seed, norm=args.norm, bias_bn=args.bias_bn, params=args.params, dtype=args.dtype,
                      bn=args.bn, chunk=A.chunk_size(args), restart=args.restart, progress=not args.quiet)
        s = A.random_surface(objs, head, sub, [x, y], **common)
        drawn.surfaces.append(s)
        entry = {"label": o.label, **head["checkpoint"], "at_checkpoint": A.centre(s), "surface": f"{sub}.npz"}
        section["files"].append(f"{sub}.npz")
        if t1 is not None:
            drawn.curves.append(A.random_surface(objs, head, f"{sub}.1d", [t1], **common))
            entry["curve"] = f"{sub}.1d.npz"
            section["files"].append(f"{sub}.1d.npz")
        section["checkpoints"].append(entry)

    curves, barriers = {}, {}
    if not args.no_interp:
        t = A.interpolation_axis(args.interp_range, args.interp_points)
        for a, b in zip(opened, opened[1:]):
            objs = objs_of[a.label]
            train = next(iter(objs.values()))
            name = f"{a.label} → {b.label}"
            sub = f"{stem}.interp-{_safe(a.label)}-{_safe(b.label)}"
            vb, sb = checkpoint_vector(train, b.ckpt)  # opened, stripped and checked by open_all
            dirs = interpolation_direction(train, vb, source=sb)
            s = compute_surface(objs, dirs, [t], bn=args.bn, bn_source=objs.get("train"),
                                chunk_size=A.chunk_size(args), path=f"{sub}.npz", resume=not args.restart,
                                header=A.header(a.ckpt, args), progress=not args.quiet,
                                end_statistics=A.end_statistics(a.model, b.ckpt, args))
            barriers[name] = {split: barrier_heights(t, s[f"{split}_loss"]) for split in args.split}
            curves[name] = {split: s[f"{split}_loss"] for split in args.split}
            drawn.interpolations.append((name, s))
            section["interpolations"].append({"from": a.label, "to": b.label, "distance": dirs.meta["distance"],
                                              "barriers": barriers.get(name), "surface": f"{sub}.npz"})
            section["files"].append(f"{sub}.npz")

    if D.is_main():
        from landscape.landscapes.plots import plot_interpolation, plot_side_by_side

        labels = [o.label for o in opened]
        args.metric = args.metric or f"{args.split[0]}_loss"
        drawn.surfaces[0][args.metric]  # a one-line error for an unknown metric
        section["files"] += map(str, plot_side_by_side(drawn.surfaces, labels, stem, args.format, metric=args.metric,
                                                       log=args.log, levels=args.levels, vmax=args.vmax,
                                                       title=args.title))
        if curves:
            section["files"] += map(str, plot_interpolation(t, curves, f"{stem}.interp", args.format,
                                                            barriers=barriers, log=args.log))
    return section, drawn


def measures_section(args: argparse.Namespace, opened: list[Opened], stem: str) -> tuple[dict[str, Any], list[Any]]:
    """Every checkpoint's analysis (``--analysis`` reports, or ``landscape analyze`` run here into the resumable
    ``STEM.LABEL.analysis.json``) and the table of their scalars, a column per checkpoint; returns the summary
    section and the reports."""
    from landscape import distributed as D
    from landscape.analysis import file_digest
    from landscape.study.compare import analyze_checkpoint, comparison, load_report

    if args.analysis is not None:
        if len(args.analysis) != len(opened):
            raise ValueError(f"{len(args.analysis)} --analysis reports for {len(opened)} checkpoints")
        files = list(args.analysis)
        reports = [load_report(f) for f in files]
        for f, r, o in zip(files, reports, opened):
            made_from = (r.get("checkpoint") or {}).get("sha256")
            if made_from and made_from != file_digest(o.ckpt.path):
                raise ValueError(f"{f} is the analysis of another checkpoint ({r['checkpoint'].get('path')}) "
                                 f"than {o.ckpt.path}")
    else:
        options = {"seed": args.seed, "dtype": args.dtype, "params": args.params, "device": args.device,
                   "subset": args.subset, "density": True, **parse_assignments(args.measure, "--measure")}
        files = [f"{stem}.{_safe(o.label)}.analysis.json" for o in opened]
        reports = [analyze_checkpoint(o.ckpt, o.model, o.data, options, json_path=f, progress=not args.quiet,
                                      loss=loss_from_args(args))
                   for o, f in zip(opened, files)]
    labels, rows = comparison(reports, labels=[o.label for o in opened])
    section = {"labels": labels, "reports": files,
               "rows": {name: [None if isinstance(v, float) and v != v else v for v in values]
                        for name, values in rows}}
    if D.is_main():
        from landscape.io import atomic_write_text
        from landscape.study.compare import headline, measures_markdown

        md = f"{stem}.measures.md"
        atomic_write_text(md, f"# {' vs '.join(labels)}\n\n{headline(labels, rows)}\n\n"
                              f"{measures_markdown(reports, labels=labels)}\n")
        section["files"] = [md]
        section["headline"] = headline(labels, rows)
    return section, reports


def compare(args: argparse.Namespace) -> dict[str, Any] | None:
    """Compute every section, write ``STEM.json``, ``STEM.measures.md``, the plots and ``STEM.html``; return
    the summary (with ``files``, every path written, and ``reports``, the analysis reports; None on ranks
    other than the main one)."""
    from landscape import distributed as D
    from landscape.io import atomic_write_json

    opened = open_all(args)
    device = A.setup_device(args)
    stem = args.out or A.default_stem(opened[0].ckpt.path, "compare")
    summary: dict[str, Any] = {}
    reports: list[Any] = []
    if not args.no_measures:
        summary["measures"], reports = measures_section(args, opened, stem)
    summary["landscapes"], drawn = landscape_section(args, opened, stem, device)
    if not D.is_main():
        return None
    files = [f"{stem}.json", *summary.get("measures", {}).get("files", []), *summary["landscapes"]["files"]]
    if not args.no_html:
        from landscape.report import html_report

        headers = [{"checkpoint": {"path": str(o.ckpt.path)}, "model": {"name": o.ckpt.model_name,
                    "kwargs": o.ckpt.model_kwargs}, "data": {"name": o.ckpt.data_name}, "optimizer": o.ckpt.optimizer}
                   for o in opened]
        from landscape.report.training import has_rows, load_runs

        tracked = [o for o in opened if o.ckpt.path and has_rows(o.ckpt.path)]  # runs trained with --track
        training = load_runs([o.ckpt.path for o in tracked], [o.label for o in tracked]) if tracked else []
        files.append(str(html_report(reports or headers, f"{stem}.html", labels=[o.label for o in opened],
                                     curves=drawn.curves, surfaces=drawn.surfaces,
                                     interpolations=drawn.interpolations, training=training, log=args.log)))
        summary["html"] = files[-1]
    notes = [n for o, s in zip(opened, drawn.surfaces) for n in A.nonfinite_notes(s, f"{o.label}: ")]
    notes += [n for name, s in drawn.interpolations for n in A.nonfinite_notes(s, f"{name}: ")]
    if notes:
        summary["notes"] = notes
    atomic_write_json(f"{stem}.json", summary)
    return {**summary, "files": files, "reports": reports}


def run(args: argparse.Namespace) -> int:
    summary = compare(args)
    if summary is not None:
        print_summary(summary)
        for note in summary.get("notes", []):
            print(note)
        print("wrote " + " ".join(summary["files"]))
    return 0


def print_summary(summary: dict[str, Any]) -> None:
    """The tables of :func:`compare`'s summary: measures (with the one-line verdict), values at each
    checkpoint, interpolation barriers."""
    from rich.console import Console
    from rich.table import Table

    reports = summary.get("reports")
    if reports:
        from landscape.study.compare import measures_table

        measures = summary["measures"]
        Console().print(measures_table(reports, labels=measures["labels"], title="measures"))
        print(measures["headline"])
    land = summary["landscapes"]
    t = Table(title="at each checkpoint")
    keys = sorted({k for c in land["checkpoints"] for k in c["at_checkpoint"]})
    t.add_column("checkpoint")
    for k in keys:
        t.add_column(k, justify="right")
    for c in land["checkpoints"]:
        t.add_row(c["label"], *(f"{c['at_checkpoint'].get(k, float('nan')):.4g}" for k in keys))
    Console().print(t)
    if land["interpolations"]:
        t = Table(title="interpolation barriers: max L(t) - max(L(0), L(1)) | above the straight line")
        t.add_column("path")
        t.add_column("distance", justify="right")
        splits = sorted({s for i in land["interpolations"] for s in (i["barriers"] or {})})
        for s in splits:
            t.add_column(f"{s} barrier", justify="right")
        for i in land["interpolations"]:
            b = i["barriers"] or {}
            t.add_row(f"{i['from']} → {i['to']}", f"{i['distance']:.4g}",
                      *(f"{b[s]['barrier']:.4g} | {b[s]['barrier_linear']:.4g}" if s in b else "-" for s in splits))
        Console().print(t)
