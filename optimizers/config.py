"""The training configuration: every knob of ``landscape train``, stored in each checkpoint."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any


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
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown training option(s): {', '.join(unknown)}")
        d = dict(d)
        if "betas" in d:
            d["betas"] = tuple(d["betas"])
        if "milestones" in d:
            d["milestones"] = tuple(d["milestones"])
        return cls(**d)

    def base_kwargs(self, base: str) -> dict[str, Any]:
        if base == "sgd":
            return {"lr": self.lr, "momentum": self.momentum, "nesterov": self.nesterov,
                    "weight_decay": self.weight_decay}
        return {"lr": self.lr, "betas": tuple(self.betas), "eps": self.adam_eps, "weight_decay": self.weight_decay}
