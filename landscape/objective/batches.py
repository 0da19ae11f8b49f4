"""Batches as nested structures of tensors: ``(x, y)`` tuples, dicts (``model(**batch)``), lists, or
anything whose tensors sit in tuples, lists and mappings (a HuggingFace ``BatchEncoding`` is a mapping).

A batch's *rows* are the leading dimension of its tensors; a tensor whose leading dimension differs (or a
0-d tensor, or a non-tensor leaf) is shared by all rows and left as it is when rows are taken.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable

import torch


def map_tensors(batch: Any, fn: Callable[[torch.Tensor], Any]) -> Any:
    """``batch`` with ``fn`` applied to every tensor leaf (tuples, lists and mappings rebuilt)."""
    if isinstance(batch, torch.Tensor):
        return fn(batch)
    if isinstance(batch, Mapping):
        items = {k: map_tensors(v, fn) for k, v in batch.items()}
        try:
            return type(batch)(items)
        except Exception:  # noqa: BLE001 - a mapping type without a dict constructor
            return items
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):  # namedtuple
        return type(batch)(*(map_tensors(v, fn) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(map_tensors(v, fn) for v in batch)
    return batch


def tensors(batch: Any) -> list[torch.Tensor]:
    """Every tensor leaf of ``batch``, depth first."""
    found: list[torch.Tensor] = []
    map_tensors(batch, found.append)
    return found


def to_device(batch: Any, device: torch.device, dtype: torch.dtype | None = None) -> Any:
    """``batch`` on ``device``; floating tensors cast to ``dtype`` (when given)."""
    def move(t: torch.Tensor) -> torch.Tensor:
        if dtype is not None and t.is_floating_point():
            return t.to(device, dtype, non_blocking=True)
        return t.to(device, non_blocking=True)

    return map_tensors(batch, move)


def num_rows(batch: Any) -> int:
    """Rows of ``batch``: the leading dimension of its first tensor with at least one dimension."""
    for t in tensors(batch):
        if t.dim() > 0:
            return int(t.shape[0])
    raise ValueError("a batch needs at least one tensor with a leading (row) dimension")


def take_rows(batch: Any, index: torch.Tensor | slice, rows: int | None = None) -> Any:
    """Rows ``index`` of ``batch`` (every tensor whose leading dimension is ``rows``, default :func:`num_rows`)."""
    n = num_rows(batch) if rows is None else rows
    return map_tensors(batch, lambda t: t[index] if t.dim() > 0 and t.shape[0] == n else t)


def concat_rows(batches: list[Any]) -> Any:
    """The rows of ``batches`` (same structure) one after another."""
    if len(batches) == 1:
        return batches[0]
    rows = [num_rows(b) for b in batches]
    leaves = [tensors(b) for b in batches]
    it = iter(range(len(leaves[0])))

    def cat(t: torch.Tensor) -> torch.Tensor:
        j = next(it)
        if t.dim() > 0 and t.shape[0] == rows[0]:
            return torch.cat([ls[j] for ls in leaves])
        return t

    return map_tensors(batches[0], cat)


def group_rows(batch: Any, groups: int, size: int) -> Any:
    """The first ``groups * size`` rows of ``batch`` as ``groups`` stacked groups: row tensors become
    ``(groups, size, ...)`` (for ``vmap`` over groups)."""
    n = num_rows(batch)
    return map_tensors(batch, lambda t: t[:groups * size].reshape(groups, size, *t.shape[1:])
                       if t.dim() > 0 and t.shape[0] == n else t)


def row_dims(batch: Any) -> Any:
    """``vmap`` ``in_dims`` for a grouped batch: 0 for row tensors, None for shared leaves."""
    n = num_rows(batch)
    return map_tensors(batch, lambda t: 0 if t.dim() > 0 and t.shape[0] == n else None)


def fingerprint(batch: Any) -> tuple[tuple[tuple[int, ...], ...], torch.Tensor]:
    """Shapes of ``batch``'s tensors and a float64 tensor of a few of their values: what tells two passes
    over a data source apart without copying the data."""
    leaves = tensors(batch)
    shapes = tuple(tuple(t.shape) for t in leaves)
    if not leaves:
        return shapes, torch.zeros(0, dtype=torch.float64)
    device = leaves[0].device
    sums = torch.stack([t.detach().reshape(-1)[:64].to(device).double().sum() for t in leaves])
    return shapes, sums


def describe(batch: Any) -> str:
    """A short description of a batch's structure for error messages: ``dict(input_ids, labels)``."""
    if isinstance(batch, torch.Tensor):
        return f"tensor{tuple(batch.shape)}"
    if isinstance(batch, Mapping):
        return f"{type(batch).__name__}({', '.join(map(str, batch.keys()))})"
    if isinstance(batch, (list, tuple)):
        return f"{type(batch).__name__} of {len(batch)}"
    return type(batch).__name__


__all__ = ["concat_rows", "describe", "fingerprint", "group_rows", "map_tensors", "num_rows", "row_dims",
           "take_rows", "tensors", "to_device"]
