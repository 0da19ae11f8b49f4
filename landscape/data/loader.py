"""Deterministic mini-batch iteration over in-memory tensors.

The order of epoch ``e`` is ``randperm(N)`` drawn from a generator seeded with
``(seed, e)``, and the augmentation of batch ``b`` uses a generator seeded with
``(seed, e, b)``. Nothing else is random, so resuming at ``(epoch, batch)``
reproduces an uninterrupted run exactly, and the global batch is the same for
any number of data-parallel ranks: rank ``r`` of ``W`` takes rows
``r::W`` of every global batch, so the all-reduced mean gradient equals the
single-process one (up to float rounding). Augmentation is the global batch's
restricted to the rank's rows, so it too is independent of the rank count; an
augmentation that takes ``rows`` (:class:`landscape.data.augment.CropFlip`)
works on the rank's shard only, any other on the global batch.

``device``: batches are moved there (from pinned memory, without blocking, when
it is a GPU) and augmented there.
"""
from __future__ import annotations

from typing import Iterator

import inspect

import torch

from landscape.data import Augment

_MIX = 1_000_003  # spreads (seed, epoch, batch) over distinct generator seeds


def _generator(*keys: int) -> torch.Generator:
    seed = 0
    for k in keys:
        seed = (seed * _MIX + int(k) + 1) % (2**63 - 1)
    return torch.Generator().manual_seed(seed)


class BatchLoader:
    """Iterate ``(x, y)`` mini-batches of global size ``batch_size``.

    ``shuffle=False`` walks the rows in order (evaluation). The last batch is
    smaller unless ``drop_last``. ``start_batch`` skips the first batches of the
    current epoch (mid-epoch resume).
    """

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        drop_last: bool = False,
        augment: Augment | None = None,
        rank: int = 0,
        world_size: int = 1,
        device: torch.device | str | None = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} not in [0, {world_size})")
        if batch_size < world_size:
            raise ValueError(f"batch_size {batch_size} is smaller than world_size {world_size}")
        self.x, self.y = x, y
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.augment = augment
        self.rank, self.world_size = rank, world_size
        self.device = None if device is None else torch.device(device)
        self.pin_memory = pins_memory(self.device)
        self.shards_augment = augment is not None and _takes_rows(augment)
        self.epoch = 0
        self.start_batch = 0

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch, self.start_batch = epoch, start_batch

    def __len__(self) -> int:
        n = len(self.x)
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def order(self) -> torch.Tensor:
        n = len(self.x)
        if not self.shuffle:
            return torch.arange(n)
        return torch.randperm(n, generator=_generator(self.seed, self.epoch))

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        order = self.order()
        for b in range(self.start_batch, len(self)):
            idx = order[b * self.batch_size : (b + 1) * self.batch_size]
            if len(idx) < self.world_size:
                return  # a tail too small to give every rank a row
            mine = idx[self.rank :: self.world_size]
            x, y = self._to_device(self.x[mine]), self._to_device(self.y[mine])
            if self.augment is not None:  # the global batch's augmentation, on the shard's rows
                gen = _generator(self.seed, self.epoch, b, 7)
                if self.shards_augment:  # the whole batch's draws, the shard's images only
                    x = self.augment(x, gen, rows=torch.arange(self.rank, len(idx), self.world_size),
                                     total=len(idx))
                else:
                    x = self.augment(self._to_device(self.x[idx]), gen)[self.rank :: self.world_size]
            yield x, y
        self.start_batch = 0

    def _to_device(self, t: torch.Tensor) -> torch.Tensor:
        if self.device is None:
            return t
        if self.pin_memory:
            t = t.pin_memory()
        return t.to(self.device, non_blocking=self.pin_memory)


def pins_memory(device: torch.device | None) -> bool:
    """Whether batches bound for ``device`` go through pinned host memory: for a CUDA GPU (an asynchronous copy
    from page-locked memory); elsewhere pinning buys nothing."""
    return device is not None and device.type == "cuda"


def _takes_rows(augment: Augment) -> bool:
    try:
        return "rows" in inspect.signature(augment).parameters
    except (TypeError, ValueError):
        return False
