"""Small plain CNN for 1-D signals (``[L]`` or ``[C, L]``) and images (``[C, H, W]``)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from landscape.models import register_model
from landscape.models.common import as_shape, check_dropout, check_positive, init_conv_bn_linear


@register_model("cnn")
class CNN(nn.Module):
    """``[Conv -> (BatchNorm) -> ReLU -> MaxPool(2)] x len(channels)``, then
    ``(Dropout) -> FC(hidden) -> ReLU -> (Dropout) -> Linear``.

    ``input_shape`` ``[L]`` (e.g. MNIST-1D ``[40]``, read as one channel) or
    ``[C, L]`` uses ``Conv1d``; ``[C, H, W]`` uses ``Conv2d``. Convolutions
    pad by ``kernel_size // 2``; a max-pool is skipped once a spatial size is
    below 2, so any small input works. ``hidden=0`` drops the hidden FC layer.
    Dropout sits before every linear layer.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        channels: Sequence[int] = (32, 64),
        kernel_size: int = 3,
        batchnorm: bool = False,
        dropout: float = 0.0,
        hidden: int = 128,
    ) -> None:
        super().__init__()
        shape = as_shape(input_shape, (1, 2, 3), "cnn")
        check_positive("cnn", num_outputs=num_outputs, kernel_size=kernel_size,
                       **{f"channels[{i}]": c for i, c in enumerate(channels)})
        if hidden < 0:
            raise ValueError(f"cnn: hidden must be >= 0, got {hidden}")
        dropout = check_dropout("cnn", dropout)
        self.add_channel_dim = len(shape) == 1
        if self.add_channel_dim:
            shape = (1, *shape)
        if len(shape) == 2:
            conv, bn, pool = nn.Conv1d, nn.BatchNorm1d, nn.MaxPool1d
        else:
            conv, bn, pool = nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d
        in_ch, spatial = shape[0], list(shape[1:])
        pad = kernel_size // 2
        layers: list[nn.Module] = []
        for out_ch in channels:
            spatial = [s + 2 * pad - kernel_size + 1 for s in spatial]  # same size (+1 for even kernels)
            layers.append(conv(in_ch, int(out_ch), kernel_size, padding=pad, bias=not batchnorm))
            if batchnorm:
                layers.append(bn(int(out_ch)))
            layers.append(nn.ReLU())
            if min(spatial) >= 2:
                layers.append(pool(2))
                spatial = [s // 2 for s in spatial]
            in_ch = int(out_ch)
        self.features = nn.Sequential(*layers)
        width = in_ch
        for s in spatial:
            width *= s
        head: list[nn.Module] = [nn.Flatten()]
        if hidden > 0:
            head += [nn.Dropout(dropout)] if dropout > 0 else []
            head += [nn.Linear(width, hidden), nn.ReLU()]
            width = hidden
        head += [nn.Dropout(dropout)] if dropout > 0 else []
        head.append(nn.Linear(width, num_outputs))
        self.classifier = nn.Sequential(*head)
        init_conv_bn_linear(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.add_channel_dim:
            x = x.unsqueeze(1)
        return self.classifier(self.features(x))
