"""Tiny user-side factories for tests (also exercise the ``pkg.module:factory`` entry points)."""
from __future__ import annotations

import time

import torch
import torch.nn as nn

from landscape.data import DataBundle


def blobs(n_train: int = 96, n_test: int = 48, dim: int = 5, num_classes: int = 3, seed: int = 0) -> DataBundle:
    """Gaussian blobs: class c centred at 2*e_c."""
    g = torch.Generator().manual_seed(seed)
    n = n_train + n_test
    y = torch.randint(num_classes, (n,), generator=g)
    centres = 2.0 * torch.eye(num_classes, dim)
    x = centres[y] + torch.randn(n, dim, generator=g)
    return DataBundle(name="tests.fixtures:blobs",
                      kwargs={"n_train": n_train, "n_test": n_test, "dim": dim, "num_classes": num_classes,
                              "seed": seed},
                      task="classification", x_train=x[:n_train], y_train=y[:n_train], x_test=x[n_train:],
                      y_test=y[n_train:], num_classes=num_classes)


class _Slow(nn.Module):
    """Identity that sleeps in training mode (lets a test kill a run mid-way)."""

    def __init__(self, delay: float) -> None:
        super().__init__()
        self.delay = delay

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and self.delay:
            time.sleep(self.delay)
        return x


def tiny_mlp(input_shape: list[int] = (5,), num_outputs: int = 3, hidden: int = 8, dropout: float = 0.0,
             delay: float = 0.0) -> nn.Module:
    layers: list[nn.Module] = [nn.Flatten(), nn.Linear(int(torch.tensor(input_shape).prod()), hidden), nn.Tanh()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    if delay:
        layers.append(_Slow(delay))
    layers.append(nn.Linear(hidden, num_outputs))
    return nn.Sequential(*layers)


def blob_loaders(targets: str = "classes") -> dict:
    """``{"train": DataLoader, "test": DataLoader}`` of :func:`blobs` (a user's data pipeline): ``targets`` =
    ``classes``, ``regression`` (float ``(N, 1)``) or ``out_of_range`` (a label the 3-way model cannot have)."""
    from torch.utils.data import DataLoader, TensorDataset

    d = blobs()

    def loader(x: torch.Tensor, y: torch.Tensor) -> DataLoader:
        if targets == "regression":
            y = y.float()[:, None]
        elif targets == "out_of_range":
            y = y.clone()
            y[0] = 7
        return DataLoader(TensorDataset(x, y), batch_size=32)

    return {"train": loader(d.x_train, d.y_train), "test": loader(d.x_test, d.y_test)}
