"""Wide ResNet WRN-depth-k (Zagoruyko & Komodakis 2016) with pre-activation blocks."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.models import register_model
from landscape.models.common import as_shape, check_dropout, check_positive, init_conv_bn_linear


class WideBlock(nn.Module):
    """``conv(dropout(relu(bn(conv(relu(bn(x))))))) + shortcut``.

    When the shape changes the shortcut is a 1x1 convolution of the
    pre-activated input ``relu(bn(x))``, as in the reference implementation.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut: nn.Module | None = None
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pre = F.relu(self.bn1(x))
        out = self.conv1(pre)
        out = self.conv2(self.dropout(F.relu(self.bn2(out))))
        return out + (x if self.shortcut is None else self.shortcut(pre))


@register_model("wrn")
class WideResNet(nn.Module):
    """WRN-``depth``-``widen_factor``: 3x3 stem (16) -> 3 groups of ``(depth - 4) / 6`` blocks
    with widths 16k/32k/64k (strides 1/2/2) -> BN -> ReLU -> global average pool -> Linear.

    WRN-28-10 has 36.5M parameters for 10 classes. ``dropout`` is applied
    between the two convolutions of every block (the paper uses 0.3 on CIFAR).
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        depth: int = 28,
        widen_factor: int = 10,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        in_channels = as_shape(input_shape, (3,), "wrn")[0]
        check_positive("wrn", num_outputs=num_outputs, widen_factor=widen_factor)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"wrn: depth must be 6n + 4 with n >= 1, got {depth}")
        dropout = check_dropout("wrn", dropout)
        n = (depth - 4) // 6
        widths = [16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.stem = nn.Conv2d(in_channels, 16, 3, padding=1, bias=False)
        blocks: list[nn.Module] = []
        width = 16
        for group, out_width in enumerate(widths):
            for b in range(n):
                stride = 2 if group > 0 and b == 0 else 1
                blocks.append(WideBlock(width, out_width, stride, dropout))
                width = out_width
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_outputs)
        init_conv_bn_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn(self.blocks(self.stem(x))))
        return self.fc(self.pool(out).flatten(1))
