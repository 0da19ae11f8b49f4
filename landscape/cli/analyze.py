"""``landscape analyze``: loss, accuracy and curvature of a checkpoint."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from landscape.cli.common import add_entry_point_args, loss_from_args, open_from_args
from landscape.cli.guards import add_nonfinite_flag, check_weights, is_stdout


def add_parser(sub: argparse._SubParsersAction) -> None:
    from landscape.analysis import add_arguments

    p = sub.add_parser(
        "analyze", help="measure loss, accuracy, curvature and sharpness of a checkpoint",
        description="Train/test loss and accuracy, generalization gap, top Hessian eigenvalues (Lanczos) with "
                    "residuals, Hessian trace (Hutch++), gradient norms, and optionally the spectral density and "
                    "the top Fisher eigenvalues; worst-case / adaptive sharpness and the surrogate gap, and optionally "
                    "average-case sharpness, GNR, local extrema counts, corruption robustness and PAC-Bayes flatness. "
                    "The model runs in eval mode; its weights are never changed.")
    p.add_argument("checkpoint", help="a checkpoint written by `landscape train` (or a state_dict with --model/--data)")
    p.add_argument("--json", type=Path, default=None, metavar="PATH",
                   help="write the report as JSON (atomically, after every measure; a re-run resumes); "
                        "'-': print it to standard output instead of the table")
    p.add_argument("--html", type=Path, default=None, metavar="PATH",
                   help="also write a self-contained HTML report: the measures, the top eigenvalues, the spectral "
                        "density (--density is switched on), gradient norms per layer and 1-D / 2-D loss "
                        "landscapes along random filter-normalized directions; the analysis JSON (unless --json) "
                        "and the surfaces go next to it as PATH-without-.html.analysis.json / .1d.npz / .2d.npz, "
                        "and a re-run resumes them")
    p.add_argument("--restart", action="store_true", help="recompute every measure even if --json holds it")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    add_entry_point_args(p)
    add_nonfinite_flag(p)
    add_arguments(p)
    g = p.add_argument_group("landscapes of the --html report (train and test loss along random directions)")
    g.add_argument("--landscape-points", type=int, default=21, metavar="N",
                   help="2-D grid of N x N points (0: none) [default: 21]")
    g.add_argument("--landscape-curve-points", type=int, default=41, metavar="N",
                   help="points of the 1-D curve (0: none) [default: 41]")
    g.add_argument("--landscape-range", type=float, default=1.0, metavar="R",
                   help="coordinates from -R to R, in units of the filter-normalized directions [default: 1]")
    g.add_argument("--landscape-subset", type=int, default=2000, metavar="N",
                   help="a fixed random subset of N samples of each split (seeded by --seed; 0: all) "
                        "[default: 2000]")
    g.add_argument("--landscape-log", action="store_true", help="log-scale loss in the landscape plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from landscape import distributed as D
    from landscape.analysis import analyze, file_digest, table

    if args.html is not None:
        if args.landscape_range <= 0:
            raise ValueError(f"--landscape-range must be > 0, got {args.landscape_range}")
        for flag in ("landscape_points", "landscape_curve_points", "landscape_subset"):
            if getattr(args, flag) < 0:
                raise ValueError(f"--{flag.replace('_', '-')} must be >= 0, got {getattr(args, flag)}")
    ckpt, model, data = open_from_args(args)
    check_weights(ckpt, args)
    D.init_from_env(D.local_device(args.device).type)
    header = {"checkpoint": {"path": str(ckpt.path), "sha256": file_digest(ckpt.path)},
              "model": {"name": ckpt.model_name, "kwargs": ckpt.model_kwargs},
              "data": {"name": ckpt.data_name, "kwargs": ckpt.data_kwargs}}
    to_stdout = is_stdout(args.json)
    stem = None
    if args.html is not None:
        stem = str(args.html.with_suffix("") if args.html.suffix == ".html" else args.html)
        args.density = True
        if args.json is None:
            args.json = Path(f"{stem}.analysis.json")
    json_path = None if to_stdout else args.json
    report = analyze(model, data, args, header=header, json_path=json_path, resume=not args.restart,
                     progress=not args.quiet, loss=loss_from_args(args))
    written = [] if json_path is None else [str(json_path)]
    if stem is not None:
        report = {**report, "optimizer": ckpt.optimizer}
        written += report_html(args, ckpt, model, data, report, stem)
    if D.is_main():
        if to_stdout:  # standard output holds the JSON only
            from landscape.io import _json_default

            print(json.dumps(report, indent=2, sort_keys=True, default=_json_default))
            if written:
                print("wrote " + " ".join(written), file=sys.stderr)
            return 0
        from rich.console import Console

        Console().print(table(report, title=str(ckpt.path)))
        if written:
            print("wrote " + " ".join(written))
    return 0


def report_html(args: argparse.Namespace, ckpt: Any, model: Any, data: Any, report: dict[str, Any],
                stem: str) -> list[str]:
    """The 1-D and 2-D surfaces (``STEM.1d.npz``, ``STEM.2d.npz``, resumable) and the HTML report; the paths
    written (on the main rank)."""
    from landscape import distributed as D
    from landscape.cli import landscape_args as A
    from landscape.report import html_report

    largs = argparse.Namespace(subset=args.landscape_subset or None, seed=args.seed, params=args.params,
                               batch_size=args.batch_size, dtype=args.dtype, split=A.data_splits(data),
                               loss=args.loss)
    device = A.setup_device(args)
    objs = A.objectives(model, data, largs, device)
    head = A.header(ckpt, largs)
    common = dict(seed=args.seed, params=args.params, dtype=args.dtype, restart=args.restart, progress=not args.quiet)
    r = args.landscape_range
    surfaces: dict[str, Any] = {}
    if args.landscape_curve_points > 0:
        t = A.resolve_axis([-r, r], args.landscape_curve_points, (-r, r), 41)
        surfaces["1d"] = A.random_surface(objs, head, f"{stem}.1d", [t], **common)
    if args.landscape_points > 0:
        x = A.resolve_axis([-r, r], args.landscape_points, (-r, r), 21)
        surfaces["2d"] = A.random_surface(objs, head, f"{stem}.2d", [x, x], **common)
    if not D.is_main():
        return []
    from landscape.report.training import has_rows, load_runs

    label = ckpt.optimizer.get("name") or Path(ckpt.path).stem
    training = load_runs([ckpt.path], [label]) if ckpt.path and has_rows(ckpt.path) else []  # trained with --track
    html = html_report([report], args.html, labels=[label],
                       curves=[surfaces["1d"]] if "1d" in surfaces else [],
                       surfaces=[surfaces["2d"]] if "2d" in surfaces else [], log=args.landscape_log,
                       title=f"analysis of {ckpt.path}", training=training)
    return [f"{stem}.{k}.npz" for k in surfaces] + [str(html)]
