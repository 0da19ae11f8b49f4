"""``landscape train``: train one model with any optimizer of the family."""
from __future__ import annotations

import argparse
import json
import os
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
    "amp": (str, "auto (bf16 on CUDA; float32 for {full_precision}), none, bf16, fp16"),
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
    p.add_argument("--track", nargs="*", metavar="KEY=VALUE", default=None,
                   help="track the curvature during training: every N steps, on a fixed subset of the training "
                        "data, log lambda_max (warm-started Lanczos), gradient norms and strengths, optionally the "
                        "trace, to OUT_STEM.curvature.jsonl (`landscape plot-training` draws it). Options: every=50, "
                        "budget=0.1 (most share of the wall time; widens the interval), subset=512, top_k=1, "
                        "trace_samples=0, sharpness_rho=null, grad_batch=null, tol=1e-3, warm=true, seed=0, "
                        "dtype=float64 "
                        "(see optimizers.tracker.TrackConfig); training is unchanged by it")
    p.add_argument("--restart", action="store_true", help="ignore a resume state and an existing --out")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    from optimizers.config import TrainConfig
    from optimizers.precision import FULL_PRECISION

    defaults = TrainConfig().to_dict()
    for name, (kind, text) in _CONFIG_FLAGS.items():
        if name == "amp":  # the methods amp auto trains in float32, from the code's own table
            text = text.format(full_precision=", ".join(sorted(FULL_PRECISION)))
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
        g.add_argument(f"--{hp.replace('_', '-')}", dest=f"hp_{hp}", type=hparam_value, default=None,
                       metavar="V", help=hparam_help(hp, methods))
    p.set_defaults(func=run)


HPARAM_HELP = {
    "rho": "perturbation radius",
    "p": "norm of the perturbation ball, > 1: 2 or inf in the papers",
    "normalization": "operator T of the ball (landscape.geometry): none, element, filter, layer, layer_rms, "
                     "gradient, ...",
    "eta": "eta added to T (ASAM's |w| + eta)",
    "exclude": "biases and norm layers: none, unscaled (by T), unperturbed",
    "exempt": "which tensors 'exclude' applies to: bias (ASAM's rule: tensors named bias) or 1d (every 1-D tensor)",
    "grouping": "ga_sam: a layer of T is each tensor (tensor) or each module, weight and bias together (module)",
    "lets_hessian": "lets: the Hessian approximation of eq. 5, diag (diag(g*g), the default) or outer (g g^T)",
    "sync_perturbation": "all-reduce the ascent gradient under DDP (true/false)",
    "alpha": "gsam/asam_ascent: ascent coefficient on g_perp; looksam: weight of the reused sharpness direction; "
             "gnr: weight of the gradient-norm penalty",
    "rho_max": "radius at the largest lr of the schedule",
    "rho_min": "radius at the smallest lr of the schedule",
    "ascent_steps": "ascent steps K of the perturbation",
    "step_size": "ascent step size (null: 1.5 rho / K)",
    "single_step": "the single-step ablation (true/false)",
    "start_epoch": "first epoch with perturbations",
    "beta_lr": "Adam lr of the learned log-radius beta = log rho",
    "beta_lr_decay": "per-step decay factor of beta_lr",
    "val_fraction": "fraction of the training set held out for validation batches (0: draw them from all of it)",
    "c_start": "threshold c_t at the first step (SAM when ||g||^2 >= mu + c_t sigma)",
    "c_end": "threshold c_t at the last step",
    "ema_decay": "decay of the running mean and variance of ||g||^2",
    "swp_prob": "probability that a tensor is perturbed (stochastic weight perturbation)",
    "sds_fraction": "fraction of the batch kept for the second pass (sharpness-sensitive data selection)",
    "prob": "probability of a SAM step (the final one for linear and cosine schedules)",
    "prob_start": "probability of a SAM step at the start (linear and cosine schedules)",
    "prob_schedule": "schedule of the SAM probability: constant, linear, cosine",
    "k": "period of the SAM steps",
    "per_tensor": "norms per parameter tensor instead of global (true/false)",
    "hvp": "Hessian-vector products: exact (double backward), forward or central (finite differences)",
    "fd_radius": "radius of the finite-difference HVP",
    "gnr_fraction": "fraction of the steps that are GNR steps",
    "oracle": "the loss term: loss, weight_decay (plus an L2 term) or sam",
    "oracle_decay": "L2 coefficient of the weight_decay oracle",
    "oracle_rho": "radius of the sam oracle",
}
"""What each method hyper-parameter (a ``--NAME`` flag of ``train``) means."""


def hparam_value(text: str) -> Any:
    """A hyper-parameter's value: JSON (``0.05``, ``true``, ``null``), ``inf``/``nan`` as floats, else text."""
    if text.strip().lower() in ("inf", "+inf", "-inf", "infinity", "+infinity", "-infinity", "nan"):
        return float(text)
    return parse_value(text)


hparam_value.__name__ = "value"
hparam_value.checked = True  # type: ignore[attr-defined]  # by TrainConfig.validate, per method (p may be inf)


def hparam_help(hp: str, methods: list[str]) -> str:
    """``--help`` text of hyper-parameter ``hp``: its meaning and its default for each method taking it."""
    from optimizers import optimizer_hparams

    by_default: dict[str, list[str]] = {}
    for m in methods:
        by_default.setdefault(json.dumps(optimizer_hparams(m)[hp]), []).append(m)
    defaults = "; ".join(f"{d} for {', '.join(ms)}" for d, ms in by_default.items())
    return f"{HPARAM_HELP.get(hp, hp)} [default: {defaults}]"


def config_from_args(args: argparse.Namespace) -> "TrainConfig":  # noqa: F821
    """The configuration of ``--config`` updated by the flags, validated: a bad value is a one-line error
    naming its flag (``--epochs``) or its place in the TOML file (``epochs in run.toml``)."""
    from optimizers.config import TrainConfig

    values: dict[str, Any] = {}
    flags: set[str] = set()  # options set by a flag (hyper-parameters as "hparams.NAME")
    if args.config is not None:
        values.update(_read_toml(args.config))
    for key in ("model", "data", "optimizer", "base", "nesterov", "compile", "log_steps", *_CONFIG_FLAGS):
        v = getattr(args, key)
        if v is not None:
            values[key] = v
            flags.add(key)
    if args.model_arg:
        values["model_kwargs"] = {**values.get("model_kwargs", {}), **parse_assignments(args.model_arg, "--model-arg")}
    if args.data_arg:
        values["data_kwargs"] = {**values.get("data_kwargs", {}), **parse_assignments(args.data_arg, "--data-arg")}
    hps = {k[3:]: v for k, v in vars(args).items() if k.startswith("hp_") and v is not None}
    if hps:
        if not isinstance(values.get("hparams", {}), dict):
            raise ValueError(f"hparams in {args.config} must be a table ([hparams]), got {values['hparams']!r}")
        values["hparams"] = {**values.get("hparams", {}), **hps}
        flags.update(f"hparams.{k}" for k in hps)

    def label(name: str) -> str:
        if name in flags:
            return "--" + name.removeprefix("hparams.").replace("_", "-")
        return f"{name} in {args.config}" if args.config is not None else name

    return TrainConfig.from_dict(values, label=label)  # unknown hyper-parameters fail before training


def track_from_args(args: argparse.Namespace) -> "TrackConfig | None":  # noqa: F821
    """The ``--track KEY=VALUE ...`` options (``--track`` alone: the defaults), or None."""
    if args.track is None:
        return None
    from optimizers.tracker import TrackConfig

    return TrackConfig.from_dict(parse_assignments(args.track, "--track"))


def _read_toml(path: Path) -> dict[str, Any]:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover
        import tomli as tomllib
    if path.is_dir():
        raise ValueError(f"--config {path} is a directory, not a TOML file")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except FileNotFoundError:
        raise ValueError(f"--config {path}: no such file") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"{path}: invalid TOML ({e})") from e


def run(args: argparse.Namespace) -> int:
    from landscape import distributed as D
    from landscape.checkpoint import load_checkpoint
    from optimizers.trainer import Trainer, run_paths

    config = config_from_args(args)
    track = track_from_args(args)
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
    elif D.is_main() and os.environ.get("RANK", "0") == "0":
        where = _resume_point(paths["resume"], config.to_dict())
        if where:
            print(f"resuming from {where} ({paths['resume']})", flush=True)
    ckpt = Trainer(config, args.out, progress=not args.quiet, track=track).run()
    if D.is_main():
        print(f"wrote {paths['out']}: {_summary(ckpt.metrics)}")
        if "curvature_tracking" in ckpt.metrics:
            from optimizers.tracker import describe

            print(f"{describe(ckpt.metrics['curvature_tracking'])}; rows in {paths['curvature']}")
    return 0


def _resume_point(path: Path, config: dict[str, Any]) -> str | None:
    """``epoch N, step S`` (N counted from 1, as the progress bar does; S steps done) of the resume state at
    ``path`` if it belongs to ``config`` (read memory-mapped:
    the tensors stay on disk), else None (no file, or one the trainer will refuse with its own message)."""
    import torch

    if not path.is_file():
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # the trainer reports an unreadable resume state
        return None
    if not isinstance(state, dict) or state.get("config") != config:
        return None
    epoch, step = state.get("epoch"), state.get("step")
    return f"epoch {epoch + 1}, step {step}" if isinstance(epoch, int) and isinstance(step, int) else None


def _summary(m: dict[str, Any]) -> str:
    def f(key: str) -> str:
        v = m.get(key)
        return "n/a" if v is None else f"{v:.4f}"

    return (f"train loss {f('train_loss')} acc {f('train_acc')} | test loss {f('test_loss')} "
            f"acc {f('test_acc')} | gap {f('gen_gap')}")


__all__ = ["add_parser", "config_from_args", "run", "track_from_args"]
