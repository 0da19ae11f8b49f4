"""``landscape plot1d``: a 1-D loss curve through a checkpoint (random, eigen, PCA or interpolation)."""
from __future__ import annotations

import argparse

from landscape.cli import landscape_args as A
from landscape.cli.guards import add_nonfinite_flag
from landscape.cli.common import add_entry_point_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "plot1d", help="1-D loss landscape: along a direction, or the interpolation to another checkpoint",
        description="Evaluate train/test loss and accuracy at w0 + t d along a random filter-normalized, top "
                    "Hessian-eigenvector or first trajectory-PCA direction, or along the interpolation to --to "
                    "(then the barrier heights are printed). Resumable like plot2d.")
    p.add_argument("checkpoint", help="a checkpoint written by `landscape train` (or a state_dict with --model/--data)")
    A.add_direction_args(p, 1)
    A.add_grid_args(p, 1)
    A.add_evaluation_args(p)
    A.add_output_args(p)
    add_entry_point_args(p)
    add_nonfinite_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from landscape import distributed as D
    from landscape.landscapes.interpolation import barrier_heights
    from landscape.landscapes.plots import plot_curves

    A.resolve_directions(args, 1)
    surface, stem = A.compute(args, 1, "plot1d")
    if not D.is_main():
        return 0
    paths = [f"{stem}.npz"]
    paths += plot_curves(surface, stem, args.format, log=args.log)
    if not args.no_html:
        from landscape.landscapes.interactive import surface_html

        paths.append(surface_html(surface, f"{stem}.html", log=args.log))
    for note in A.nonfinite_notes(surface):
        print(note)
    centre = A.centre(surface)
    if centre:
        print("at the checkpoint: " + ", ".join(f"{k} {v:.6g}" for k, v in centre.items()))
    t = surface.axes[0]
    if surface.meta["directions"]["kind"] == "interpolation" and (t == 0).any() and (t == 1).any():
        for split in args.split:
            b = barrier_heights(t, surface[f"{split}_loss"])
            print(f"{split} loss barrier {b['barrier']:.6g} (at t={b['t_max']:.3g}), above the straight line "
                  f"{b['barrier_linear']:.6g} (at t={b['t_max_linear']:.3g})")
    print("wrote " + " ".join(map(str, paths)))
    return 0
