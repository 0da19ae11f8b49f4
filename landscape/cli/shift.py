"""``landscape shift``: GA-SAM Fig. 1 — train loss, test loss and the train loss shifted by delta."""
from __future__ import annotations

import argparse

from landscape.cli import landscape_args as A
from landscape.cli.guards import add_nonfinite_flag, check_weights
from landscape.cli.common import add_entry_point_args, open_from_args


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "shift", help="GA-SAM Fig. 1: test loss vs the training loss shifted by delta = theta* - theta",
        description="Along w(t) = theta + t delta, from the checkpoint theta (a training minimum) to theta*, the "
                    "minimum fine-tuned on the test split, plot the train loss, the test loss and the train loss "
                    "shifted by delta, L_train(w - delta) + C with C = L_test(theta*) - L_train(theta). GA-SAM's "
                    "claim: near the minimum the test loss is close to the shifted train loss. theta* comes from "
                    "--finetuned, or from full-batch gradient descent on the test loss (eval mode).")
    p.add_argument("checkpoint", help="the training minimum theta")
    g = p.add_argument_group("test minimum")
    g.add_argument("--finetuned", metavar="CKPT", default=None, help="theta*: a checkpoint fine-tuned on the test set")
    g.add_argument("--finetune-steps", type=int, default=200, help="gradient steps on the test loss [default: 200]")
    g.add_argument("--finetune-lr", type=float, default=0.05, help="their step size [default: 0.05]")
    g.add_argument("--finetune-momentum", type=float, default=0.9, help="heavy-ball momentum [default: 0.9]")
    g = p.add_argument_group("grid")
    g.add_argument("--range", nargs=2, type=float, default=[-0.5, 1.5], metavar=("LO", "HI"),
                   help="range of t plotted [default: -0.5 1.5]; the train loss is also evaluated on [LO-1, LO)")
    g.add_argument("--per-unit", type=int, default=20, help="grid points per unit of t [default: 20]")
    A.add_evaluation_args(p, splits=False)
    A.add_output_args(p, html=False)
    add_entry_point_args(p)
    add_nonfinite_flag(p)
    p.set_defaults(func=run, split=["train", "test"])


def run(args: argparse.Namespace) -> int:
    from landscape import distributed as D
    from landscape.io import atomic_write_json
    from landscape.cli.guards import second_checkpoint
    from landscape.landscapes.directions import interpolation_direction
    from landscape.landscapes.interpolation import finetune, shift_axis, shifted_curves
    from landscape.landscapes.plots import plot_shift
    from landscape.landscapes.surface import compute_surface

    lo, hi = args.range
    t = shift_axis(lo, hi, args.per_unit)
    ckpt, model, data = open_from_args(args)
    check_weights(ckpt, args)
    device = A.setup_device(args)
    objs = A.objectives(model, data, args, device, ["train", "test"])
    stem = args.out or A.default_stem(ckpt.path, "shift")
    head = A.header(ckpt, args)

    def make():
        if args.finetuned:
            w_star, source = second_checkpoint(objs["test"], args.finetuned, args)
        else:
            w_star, losses = finetune(objs["test"], args.finetune_steps, args.finetune_lr, args.finetune_momentum,
                                      progress=not args.quiet)
            source = {"label": "test-fine-tuned", "finetune": {
                "split": "test", "steps": args.finetune_steps, "lr": args.finetune_lr,
                "momentum": args.finetune_momentum, "test_loss_before": losses[0], "test_loss_after": losses[-1]}}
        return interpolation_direction(objs["train"], w_star, source=source)

    request = {"checkpoint": head["checkpoint"]["sha256"], "finetuned": args.finetuned,
               "steps": args.finetune_steps, "lr": args.finetune_lr, "momentum": args.finetune_momentum,
               "params": args.params, "dtype": args.dtype, "subset": args.subset, "seed": args.seed}
    dirs = A.cached_directions(stem, request, make, args.restart)
    surface = compute_surface(objs, dirs, [t], bn=args.bn, bn_source=objs["train"], chunk_size=A.chunk_size(args),
                              path=f"{stem}.npz", resume=not args.restart, header=head, progress=not args.quiet)
    if not D.is_main():
        return 0
    curves = shifted_curves(t, surface["train_loss"], surface["test_loss"], args.per_unit, lo, hi)
    paths = [f"{stem}.npz", *map(str, plot_shift(curves, stem, args.format))]
    summary = {"checkpoint": head["checkpoint"], "delta_norm": dirs.meta["distance"],
               "theta_star": dirs.meta["sources"][0], "constant": curves["constant"],
               **{k: v for k, v in curves.items() if k.startswith("rms_")},
               "t": curves["t"], "train": curves["train"], "test": curves["test"], "shifted": curves["shifted"]}
    atomic_write_json(f"{stem}.json", summary)
    print(f"||delta|| = {summary['delta_norm']:.4g}, C = {curves['constant']:.4g}; RMS(test - shifted train) = "
          f"{curves['rms_test_vs_shifted']:.4g} vs RMS(test - train) = {curves['rms_test_vs_train']:.4g} "
          f"over t in [{lo}, {hi}]; with the best constant for each: {curves['rms_test_vs_shifted_best_constant']:.4g} "
          f"vs {curves['rms_test_vs_train_best_constant']:.4g}")
    print("wrote " + " ".join(paths) + f" {stem}.json")
    return 0
