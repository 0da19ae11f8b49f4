"""``landscape demo``: the main job on the embedded default (MNIST-1D)."""
from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("demo", help="train and analyze on the embedded default (MNIST-1D)",
                       description="Train an MLP on MNIST-1D (generated locally, nothing downloaded) and write "
                                   "the checkpoint(s) under --out-dir. Re-running resumes.")
    p.add_argument("--out-dir", type=Path, default=Path("runs/demo"), help="where to write everything")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--quiet", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from landscape.cli.train import _summary
    from landscape.checkpoint import load_checkpoint
    from optimizers.config import TrainConfig
    from optimizers.trainer import Trainer, run_paths

    config = TrainConfig(model="mlp", model_kwargs={"hidden": [100, 100]}, data="mnist1d", optimizer="sgd",
                         lr=0.05, epochs=args.epochs, batch_size=100, weight_decay=5e-4, seed=0)
    out = args.out_dir / "sgd.pt"
    if run_paths(out)["out"].exists() and load_checkpoint(out).train_config == config.to_dict():
        ckpt = load_checkpoint(out)
    else:
        ckpt = Trainer(config, out, progress=not args.quiet).run()
    print(f"sgd: {_summary(ckpt.metrics)}  -> {out}")
    return 0
