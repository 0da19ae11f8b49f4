"""The training configuration: every knob of ``landscape train``, stored in each checkpoint."""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any, Callable

from landscape.cli.ranges import Range


@dataclass
class TrainConfig:
    """One training run. ``epochs`` counts passes over the data unless ``steps`` is set."""

    model: str = "mlp"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    data: str = "mnist1d"
    data_kwargs: dict[str, Any] = field(default_factory=dict)
    optimizer: str = "sgd"
    base: str | None = None  # sgd | adamw for the sharpness-aware methods
    hparams: dict[str, Any] = field(default_factory=dict)  # the method's own (rho, ...)
    lr: float = 0.1
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 5e-4
    betas: tuple[float, float] = (0.9, 0.999)
    adam_eps: float = 1e-8
    epochs: int = 20
    steps: int | None = None
    batch_size: int = 128
    eval_batch_size: int = 2048
    schedule: str = "cosine"
    warmup_steps: int = 0
    min_lr_factor: float = 0.0
    milestones: tuple[float, ...] = (0.5, 0.75)
    gamma: float = 0.1
    label_smoothing: float = 0.0
    grad_clip: float | None = None
    accum_steps: int = 1
    amp: str = "auto"  # auto (bf16 on CUDA, off elsewhere; optimizers.precision) | none | bf16 | fp16
    device: str = "auto"
    seed: int = 0
    checkpoint_every: int = 0  # epochs between trajectory checkpoints (0: none)
    save_every_steps: int = 0  # resume points inside an epoch (0: epoch ends only)
    stop_train_acc: float | None = None  # stop once train accuracy reaches this (Jiang et al.)
    stop_train_loss: float | None = None  # stop once train loss falls to this
    log_steps: bool = False  # write one JSON line per step (loss, lr, optimizer metrics)
    compile: bool = False
    deterministic: bool = True

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["betas"] = list(self.betas)
        d["milestones"] = list(self.milestones)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], label: Callable[[str], str] = str) -> "TrainConfig":
        """The configuration of ``d``, :meth:`validate`-d (``label`` names an option in the messages)."""
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        d = dict(d)
        for key in ("betas", "milestones"):
            if key in d:
                if not isinstance(d[key], (list, tuple)):
                    raise ValueError(f"{label(key)} must be a list of numbers, got {d[key]!r}")
                d[key] = tuple(d[key])
        return cls(**d).validate(label)

    def validate(self, label: Callable[[str], str] = str) -> "TrainConfig":
        """Check every option's type and range and the method's hyper-parameters (by building the optimizer
        over one dummy parameter, so its own checks run too) before any work; a ``ValueError`` naming the
        option (``label(name)``, ``label("hparams.rho")`` for a hyper-parameter), the value and the accepted
        range otherwise. Returns ``self``."""
        from optimizers.schedules import SCHEDULES

        for name, (kind, rng, optional) in _RULES.items():
            _check_number(getattr(self, name), kind, rng, optional, label(name))
        for name in ("model", "data", "device"):
            if not isinstance(getattr(self, name), str) or not getattr(self, name):
                raise ValueError(f"{label(name)} must be a non-empty string, got {getattr(self, name)!r}")
        if self.device != "auto":
            import torch

            try:
                torch.device(self.device)
            except (RuntimeError, ValueError):
                raise ValueError(f"{label('device')} must be auto, cpu, cuda, cuda:N or mps, "
                                 f"got {self.device!r}") from None
        for name in ("model_kwargs", "data_kwargs", "hparams"):
            value = getattr(self, name)
            if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
                raise ValueError(f"{label(name)} must be a table of keyword arguments, got {value!r}")
        for name in ("nesterov", "log_steps", "compile", "deterministic"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{label(name)} must be true or false, got {getattr(self, name)!r}")
        for name, choices in (("schedule", SCHEDULES), ("amp", AMP), ("base", (None, "sgd", "adamw"))):
            if getattr(self, name) not in choices:
                known = ", ".join(str(c) for c in choices if c is not None)
                raise ValueError(f"{label(name)} must be one of {known}, got {getattr(self, name)!r}")
        if len(self.betas) != 2:
            raise ValueError(f"{label('betas')} must be two numbers, got {list(self.betas)!r}")
        for v in self.betas:
            _check_number(v, float, Range(0.0, hi=1.0, hi_open=True), False, label("betas"))
        for v in self.milestones:
            _check_number(v, float, Range(0.0, hi=1.0), False, label("milestones"))
        check_hparams(self.optimizer, self.hparams, lambda k: label(f"hparams.{k}"))
        self._build_optimizer_once()
        return self

    def _build_optimizer_once(self) -> None:
        """Run the optimizer's own constructor checks (ranges of its hyper-parameters, the base optimizer's
        lr/momentum/eps) on one dummy parameter, named as the trainer's are (ASAM warns on unnamed ones)."""
        import torch

        from optimizers import build_optimizer

        base = self.base or ("adamw" if self.optimizer == "adamw" else "sgd")
        try:
            build_optimizer(self.optimizer, [("weight", torch.nn.Parameter(torch.zeros(1)))], base=self.base,
                            base_kwargs=self.base_kwargs(base), max_grad_norm=self.grad_clip, **self.hparams)
        except (ValueError, TypeError, KeyError) as e:
            msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
            raise ValueError(f"optimizer {self.optimizer}: {' '.join(str(msg).split())}") from e

    def base_kwargs(self, base: str) -> dict[str, Any]:
        if base == "sgd":
            return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                    "weight_decay": self.weight_decay}
        return {"lr": self.lr, "betas": tuple(self.betas), "eps": self.adam_eps, "weight_decay": self.weight_decay}


AMP = ("auto", "none", "bf16", "fp16")

_RULES: dict[str, tuple[type, Range, bool]] = {
    # name: (int or float, accepted range, None allowed)
    "lr": (float, Range(0.0), False),
    "momentum": (float, Range(0.0, hi=1.0, hi_open=True), False),
    "weight_decay": (float, Range(0.0), False),
    "adam_eps": (float, Range(0.0), False),
    "epochs": (int, Range(1), False),
    "steps": (int, Range(1), True),
    "batch_size": (int, Range(1), False),
    "eval_batch_size": (int, Range(1), False),
    "warmup_steps": (int, Range(0), False),
    "min_lr_factor": (float, Range(0.0, hi=1.0), False),
    "gamma": (float, Range(0.0, lo_open=True), False),
    "label_smoothing": (float, Range(0.0, hi=1.0, hi_open=True), False),
    "grad_clip": (float, Range(0.0, lo_open=True), True),
    "accum_steps": (int, Range(1), False),
    "seed": (int, Range(0, hi=2**32, hi_open=True), False),
    "checkpoint_every": (int, Range(0), False),
    "save_every_steps": (int, Range(0), False),
    "stop_train_acc": (float, Range(0.0, hi=1.0), True),
    "stop_train_loss": (float, Range(0.0), True),
}
"""Numeric training options: type, accepted range, and whether None (unset) is allowed."""


def _check_number(value: Any, kind: type, rng: Range, optional: bool, name: str) -> None:
    """``value`` is an int (``kind`` int) or a real number (``kind`` float), finite, within ``rng``."""
    if value is None and optional:
        return
    what = f"{'an integer' if kind is int else 'a number'} {rng.text()}" + (" (or unset)" if optional else "")
    ok_type = isinstance(value, int) if kind is int else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not math.isfinite(value) or value not in rng:
        raise ValueError(f"{name} must be {what}, got {value!r}")


def check_hparams(method: str, hparams: dict[str, Any], label: Callable[[str], str] = str) -> None:
    """Each hyper-parameter of ``method`` has its default's type: true/false for a flag, an integer for an int,
    a finite number for a float (``inf`` only where the default is infinite or for the norm ``p``), text for a
    string; unknown names are an error. Ranges are the constructor's to check."""
    from optimizers import resolve_hparams, optimizer_hparams

    resolve_hparams(method, hparams)  # unknown method or name
    defaults = optimizer_hparams(method)
    for key, value in hparams.items():
        default, name = defaults[key], label(key)
        if isinstance(default, bool):
            if not isinstance(value, bool):
                raise ValueError(f"{name} must be true or false, got {value!r}")
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError(f"{name} must be text (default {default!r}), got {value!r}")
        elif isinstance(default, int) and not isinstance(value, bool) and isinstance(value, int):
            continue
        elif isinstance(default, (int, float)) or default is None:
            if value is None and default is None:
                continue
            kind = "an integer" if isinstance(default, int) else "a number"
            if isinstance(value, bool) or not isinstance(value, int if isinstance(default, int) else (int, float)):
                raise ValueError(f"{name} must be {kind} ({method}'s default is {default}), got {value!r}")
            infinite_ok = key == "p" or (isinstance(default, float) and math.isinf(default))
            if math.isnan(value) or (math.isinf(value) and not (infinite_ok and value > 0)):
                raise ValueError(f"{name} must be a finite {kind[2:] if kind.startswith('a ') else kind} "
                                 f"({method}'s default is {default}), got {value!r}")
