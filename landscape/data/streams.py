"""Data given as re-iterables of batches (``DataLoader``s), one per split: what a user's own pipeline gives.

A :class:`StreamData` stands where a :class:`~landscape.data.DataBundle` of in-memory tensors stands for
analysis (``landscape analyze --data pkg.module:factory`` with a factory returning a ``DataLoader``, a dict
``{"train": loader, "test": loader}`` or a :class:`StreamData`); every measure reads it one micro-batch at a
time through :class:`~landscape.objective.sources.StreamSource`. Training still needs a ``DataBundle``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable

SPLITS = ("train", "test")


@dataclass
class StreamData:
    """``train`` and optional ``test`` re-iterables of batches. ``task``: the built-in loss that fits the
    batches (``None``: the loss is given separately, e.g. ``--loss pkg.module:fn``)."""

    train: Iterable[Any]
    test: Iterable[Any] | None = None
    task: str | None = None
    name: str = ""
    kwargs: dict[str, Any] = field(default_factory=dict)
    streaming = True

    def split(self, name: str) -> Iterable[Any]:
        """The re-iterable of split ``name``."""
        if name not in SPLITS:
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        part = getattr(self, name)
        if part is None:
            raise ValueError(f"the data has no {name} split (the factory gave only {', '.join(self.splits)})")
        return part

    @property
    def splits(self) -> list[str]:
        return [s for s in SPLITS if getattr(self, s) is not None]


def as_data(obj: Any, name: str = "", kwargs: dict[str, Any] | None = None) -> Any:
    """A :class:`~landscape.data.DataBundle` or :class:`StreamData` as it is; a ``{"train": ..., "test": ...}``
    dict or a lone re-iterable of batches (the train split) as :class:`StreamData`."""
    from landscape.data import DataBundle

    if isinstance(obj, (DataBundle, StreamData)):
        return obj
    if isinstance(obj, dict) and set(obj) <= {"train", "test", "task"} and "train" in obj:
        return StreamData(obj["train"], obj.get("test"), obj.get("task"), name=name, kwargs=dict(kwargs or {}))
    if isinstance(obj, Iterable) and not isinstance(obj, (str, bytes, dict)):
        return StreamData(obj, name=name, kwargs=dict(kwargs or {}))
    raise TypeError(f"expected a DataBundle, a DataLoader (any re-iterable of batches) or "
                    f"{{'train': ..., 'test': ...}}, got {type(obj).__name__}")


__all__ = ["SPLITS", "StreamData", "as_data"]
