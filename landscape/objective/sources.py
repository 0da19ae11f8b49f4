"""Where an :class:`~landscape.objective.Objective`'s data comes from: micro-batches in a fixed order.

* :class:`TensorSource` -- in-memory tensors (``(x, y)``, a dict of tensors, any batch structure whose row
  tensors share their length), moved to the device once and cut into micro-batches of ``batch_size`` rows.
* :class:`StreamSource` -- any re-iterable of batches: a ``DataLoader`` (map-style or over an
  ``IterableDataset``), a list of batches, a generator factory. Each pass iterates it anew under a fixed
  seed (``torch.random.fork_rng``: a shuffling ``DataLoader`` without its own generator, and its workers,
  repeat the same order; the caller's random state is untouched) and moves one batch at a time to the
  device, so memory stays one micro-batch -- unless the whole stream fits ``cache_memory`` bytes, in which
  case the first pass keeps it and later passes read memory. Every pass is checked against the first (the
  shapes and a few values of each batch): a source that changes between passes (its own shuffling
  generator, unseeded augmentation) raises instead of giving inconsistent sums.

Under ``torch.distributed`` with ``shard=True`` a tensor source keeps rows ``rank::world`` and a stream
keeps batches ``rank::world``.
"""
from __future__ import annotations

from typing import Any, Iterable, Iterator

import torch

from landscape.distributed import rank, world_size
from landscape.objective.batches import concat_rows, fingerprint, num_rows, take_rows, tensors, to_device


class DataError(ValueError):
    """Data that cannot be used as given; one line for the user."""


def subset_indices(n: int, size: int | None, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a fixed random subset of ``size`` of ``range(n)`` (all of them if ``size`` is None)."""
    if size is None or size >= n:
        return torch.arange(n)
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


class TensorSource:
    """In-memory data: ``data`` is a batch structure holding every row (module docstring)."""

    streaming = False

    def __init__(self, data: Any, batch_size: int, device: torch.device, dtype: torch.dtype | None,
                 shard: bool = True) -> None:
        rows = num_rows(data)
        if rows == 0:
            raise DataError("the data has no rows")
        for t in tensors(data):
            if t.dim() > 0 and t.shape[0] != rows:  # 0-d: shared by every row
                raise DataError(f"in-memory data tensors must share their number of rows: {rows} and "
                                f"{t.shape[0] if t.dim() else 0} (shape {tuple(t.shape)})")
        if shard and world_size() > 1:
            data = take_rows(data, slice(rank(), None, world_size()), rows)
        self.data = to_device(data, device, dtype)
        self.batch_size = int(batch_size)
        self.rows = num_rows(self.data) if tensors(self.data) else 0
        self._batches = [take_rows(self.data, slice(i, i + self.batch_size), self.rows)
                         for i in range(0, self.rows, self.batch_size)]
        self.num_batches: int | None = len(self._batches)

    def batches(self) -> Iterator[tuple[int, Any]]:
        """``(index, micro-batch)`` in order."""
        return enumerate(self._batches)

    def first(self) -> Any:
        return self._batches[0]

    def blocks(self, size: int, per_block: int, limit: int | None = None) -> Iterator[tuple[Any, int]]:
        """``(rows, k)``: consecutive blocks of ``k <= per_block`` groups of ``size`` rows (at most ``limit``
        groups in all; a trailing group of fewer rows is left out)."""
        groups = self.rows // size if limit is None else min(self.rows // size, limit)
        for start in range(0, groups, per_block):
            stop = min(groups, start + per_block)
            yield take_rows(self.data, slice(start * size, stop * size), self.rows), stop - start

    def with_rows(self, index: torch.Tensor) -> "TensorSource":
        """A source over rows ``index`` of this one (unsharded)."""
        return TensorSource(take_rows(self.data, index.to(_device_of(self.data)), self.rows), self.batch_size,
                            _device_of(self.data), None, shard=False)


class StreamSource:
    """A re-iterable of batches streamed one micro-batch at a time (module docstring). ``max_rows``: stop
    after that many rows (the last batch cut), the stream's subset."""

    streaming = True

    def __init__(self, iterable: Iterable[Any], device: torch.device, dtype: torch.dtype | None, *,
                 seed: int = 0, shard: bool = True, cache_memory: int | None = None,
                 max_rows: int | None = None) -> None:
        if isinstance(iterable, Iterator):
            raise DataError("a one-shot iterator cannot be read more than once; pass a DataLoader, a list of "
                            "batches, or an object whose __iter__ starts a new pass")
        self.iterable, self.device, self.dtype, self.seed = iterable, device, dtype, int(seed)
        self.shard = shard and world_size() > 1
        self.cache_memory, self.max_rows = cache_memory, max_rows
        self.num_batches: int | None = None
        self.rows: int | None = None
        self._cache: list[Any] | None = None
        self._prints: list[tuple[Any, torch.Tensor]] | None = None

    @property
    def cached(self) -> bool:
        """Whether the whole stream is held in memory (after a first pass that fitted ``cache_memory``)."""
        return self._cache is not None

    def _raw(self) -> Iterator[Any]:
        """This rank's batches of one pass, on the device, the last one cut to ``max_rows``."""
        rows = 0
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            for j, batch in enumerate(self.iterable):
                if self.max_rows is not None and rows >= self.max_rows:
                    break
                n = num_rows(batch)
                if self.max_rows is not None and rows + n > self.max_rows:
                    batch, n = take_rows(batch, slice(0, self.max_rows - rows), n), self.max_rows - rows
                rows += n
                if self.shard and j % world_size() != rank():
                    continue
                yield to_device(batch, self.device, self.dtype)

    def batches(self) -> Iterator[tuple[int, Any]]:
        """``(index, micro-batch)`` of one pass (from memory once cached)."""
        if self._cache is not None:
            yield from enumerate(self._cache)
            return
        keep: list[Any] | None = [] if self.cache_memory is None or self.cache_memory > 0 else None
        held, prints, rows, count = 0, [], 0, 0
        budget = self.cache_memory if self.cache_memory is not None else float("inf")
        for i, batch in enumerate(self._raw()):
            prints.append(fingerprint(batch))
            if self._prints is not None:
                self._check(i, prints[-1])
            rows += num_rows(batch)
            count = i + 1
            if keep is not None:
                held += sum(t.numel() * t.element_size() for t in tensors(batch))
                if held <= budget:
                    keep.append(batch)
                else:
                    keep = None
            yield i, batch
        # a complete pass (the consumer did not stop early)
        if self._prints is not None and count != len(self._prints):
            raise DataError(f"the data source gave {count} batches in this pass but {len(self._prints)} in the "
                            "first; it must give the same batches in every pass")
        self._prints, self.num_batches, self.rows = prints, count, rows
        if keep is not None:
            self._cache = keep

    def _check(self, i: int, got: tuple[Any, torch.Tensor]) -> None:
        if i >= len(self._prints) or got[0] != self._prints[i][0] or not torch.equal(
                got[1].cpu(), self._prints[i][1].cpu()):
            raise DataError(f"batch {i} differs from the first pass over the data: the source must give the same "
                            "batches in every pass (a DataLoader shuffling with its own generator, or an unseeded "
                            "random augmentation?); use shuffle=False or seed it")

    def first(self) -> Any:
        if self._cache:
            return self._cache[0]
        for batch in self._raw():
            return batch
        raise DataError("the data source gave no batch")

    def has_batch(self) -> bool:
        """Whether this rank's share of the stream holds at least one batch."""
        try:
            self.first()
        except DataError:
            return False
        return True

    def blocks(self, size: int, per_block: int, limit: int | None = None) -> Iterator[tuple[Any, int]]:
        """``(rows, k)``: consecutive blocks of ``k <= per_block`` groups of ``size`` rows of this rank's
        stream, in stream order (at most ``limit`` groups; a trailing group of fewer rows is left out)."""
        pending: list[Any] = []
        held, made = 0, 0
        for _, batch in self.batches():
            pending.append(batch)
            held += num_rows(batch)
            if held < size * per_block:
                continue
            rows = concat_rows(pending)
            start = 0
            while held - start >= size * per_block:
                k = per_block if limit is None else min(per_block, limit - made)
                if k <= 0:
                    return
                yield take_rows(rows, slice(start, start + k * size), held), k
                start, made = start + k * size, made + k
            pending = [take_rows(rows, slice(start, held), held)] if start < held else []
            held -= start
        k = held // size if limit is None else min(held // size, limit - made)
        if k > 0:
            yield take_rows(concat_rows(pending), slice(0, k * size), held), k


def _device_of(data: Any) -> torch.device:
    leaves = tensors(data)
    return leaves[0].device if leaves else torch.device("cpu")


def is_in_memory(data: Any) -> bool:
    """Whether ``data`` is a batch structure of tensors (one in-memory split) rather than a re-iterable of
    batches: a tensor, or a tuple/dict whose leaves are all tensors of one row count (or 0-d, shared); a
    :class:`DataError` for a pair ``(inputs, target)`` whose row counts differ."""
    from collections.abc import Mapping

    if isinstance(data, torch.Tensor):
        return True
    if isinstance(data, Mapping):
        values = list(data.values())
    elif isinstance(data, tuple):
        values = list(data)
    else:
        return False
    if not values or not all(isinstance(v, torch.Tensor) for v in values):
        return False
    rows = {int(v.shape[0]) for v in values if v.dim() > 0}  # 0-d tensors are shared by every row
    if len(rows) > 1 and isinstance(data, tuple) and len(values) == 2:
        raise DataError(f"(inputs, target) tensors with {values[0].shape[0]} and {values[1].shape[0]} rows: "
                        "in-memory data needs one row count (batches: pass a list of them)")
    return len(rows) == 1


__all__ = ["DataError", "StreamSource", "TensorSource", "is_in_memory", "subset_indices"]
