"""Fully connected network on the flattened input."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn

from landscape.models import register_model
from landscape.models.common import as_shape, check_dropout, check_positive, make_activation


@register_model("mlp")
class MLP(nn.Module):
    """``[Linear -> (BatchNorm1d) -> activation -> (Dropout)] x len(hidden) -> Linear``.

    The input ``(N, *input_shape)`` is flattened; ``hidden=[]`` gives a linear
    model. Weights keep PyTorch's default ``nn.Linear`` init.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        hidden: Sequence[int] = (128, 128),
        activation: str = "relu",
        dropout: float = 0.0,
        batchnorm: bool = False,
        bias: bool = True,
    ) -> None:
        super().__init__()
        shape = as_shape(input_shape, None, "mlp")
        check_positive("mlp", num_outputs=num_outputs, **{f"hidden[{i}]": h for i, h in enumerate(hidden)})
        dropout = check_dropout("mlp", dropout)
        layers: list[nn.Module] = [nn.Flatten()]
        width = math.prod(shape)
        for h in hidden:
            layers.append(nn.Linear(width, int(h), bias=bias))
            if batchnorm:
                layers.append(nn.BatchNorm1d(int(h)))
            layers.append(make_activation(activation))
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = int(h)
        layers.append(nn.Linear(width, num_outputs, bias=bias))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)
