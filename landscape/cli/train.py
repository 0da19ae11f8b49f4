"""``landscape train``: train one model with any optimizer of the family."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from landscape.cli.common import parse_assignments, parse_value

# TrainConfig fields set by dedicated flags below (dest == field name).
_CONFIG_FLAGS = {
    "lr": (float, "base learning rate"),
    "momentum": (float, "SGD momentum"),
    "weight_decay": (float, "decoupled (AdamW) or L2 (SGD) weight decay"),
    "epochs": (int, "passes over the training data"),
    "steps": (int, "optimizer steps (overrides --epochs)"),
    "batch_size": (int, "global batch size (split over DDP ranks and --accum-steps)"),
    "eval_batch_size": (int, "batch size of the per-epoch evaluation"),
    "schedule": (str, "lr schedule: constant, cosine, step, linear"),
    "warmup_steps": (int, "linear warm-up steps"),
    "min_lr_factor": (float, "final lr / base lr for cosine and linear"),
    "gamma": (float, "step schedule decay factor"),
    "label_smoothing": (float, "cross-entropy label smoothing"),
    "grad_clip": (float, "clip the final update gradient to this global L2 norm"),
    "accum_steps": (int, "gradient-accumulation micro-batches per step"),
    "amp": (str, "auto (bf16 on CUDA; float32 for ga_sam, gnr, layer_sam, multistep_defense), none, bf16, fp16"),
    "device": (str, "auto (cuda > mps > cpu), cpu, cuda (this rank's GPU), cuda:1, mps"),
    "seed": (int, "training seed (init, data order, augmentation, dropout)"),
    "checkpoint_every": (int, "save a trajectory checkpoint every N epochs (0: never)"),
    "save_every_steps": (int, "also save the resume state every N steps"),
    "stop_train_acc": (float, "stop once train accuracy reaches this"),
    "stop_train_loss": (float, "stop once train loss falls to this"),
}


def add_parser(sub: argparse._SubParsersAction) -> None:
    from optimizers import OPTIMIZERS, available_optimizers, optimizer_hparams

    p = sub.add_parser("train", help="train a model and write a checkpoint",
                       description="Train a model with any optimizer of the sharpness-aware family. "
                                   "Re-running the same command resumes after a kill.")
    p.add_argument("--out", required=True, type=Path, help="checkpoint path, e.g. runs/sgd.pt")
    p.add_argument("--config", type=Path, help="TOML file of training options (flags override it)")
    p.add_argument("--model", default=None, help="model name (mlp, cnn, resnet20, ...) or pkg.module:factory "
                                                  "[default: mlp]")
    p.add_argument("--model-arg", action="append", metavar="KEY=VALUE", help="model keyword argument (JSON value)")
    p.add_argument("--data", default=None, help="dataset name (mnist1d, digits, ...) or pkg.module:factory "
                                                 "[default: mnist1d]")
    p.add_argument("--data-arg", action="append", metavar="KEY=VALUE", help="dataset keyword argument (JSON value)")
    p.add_argument("--optimizer", default=None, choices=available_optimizers(), help="training method [default: sgd]")
    p.add_argument("--base", default=None, choices=["sgd", "adamw"],
                   help="base optimizer of a sharpness-aware method [default: sgd]")
    p.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                   help="Nesterov momentum [default: off]")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                   help="torch.compile the model [default: off]")
    p.add_argument("--log-steps", action=argparse.BooleanOptionalAction, default=None,
                   help="write a JSON line per step [default: off]")
    p.add_argument("--restart", action="store_true", help="ignore a resume state and an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from optimizers.config import TrainConfig

    defaults = TrainConfig().to_dict()
    for name, (kind, text) in _CONFIG_FLAGS.items():
        p.add_argument(f"--{name.replace('_', '-')}", dest=name, type=kind, default=None,
                       help=f"{text} [default: {defaults[name]}]")
    g = p.add_argument_group("method hyper-parameters (each applies to the methods that take it)")
    seen: dict[str, list[str]] = {}
    for method in sorted(OPTIMIZERS):
        for hp in optimizer_hparams(method):
            seen.setdefault(hp, []).append(method)
    for hp, methods in sorted(seen.items()):
        if hp in _CONFIG_FLAGS or hp in {"model", "data", "optimizer", "base", "nesterov", "compile", "config"}:
            raise RuntimeError(f"optimizer hyper-parameter {hp!r} collides with a training flag")
        g.add_argument(f"--{hp.replace('_', '-')}", dest=f"hp_{hp}", type=parse_value, default=None,
                       metavar="V", help=f"({', '.join(methods)})")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace) -> "TrainConfig":  # noqa: F821
    from optimizers.config import TrainConfig

    values: dict[str, Any] = {}
    if args.config is not None:
        values.update(_read_toml(args.config))
    for key in ("model", "data", "optimizer", "base", "nesterov", "compile", "log_steps", *_CONFIG_FLAGS):
        v = getattr(args, key)
        if v is not None:
            values[key] = v
    if args.model_arg:
        values["model_kwargs"] = {**values.get("model_kwargs", {}), **parse_assignments(args.model_arg, "--model-arg")}
    if args.data_arg:
        values["data_kwargs"] = {**values.get("data_kwargs", {}), **parse_assignments(args.data_arg, "--data-arg")}
    hps = {k[3:]: v for k, v in vars(args).items() if k.startswith("hp_") and v is not None}
    if hps:
        values["hparams"] = {**values.get("hparams", {}), **hps}
    config = TrainConfig.from_dict(values)
    from optimizers import resolve_hparams

    resolve_hparams(config.optimizer, config.hparams)  # unknown hyper-parameters fail before training
    return config


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise ValueError(f"{path}: invalid TOML ({e})") from e


def run(args: argparse.Namespace) -> int:
    from landscape import distributed as D
    from landscape.checkpoint import load_checkpoint
    from optimizers.trainer import Trainer, run_paths

    config = config_from_args(args)
    paths = run_paths(args.out)
    if args.restart:
        for key in ("resume", "out"):
            paths[key].unlink(missing_ok=True)
    elif paths["out"].exists():
        done = load_checkpoint(paths["out"])
        if done.train_config != config.to_dict():
            raise ValueError(f"{paths['out']} exists from a different configuration; pass --restart to overwrite")
        print(f"{paths['out']}: already trained ({_summary(done.metrics)})")
        return 0
    ckpt = Trainer(config, args.out, progress=not args.quiet).run()
    if D.is_main():
        print(f"wrote {paths['out']}: {_summary(ckpt.metrics)}")
    return 0


def _summary(m: dict[str, Any]) -> str:
    def f(key: str) -> str:
        v = m.get(key)
        return "n/a" if v is None else f"{v:.4f}"

    return (f"train loss {f('train_loss')} acc {f('train_acc')} | test loss {f('test_loss')} "
            f"acc {f('test_acc')} | gap {f('gen_gap')}")


__all__ = ["add_parser", "config_from_args", "run"]
