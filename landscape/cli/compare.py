"""``landscape compare a.pt b.pt ...``: loss landscapes of several checkpoints side by side.

Sections (each a function of the opened checkpoints, adding to one summary written as
``STEM.json``): :func:`landscape_section` draws 2-D surfaces with shared axes and colour scale
and the 1-D interpolations between consecutive checkpoints with their barrier heights. A table
of measures per checkpoint is meant to join as another section.
"""
from __future__ import annotations

import argparse
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from landscape.cli import landscape_args as A
from landscape.cli.common import add_entry_point_args, parse_assignments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "compare", help="loss landscapes of several checkpoints side by side (e.g. SGD vs SAM) + interpolation",
        description="For every checkpoint a 2-D surface along random directions (same seed, each normalized to its "
                    "own weights), drawn side by side with shared axes and one colour scale (PNG/PDF and one "
                    "interactive HTML), and the linear interpolation between consecutive checkpoints with its "
                    "barrier heights. Every surface is resumable; the summary goes to STEM.json.")
    p.add_argument("checkpoints", nargs="+", metavar="CKPT", help="two or more checkpoints of the same model and data")
    p.add_argument("--labels", nargs="+", default=None, help="names in the plots [default: optimizer names]")
    g = p.add_argument_group("directions")
    g.add_argument("--norm", choices=["filter", "layer", "model", "none"], default="filter",
                   help="normalization of the random directions [default: filter]")
    g.add_argument("--bias-bn", choices=["zero", "include", "copy"], default="zero",
                   help="1-D parameters (biases, norm layers) in the directions [default: zero]")
    A.add_grid_args(p, 2)
    g = p.add_argument_group("interpolation")
    g.add_argument("--no-interp", action="store_true", help="skip the interpolations")
    g.add_argument("--interp-range", nargs=2, type=float, default=[-0.25, 1.25], metavar=("LO", "HI"),
                   help="range of t [default: -0.25 1.25]")
    g.add_argument("--interp-points", type=int, default=31,
                   help="points along t; 0 and 1 are added if not among them [default: 31]")
    A.add_evaluation_args(p)
    A.add_output_args(p)
    g = p.add_argument_group("plots")
    g.add_argument("--metric", default="train_loss", help="what the 2-D plots show [default: train_loss]")
    g.add_argument("--levels", type=int, default=30, help="contour levels [default: 30]")
    g.add_argument("--vmax", type=float, default=None, help="clip the shared colour scale at this value")
    g.add_argument("--title", default=None, help="title over the side-by-side plot [default: the metric]")
    add_entry_point_args(p)
    p.set_defaults(func=run)


@dataclass
class Opened:
    label: str
    ckpt: Any
    model: Any
    data: Any


def open_all(args: argparse.Namespace) -> list[Opened]:
    """Every checkpoint with its model and data; labels unique and file-name safe."""
    from landscape.checkpoint import open_checkpoint

    if len(args.checkpoints) < 2:
        raise ValueError("compare needs at least two checkpoints")
    if args.labels is not None and len(args.labels) != len(args.checkpoints):
        raise ValueError(f"{len(args.labels)} labels for {len(args.checkpoints)} checkpoints")
    opened = []
    for path in args.checkpoints:
        ckpt, model, data = open_checkpoint(
            path, model=args.model, data=args.data,
            model_kwargs=parse_assignments(args.model_arg, "--model-arg") if args.model_arg else None,
            data_kwargs=parse_assignments(args.data_arg, "--data-arg") if args.data_arg else None)
        opened.append(Opened("", ckpt, model, data))
    first = opened[0].ckpt
    for o in opened[1:]:
        if (o.ckpt.data_name, o.ckpt.data_kwargs) != (first.data_name, first.data_kwargs):
            raise ValueError(f"{o.ckpt.path} was trained on other data than {first.path}; compare needs the same data")
    labels = args.labels or [o.ckpt.optimizer.get("name") or Path(o.ckpt.path).stem for o in opened]
    if len(set(labels)) < len(labels):
        labels = [Path(o.ckpt.path).stem for o in opened]
    if len(set(labels)) < len(labels):
        labels = [f"{i}-{l}" for i, l in enumerate(labels)]
    for o, label in zip(opened, labels):
        o.label = label
    return opened


def _safe(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", label)


def landscape_section(args: argparse.Namespace, opened: list[Opened], stem: str, device: Any) -> dict[str, Any]:
    """2-D surfaces side by side and the interpolations; returns the summary section (files included)."""
    from landscape import distributed as D
    from landscape.landscapes.directions import checkpoint_vector, interpolation_direction, random_directions
    from landscape.landscapes.interpolation import barrier_heights
    from landscape.landscapes.surface import compute_surface

    x = A.resolve_axis(args.xrange, args.xpoints, (-1.0, 1.0), 51)
    y = A.resolve_axis(args.yrange or args.xrange, args.ypoints or args.xpoints, (-1.0, 1.0), 51)
    surfaces, section = [], {"checkpoints": [], "interpolations": [], "files": []}
    objs_of = {}
    for o in opened:
        objs = A.objectives(o.model, o.data, args, device)
        objs_of[o.label] = objs
        train = objs.get("train") or next(iter(objs.values()))
        sub = f"{stem}.{_safe(o.label)}"
        head = A.header(o.ckpt, args)
        request = {"checkpoint": head["checkpoint"]["sha256"], "seed": args.seed, "norm": args.norm,
                   "bias_bn": args.bias_bn, "params": args.params, "dtype": args.dtype}
        dirs = A.cached_directions(sub, request, lambda: random_directions(
            train, 2, seed=args.seed, norm=args.norm, bias_bn=args.bias_bn), args.restart)
        s = compute_surface(objs, dirs, [x, y], bn=args.bn, bn_source=objs.get("train"),
                            chunk_size=A.chunk_size(args), path=f"{sub}.npz", resume=not args.restart, header=head,
                            progress=not args.quiet)
        surfaces.append(s)
        section["checkpoints"].append({"label": o.label, **head["checkpoint"], "at_checkpoint": A.centre(s),
                                       "surface": f"{sub}.npz"})
        section["files"].append(f"{sub}.npz")

    curves, barriers = {}, {}
    if not args.no_interp:
        t = A.interpolation_axis(args.interp_range, args.interp_points)
        for a, b in zip(opened, opened[1:]):
            objs = objs_of[a.label]
            train = next(iter(objs.values()))
            name = f"{a.label} → {b.label}"
            sub = f"{stem}.interp-{_safe(a.label)}-{_safe(b.label)}"
            vb, sb = checkpoint_vector(train, b.ckpt.path)
            dirs = interpolation_direction(train, vb, source=sb)
            s = compute_surface(objs, dirs, [t], bn=args.bn, bn_source=objs.get("train"),
                                chunk_size=A.chunk_size(args), path=f"{sub}.npz", resume=not args.restart,
                                header=A.header(a.ckpt, args), progress=not args.quiet)
            barriers[name] = {split: barrier_heights(t, s[f"{split}_loss"]) for split in args.split}
            curves[name] = {split: s[f"{split}_loss"] for split in args.split}
            section["interpolations"].append({"from": a.label, "to": b.label, "distance": dirs.meta["distance"],
                                              "barriers": barriers.get(name), "surface": f"{sub}.npz"})
            section["files"].append(f"{sub}.npz")

    if D.is_main():
        from landscape.landscapes.interactive import compare_html
        from landscape.landscapes.plots import plot_interpolation, plot_side_by_side

        labels = [o.label for o in opened]
        surfaces[0][args.metric]  # a one-line error for an unknown metric
        section["files"] += map(str, plot_side_by_side(surfaces, labels, stem, args.format, metric=args.metric,
                                                       log=args.log, levels=args.levels, vmax=args.vmax,
                                                       title=args.title))
        if curves:
            section["files"] += map(str, plot_interpolation(t, curves, f"{stem}.interp", args.format,
                                                            barriers=barriers, log=args.log))
        if not args.no_html:
            section["files"].append(str(compare_html(surfaces, labels, f"{stem}.html", metric=args.metric,
                                                     log=args.log)))
    return section


def run(args: argparse.Namespace) -> int:
    from landscape import distributed as D
    from landscape.io import atomic_write_json

    opened = open_all(args)
    device = A.setup_device(args)
    stem = args.out or A.default_stem(opened[0].ckpt.path, "compare")
    summary: dict[str, Any] = {"landscapes": landscape_section(args, opened, stem, device)}
    if not D.is_main():
        return 0
    atomic_write_json(f"{stem}.json", summary)
    _print(summary)
    print(f"wrote {stem}.json " + " ".join(summary["landscapes"]["files"]))
    return 0


def _print(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

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
