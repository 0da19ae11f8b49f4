"""Loss and accuracy per task, and the number of targets a batch counts for.

Every full-dataset average in the toolkit is ``sum_b mean_loss_b * count_b /
sum_b count_b`` with ``count_b`` from :func:`target_count`, so a smaller last
batch never biases the result.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def loss_fn(task: str, label_smoothing: float = 0.0, reduction: str = "mean"):
    """Return ``f(output, target) -> loss`` for ``task``.

    classification: cross-entropy on logits ``(N, C)``;
    language_model: token cross-entropy on ``(N, T, V)`` logits and ``(N, T)`` targets
    (``reduction='none'`` gives one loss per sequence, the mean over its tokens);
    regression: mean squared error (``reduction='none'`` gives one per sample).
    """
    if task == "classification":
        def f(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return F.cross_entropy(out, y, label_smoothing=label_smoothing, reduction=reduction)
    elif task == "language_model":
        def f(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            loss = F.cross_entropy(out.flatten(0, -2), y.flatten(), label_smoothing=label_smoothing,
                                   reduction="none" if reduction == "none" else reduction)
            return loss.view(y.shape).mean(dim=-1) if reduction == "none" else loss
    elif task == "regression":
        def f(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            out = out.reshape(y.shape)
            loss = (out - y).pow(2)
            if reduction == "none":
                return loss.reshape(len(y), -1).mean(dim=1)
            return loss.mean() if reduction == "mean" else loss.sum()
    else:
        raise ValueError(f"unknown task {task!r}")
    return f


def target_count(task: str, y: torch.Tensor) -> int:
    """How many targets a mean loss over ``y`` averages (tokens for a language model)."""
    return y.numel() if task == "language_model" else len(y)


def correct_count(task: str, out: torch.Tensor, y: torch.Tensor) -> int | None:
    """Number of correct top-1 predictions, or ``None`` for regression."""
    if task == "regression":
        return None
    return int((out.argmax(dim=-1) == y).sum())
