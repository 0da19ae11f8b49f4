"""Small helpers shared by the built-in models: argument checks and inits."""
from __future__ import annotations

from collections.abc import Sequence

import torch.nn as nn

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh, "gelu": nn.GELU}


def as_shape(input_shape: Sequence[int], ndims: Sequence[int] | None, model: str) -> tuple[int, ...]:
    """``input_shape`` as a tuple of positive ints with one of ``ndims`` entries (``None``: any >= 1)."""
    shape = tuple(int(s) for s in input_shape)
    ok_len = len(shape) >= 1 if ndims is None else len(shape) in ndims
    if not ok_len or any(s <= 0 for s in shape):
        want = "1 or more" if ndims is None else " or ".join(str(n) for n in ndims)
        raise ValueError(f"{model}: input_shape must have {want} positive entries, got {list(input_shape)}")
    return shape


def check_positive(model: str, **values: int) -> None:
    """Raise ``ValueError`` unless every given integer is >= 1."""
    for name, value in values.items():
        if int(value) < 1:
            raise ValueError(f"{model}: {name} must be >= 1, got {value}")


def check_dropout(model: str, p: float) -> float:
    """Return ``p`` as float, raising ``ValueError`` outside ``[0, 1)``."""
    if not 0.0 <= float(p) < 1.0:
        raise ValueError(f"{model}: dropout must be in [0, 1), got {p}")
    return float(p)


def make_activation(name: str) -> nn.Module:
    """``nn.Module`` for an activation name (``relu``, ``tanh``, ``gelu``)."""
    if name not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {sorted(ACTIVATIONS)}, got {name!r}")
    return ACTIVATIONS[name]()


def init_conv_bn_linear(module: nn.Module) -> None:
    """He init for convolutions (fan-out, ReLU gain), unit/zero batch norms, zero linear biases.

    Linear weights keep PyTorch's default (Kaiming-uniform with a=sqrt(5)).
    """
    for m in module.modules():
        if isinstance(m, (nn.Conv1d, nn.Conv2d)):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)
