"""CIFAR-style ResNets: ``resnet20``/``resnet56`` (He et al. 2016, Sec. 4.2) and the CIFAR ``resnet18``."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.models import register_model
from landscape.models.common import as_shape, check_positive, init_conv_bn_linear


class PadShortcut(nn.Module):
    """Option-A shortcut: subsample by ``stride`` and zero-pad the extra channels (parameter free)."""

    def __init__(self, in_channels: int, out_channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        extra = out_channels - in_channels
        self.pad = (extra // 2, extra - extra // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride > 1:
            x = x[:, :, :: self.stride, :: self.stride]
        return F.pad(x, (0, 0, 0, 0, *self.pad))


def conv_bn_shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Sequential:
    """Option-B shortcut: 1x1 convolution with stride, then batch norm."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
    )


class BasicBlock(nn.Module):
    """Post-activation block ``relu(bn(conv(relu(bn(conv(x))))) + shortcut(x))``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, shortcut: str) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            if shortcut == "A":
                self.shortcut = PadShortcut(in_channels, out_channels, stride)
            else:
                self.shortcut = conv_bn_shortcut(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """3x3 stem -> stages of :class:`BasicBlock` -> global average pool -> Linear.

    ``stage_widths[i]`` channels and ``blocks_per_stage[i]`` blocks in stage
    ``i``; every stage after the first halves the resolution. Works for any
    input of at least 1x1 (8x8 digits and 32x32 CIFAR included).
    """

    def __init__(
        self,
        input_shape: Sequence[int],
        num_outputs: int,
        stage_widths: Sequence[int],
        blocks_per_stage: Sequence[int],
        shortcut: str,
        name: str,
    ) -> None:
        super().__init__()
        in_channels = as_shape(input_shape, (3,), name)[0]
        check_positive(name, num_outputs=num_outputs)
        if shortcut not in ("A", "B"):
            raise ValueError(f"{name}: shortcut must be 'A' or 'B', got {shortcut!r}")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, stage_widths[0], 3, padding=1, bias=False),
            nn.BatchNorm2d(stage_widths[0]),
            nn.ReLU(),
        )
        blocks: list[nn.Module] = []
        width = stage_widths[0]
        for stage, (out_width, n) in enumerate(zip(stage_widths, blocks_per_stage)):
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(width, out_width, stride, shortcut))
                width = out_width
        self.blocks = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, num_outputs)
        init_conv_bn_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.blocks(self.stem(x))).flatten(1))


def _he_resnet(
    depth: int, input_shape: Sequence[int], num_outputs: int, base_width: int, shortcut: str
) -> CifarResNet:
    check_positive(f"resnet{depth}", base_width=base_width)
    n = (depth - 2) // 6
    widths = (base_width, 2 * base_width, 4 * base_width)
    return CifarResNet(input_shape, num_outputs, widths, (n, n, n), shortcut, f"resnet{depth}")


@register_model("resnet20")
def resnet20(
    *, input_shape: Sequence[int], num_outputs: int, base_width: int = 16, shortcut: str = "A"
) -> CifarResNet:
    """ResNet-20 of He et al. (2016): 3 stages x 3 blocks, widths 16/32/64 (``base_width`` x 1/2/4).

    Default shortcut is option A (parameter-free zero padding, as in the
    paper's CIFAR experiments: 0.27M parameters for 10 classes); ``"B"`` uses
    1x1 conv + BN projections where the shape changes.
    """
    return _he_resnet(20, input_shape, num_outputs, base_width, shortcut)


@register_model("resnet56")
def resnet56(
    *, input_shape: Sequence[int], num_outputs: int, base_width: int = 16, shortcut: str = "A"
) -> CifarResNet:
    """ResNet-56 of He et al. (2016): 3 stages x 9 blocks; 0.85M parameters with option A, 10 classes."""
    return _he_resnet(56, input_shape, num_outputs, base_width, shortcut)


@register_model("resnet18")
def resnet18(*, input_shape: Sequence[int], num_outputs: int, base_width: int = 64) -> CifarResNet:
    """ResNet-18, CIFAR variant: 3x3 stride-1 stem, no max-pool, 4 stages x 2 blocks.

    Widths ``base_width`` x 1/2/4/8 (64..512 by default, 11.2M parameters for
    10 classes), option-B (1x1 conv + BN) projection shortcuts.
    """
    check_positive("resnet18", base_width=base_width)
    w = base_width
    return CifarResNet(input_shape, num_outputs, (w, 2 * w, 4 * w, 8 * w), (2, 2, 2, 2), "B", "resnet18")
