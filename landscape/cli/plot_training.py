"""``landscape plot-training run.pt [more.pt ...]``: curvature during training, from ``--track`` rows."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot-training", help="lambda_max, trace and gradient norms over training steps (runs trained with --track)",
        description="Draw the rows that `landscape train --track` wrote beside each checkpoint (RUN.curvature.jsonl): "
                    "the top Hessian eigenvalue over steps with the optimizer's stability threshold (2/lr for "
                    "gradient descent, (2+2*beta)/lr with momentum), the trace, the gradient norm and the loss on the "
                    "tracked subset; several runs side by side. Writes STEM.png (and --format) and the interactive "
                    "STEM.html, and prints a summary per run.")
    p.add_argument("runs", nargs="+", metavar="RUN", help="checkpoints (run.pt) or their run.curvature.jsonl")
    p.add_argument("--labels", nargs="+", default=None, help="names in the plots [default: the file stems]")
    p.add_argument("--out", default=None, metavar="STEM", help="output stem [default: FIRST_RUN.training]")
    p.add_argument("--format", nargs="+", choices=["png", "pdf", "svg"], default=["png"],
                   help="static plot formats [default: png]")
    p.add_argument("--no-html", action="store_true", help="skip the interactive plotly HTML")
    p.add_argument("--title", default="curvature during training", help="title of the plots")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from landscape.report.training import load_runs, plot_training, summary, training_html

    runs = load_runs(args.runs, args.labels)
    stem = args.out if args.out is not None else str(Path(args.runs[0]).with_suffix("")).removesuffix(
        ".curvature") + ".training"
    paths = plot_training(runs, stem, args.format)
    if not args.no_html:
        paths.append(training_html(runs, f"{stem}.html", title=args.title))
    for label, rows in runs:
        s = summary(rows)
        ratio = "" if s["edge_ratio_max"] is None else (f", lambda_max / threshold max {s['edge_ratio_max']:.3f} "
                                                        f"last {s['edge_ratio_last']:.3f}")
        lam = "n/a" if s["lambda_max_last"] is None else (f"{s['lambda_max_first']:.4g} -> {s['lambda_max_last']:.4g} "
                                                          f"(max {s['lambda_max_max']:.4g})")
        print(f"{label}: {s['rows']} rows to step {s['last_step']}, lambda_max {lam}{ratio}")
    print("wrote " + " ".join(map(str, paths)))
    return 0


__all__ = ["add_parser", "run"]
