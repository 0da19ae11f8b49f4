"""Train-time image augmentation in torch (no torchvision): random crop with padding, horizontal flip."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class CropFlip:
    """``(x_batch, generator) -> x_batch`` for ``(N, C, H, W)`` images, vectorized over the batch.

    Each image is padded by ``padding`` on every side with ``fill`` (a value per
    channel, e.g. the normalized black ``-mean/std``, or one scalar), cropped
    back to ``H x W`` at a uniformly random offset, then mirrored left-right
    with probability ``flip_p``. The draws (offsets, then flips) come only from
    ``generator`` (a CPU generator; the images may live on any device), so the
    result is a function of the batch and the generator.

    ``rows``: ``x`` holds only these rows (positions) of a batch of ``total`` images, e.g. one data-parallel
    rank's shard: the draws are made for the whole batch and the shard's are applied, so the result is the
    whole batch's augmentation restricted to ``rows``, at the cost of the shard only.
    """

    padding: int = 4
    flip: bool = True
    fill: Sequence[float] | float = 0.0
    flip_p: float = 0.5

    def __call__(self, x: torch.Tensor, generator: torch.Generator, rows: torch.Tensor | None = None,
                 total: int | None = None) -> torch.Tensor:
        if x.dim() != 4:
            raise ValueError(f"CropFlip expects (N, C, H, W) images, got shape {tuple(x.shape)}")
        n, c, h, w = x.shape
        drawn = n if rows is None else int(total if total is not None else n)  # draws for the whole batch

        def mine(t: torch.Tensor) -> torch.Tensor:
            return (t if rows is None else t[rows]).to(x.device)

        p = int(self.padding)
        if p > 0:
            fill = torch.as_tensor(self.fill, dtype=x.dtype, device=x.device).reshape(-1)
            if fill.numel() not in (1, c):
                raise ValueError(f"CropFlip: fill has {fill.numel()} values for {c} channels")
            padded = x.new_empty(n, c, h + 2 * p, w + 2 * p)
            padded[:] = fill.view(1, -1, 1, 1)  # one value per channel, or one for all
            padded[:, :, p : p + h, p : p + w] = x
            dy = mine(torch.randint(0, 2 * p + 1, (drawn,), generator=generator))
            dx = mine(torch.randint(0, 2 * p + 1, (drawn,), generator=generator))
            ar = lambda k: torch.arange(k, device=x.device)  # noqa: E731
            ys = (dy[:, None] + ar(h))[:, None, :, None]  # (N, 1, H, 1)
            xs = (dx[:, None] + ar(w))[:, None, None, :]  # (N, 1, 1, W)
            x = padded[ar(n)[:, None, None, None], ar(c)[None, :, None, None], ys, xs]
        if self.flip:
            mirror = mine(torch.rand(drawn, generator=generator) < self.flip_p)
            x = torch.where(mirror[:, None, None, None], x.flip(-1), x)
        return x


def pad_fill(mean: Sequence[float], std: Sequence[float]) -> list[float]:
    """The normalized value of a black (zero) pixel per channel: what torchvision's padding gives."""
    return [-m / s for m, s in zip(mean, std)]


__all__ = ["CropFlip", "pad_fill"]
