"""``landscape plot2d``: a 2-D loss surface around a checkpoint, plotted."""
from __future__ import annotations

import argparse

from landscape.cli import landscape_args as A
from landscape.cli.guards import add_nonfinite_flag
from landscape.cli.common import add_entry_point_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot2d", help="2-D loss landscape around a checkpoint (contours, 3-D surface, interactive HTML)",
        description="Evaluate train/test loss and accuracy on a grid w0 + a d1 + b d2 (random filter-normalized, "
                    "Hessian-eigenvector, trajectory-PCA or three-checkpoint-plane directions), batched through "
                    "vmap; the result file is written as it goes and a re-run resumes. Plots: contour lines, "
                    "filled contours, 3-D surface (PNG/PDF) and a self-contained plotly HTML.")
    p.add_argument("checkpoint", help="a checkpoint written by `landscape train` (or a state_dict with --model/--data)")
    A.add_direction_args(p, 2)
    A.add_grid_args(p, 2)
    A.add_evaluation_args(p)
    A.add_output_args(p)
    g = p.add_argument_group("plots")
    g.add_argument("--plots", nargs="+", choices=["contour", "filled", "surface"],
                   default=["contour", "filled", "surface"], help="static plots to draw [default: all three]")
    g.add_argument("--metric", default=None, help="what to plot: train_loss, test_loss, train_acc, ... "
                                                  "[default: the first split's loss]")
    g.add_argument("--levels", type=int, default=30, help="contour levels [default: 30]")
    g.add_argument("--vmax", type=float, default=None, help="clip the colour scale at this value")
    add_entry_point_args(p)
    add_nonfinite_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from landscape import distributed as D
    from landscape.landscapes.plots import plot_2d

    A.resolve_directions(args, 2)
    surface, stem = A.compute(args, 2, "plot2d")
    if not D.is_main():
        return 0
    metric = args.metric or f"{args.split[0]}_loss"
    surface[metric]  # a one-line error for an unknown metric
    paths = [f"{stem}.npz"]
    paths += plot_2d(surface, stem, args.format, kinds=args.plots, metric=metric, log=args.log, levels=args.levels,
                     vmax=args.vmax)
    if not args.no_html:
        from landscape.landscapes.interactive import surface_html

        paths.append(surface_html(surface, f"{stem}.html", metric=metric, log=args.log))
    for note in A.nonfinite_notes(surface):
        print(note)
    centre = A.centre(surface)
    if centre:
        print("at the checkpoint: " + ", ".join(f"{k} {v:.6g}" for k, v in centre.items()))
    print("wrote " + " ".join(map(str, paths)))
    return 0
