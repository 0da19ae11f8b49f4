"""1-D interpolations: barrier heights and the GA-SAM shifted-loss picture.

Barrier heights of a loss curve ``L(t)`` along ``w(t) = (1 - t) w_a + t w_b``, over the grid points
with ``0 <= t <= 1`` (both ends must be grid points):

* ``barrier = max_t L(t) - max(L(0), L(1))`` — how far the path climbs above the higher end point;
* ``barrier_linear = max_t [L(t) - ((1 - t) L(0) + t L(1))]`` — the height above the straight line
  between the end losses (Frankle et al. 2020; Entezari et al. 2022).

Both are >= 0 (the ends themselves are grid points); 0 means no barrier on the grid.

GA-SAM (Fig. 1 of "Gradient-strength based adaptive sharpness-aware minimization"): near a training
minimum ``theta`` the test loss behaves like the training loss shifted by a parameter corruption
``delta = theta* - theta``, with ``theta*`` the minimum fine-tuned on the test set:
``L_test(w) ~ L_train(w - delta) + C``, ``C = L_test(theta*) - L_train(theta)``. Along
``w(t) = theta + t delta`` the shifted curve is ``L_train(t - 1) + C``; :func:`shift_axis` builds a
grid where ``t - 1`` is again a grid point, :func:`shifted_curves` assembles the three curves.
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch


def barrier_heights(t: np.ndarray, loss: np.ndarray) -> dict[str, float]:
    """Both barrier heights (module docstring) of ``loss`` sampled at ``t``; also where they peak."""
    t, loss = np.asarray(t, dtype=np.float64), np.asarray(loss, dtype=np.float64)
    if not (np.any(t == 0.0) and np.any(t == 1.0)):
        raise ValueError("a barrier needs t = 0 and t = 1 on the grid")
    l0, l1 = float(loss[t == 0.0][0]), float(loss[t == 1.0][0])
    inside = (t >= 0.0) & (t <= 1.0)
    tt, ll = t[inside], loss[inside]
    above = ll - ((1.0 - tt) * l0 + tt * l1)
    i, j = int(np.argmax(ll)), int(np.argmax(above))
    return {"barrier": float(ll[i] - max(l0, l1)), "t_max": float(tt[i]),
            "barrier_linear": float(above[j]), "t_max_linear": float(tt[j]), "loss_start": l0, "loss_end": l1}


def shift_axis(lo: float, hi: float, per_unit: int) -> np.ndarray:
    """``k / per_unit`` for every integer ``k`` with ``lo - 1 <= k / per_unit <= hi`` (rounded outwards):
    the grid of ``t`` covers ``[lo, hi]`` and every ``t - 1`` of it; 0 and 1 are grid points."""
    if per_unit < 1 or not hi > lo:
        raise ValueError(f"need per_unit >= 1 and lo < hi, got {per_unit}, {lo} .. {hi}")
    k0, k1 = math.floor(lo * per_unit + 1e-9) - per_unit, math.ceil(hi * per_unit - 1e-9)
    return np.arange(k0, k1 + 1, dtype=np.float64) / per_unit


def shifted_curves(t: np.ndarray, train: np.ndarray, test: np.ndarray, per_unit: int, lo: float,
                   hi: float) -> dict[str, Any]:
    """The GA-SAM curves on ``[lo, hi]`` from losses on a :func:`shift_axis` grid ``t``: ``train``,
    ``test``, ``shifted`` (= ``train(t - 1) + C``), the constant ``C``, and the RMS gap of the test
    loss to the shifted and to the unshifted training loss over ``[lo, hi]``: with GA-SAM's ``C``
    (``rms_test_vs_shifted``; the train curve as it is, ``rms_test_vs_train``) and with the best
    constant for each (``*_best_constant``: ``min_c RMS(test - curve - c)``, the standard deviation
    of the difference), which compares the shapes alone."""
    t, train, test = (np.asarray(a, dtype=np.float64) for a in (t, train, test))
    k = np.rint(t * per_unit).astype(np.int64)
    pos = {int(v): i for i, v in enumerate(k)}
    c = float(test[pos[per_unit]] - train[pos[0]])
    keep = [i for i, v in enumerate(k) if lo - 1e-9 <= t[i] <= hi + 1e-9 and int(v) - per_unit in pos]
    shifted = np.array([train[pos[int(k[i]) - per_unit]] + c for i in keep])
    tt, tr, te = t[keep], train[keep], test[keep]
    return {"t": tt, "train": tr, "test": te, "shifted": shifted, "constant": c,
            "rms_test_vs_shifted": float(np.sqrt(np.mean((te - shifted) ** 2))),
            "rms_test_vs_train": float(np.sqrt(np.mean((te - tr) ** 2))),
            "rms_test_vs_shifted_best_constant": float(np.std(te - shifted)),
            "rms_test_vs_train_best_constant": float(np.std(te - tr))}


def finetune(obj: Any, steps: int, lr: float, momentum: float = 0.0,
             progress: bool = False) -> tuple[torch.Tensor, list[float]]:
    """Full-batch gradient descent (heavy-ball ``momentum``) on ``obj``'s loss from ``w0`` (e.g. the
    training minimum fine-tuned on the test split: GA-SAM's ``theta*``). Eval mode: BatchNorm keeps its
    running statistics, dropout is off. Deterministic; returns ``(w, losses along the way)``."""
    from landscape.progress import progress_bar

    if steps < 0 or lr <= 0:
        raise ValueError(f"need steps >= 0 and lr > 0, got {steps}, {lr}")
    w = obj.params()
    v = torch.zeros_like(w)
    losses = []
    with progress_bar("fine-tune", steps, progress) as advance:
        for _ in range(steps):
            loss, g = obj.loss_and_grad(w)
            losses.append(loss)
            v = momentum * v + g
            w = w - lr * v
            advance(1, loss=f"{loss:.4g}")
    losses.append(obj.loss(w))
    return w, losses


__all__ = ["barrier_heights", "finetune", "shift_axis", "shifted_curves"]
