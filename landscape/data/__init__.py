"""Dataset registry: every dataset is a :class:`DataBundle` of in-memory tensors.

``get_dataset(name, **kwargs)`` builds a bundle deterministically from its
kwargs (``seed`` included), so a checkpoint that stores ``name`` and the
bundle's resolved ``kwargs`` rebuilds the exact same data. Nothing is ever
downloaded: generated data is cached locally, file formats are read from a
user-given path.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import torch

TASKS = ("classification", "regression", "language_model")

Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]
"""Batch-wise train-time augmentation ``(x_batch, generator) -> x_batch``."""


@dataclass
class DataBundle:
    """Train/test tensors plus what a model and a loss need to know about them.

    ``x_*``/``y_*`` hold the whole split. For ``language_model`` ``x`` and ``y``
    are ``(N, T)`` token ids with ``y`` the next token of ``x``. ``kwargs`` are
    the resolved keyword arguments: ``get_dataset(name, **kwargs)`` rebuilds
    this bundle exactly (they must be JSON/weights_only-safe values).
    """

    name: str
    kwargs: dict[str, Any]
    task: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int | None = None
    vocab_size: int | None = None
    augment: Augment | None = None
    info: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y):
                raise ValueError(f"{split}: {len(x)} inputs but {len(y)} targets")

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.x_train.shape[1:])

    @property
    def num_outputs(self) -> int:
        """Width of the model's last layer: classes, vocabulary or regression targets."""
        if self.task == "classification":
            assert self.num_classes is not None
            return self.num_classes
        if self.task == "language_model":
            assert self.vocab_size is not None
            return self.vocab_size
        return 1 if self.y_train.dim() == 1 else int(self.y_train.shape[1])

    def model_defaults(self) -> dict[str, Any]:
        """Keyword arguments every model factory accepts, filled from the data."""
        out: dict[str, Any] = {"input_shape": list(self.input_shape), "num_outputs": self.num_outputs}
        if self.vocab_size is not None:
            out["vocab_size"] = self.vocab_size
        return out

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x, y)`` of ``"train"`` or ``"test"``."""
        if name not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {name!r}")
        return getattr(self, f"x_{name}"), getattr(self, f"y_{name}")


DatasetFactory = Callable[..., DataBundle]
DATASETS: dict[str, DatasetFactory] = {}


def register_dataset(name: str) -> Callable[[DatasetFactory], DatasetFactory]:
    """Decorator: make ``factory(**kwargs) -> DataBundle`` available as ``name``."""

    def deco(factory: DatasetFactory) -> DatasetFactory:
        if name in DATASETS:
            raise ValueError(f"dataset {name!r} registered twice")
        DATASETS[name] = factory
        return factory

    return deco


def get_dataset(name: str, **kwargs: Any) -> Any:
    """Build dataset ``name``; ``pkg.module:factory`` names a user factory, which returns a
    :class:`DataBundle` or, for analysis only, a ``DataLoader`` / ``{"train": ..., "test": ...}`` of them
    (:class:`~landscape.data.streams.StreamData`)."""
    if ":" in name:
        from landscape.entrypoints import load_entry_point

        factory = load_entry_point(name)
        bundle = factory(**kwargs)
        if not isinstance(bundle, DataBundle):
            from landscape.data.streams import as_data

            try:
                return as_data(bundle, name, kwargs)
            except TypeError as e:
                raise TypeError(f"{name} returned {type(bundle).__name__}: {e}") from None
        return bundle
    _load_builtin()
    if name not in DATASETS:
        raise KeyError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    from landscape.entrypoints import check_kwargs

    factory = DATASETS[name]
    check_kwargs(f"dataset {name!r}", factory, kwargs, flag="--data-arg")
    return factory(**kwargs)


def _load_builtin() -> None:
    # Importing the modules runs their @register_dataset decorators.
    from landscape.data import builtin  # noqa: F401


__all__ = ["DataBundle", "DATASETS", "TASKS", "get_dataset", "register_dataset"]
