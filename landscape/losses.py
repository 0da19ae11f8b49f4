"""Loss and accuracy per task, and the number of targets a batch counts for.

Every full-dataset average in the toolkit is ``sum_b mean_loss_b * count_b /
sum_b count_b`` with ``count_b`` from :func:`target_count`, so a smaller last
batch never biases the result.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


IGNORE_INDEX = -100
"""The target that cross-entropy skips (PyTorch's and HuggingFace's padding label): not a target, not counted."""


def loss_fn(task: str, label_smoothing: float = 0.0, reduction: str = "mean"):
    """Return ``f(output, target) -> loss`` for ``task``.

    classification: cross-entropy on logits ``(N, C)``;
    language_model: token cross-entropy on ``(N, T, V)`` logits and ``(N, T)`` targets
    (``reduction='none'`` gives one loss per sequence, the mean over its counted tokens);
    regression: mean squared error (``reduction='none'`` gives one per sample, ``'sum'`` their sum).
    Targets equal to :data:`IGNORE_INDEX` are skipped: ``'mean'`` is over the counted targets,
    ``'sum'`` = ``'mean'`` times :func:`target_count` (0 for a batch without one).
    """
    if task == "classification":
        def f(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out, y, label_smoothing=label_smoothing, reduction=reduction)
    elif task == "language_model":
        def f(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            loss = F.cross_entropy(out.flatten(0, -2), y.flatten(), label_smoothing=label_smoothing,
                                   reduction="none" if reduction == "none" else reduction)
            if reduction != "none":
                return loss
            tokens = (y != IGNORE_INDEX).sum(dim=-1).clamp_min(1) if not y.is_floating_point() else y.shape[-1]
            return loss.view(y.shape).sum(dim=-1) / tokens
    elif task == "regression":
        def f(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = out.reshape(y.shape)
            loss = (out - y).pow(2)
            if reduction == "mean":
                return loss.mean()
            per_row = loss.reshape(len(y), -1).mean(dim=1)
            return per_row if reduction == "none" else per_row.sum()
    else:
        raise ValueError(f"unknown task {task!r}")
    return f


def target_count(task: str, y: torch.Tensor) -> int | torch.Tensor:
    """How many targets a mean loss over ``y`` averages: rows for regression and class probabilities, else the
    class indices (tokens of a language model, pixels of a segmentation) other than :data:`IGNORE_INDEX`, as a
    0-d tensor (counted on ``y``'s device, without a host read)."""
    if task == "regression" or (task == "classification" and y.is_floating_point()):
        return len(y)
    if y.is_floating_point():  # a language model's token probabilities (..., V)
        return y[..., 0].numel()
    return (y != IGNORE_INDEX).sum()


def predictions(task: str, out: torch.Tensor) -> torch.Tensor:
    """Top-1 classes of logits: over dim 1 for classification (``(N, C, ...)``), the last for a language model."""
    return out.argmax(dim=1 if task == "classification" else -1)


def correct_count(task: str, out: torch.Tensor, y: torch.Tensor) -> int | None:
    """Number of correct top-1 predictions, or ``None`` for regression and class probabilities (an ignored
    target is never correct)."""
    if task == "regression" or y.is_floating_point():
        return None
    return int((predictions(task, out) == y).sum())
