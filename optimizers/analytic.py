"""Any optimizer of the family on an analytic loss ``f(w)`` of a flat vector (toy problems, gallery figures).

:class:`FunctionModel` holds ``w`` as ``nn.Parameter`` tensors laid out by ``shapes`` (as
:class:`landscape.analytic.FunctionObjective` splits a flat vector: a ``(1, 1)`` shape is a weight to the
perturbation geometry, a 1-D one a bias); :class:`FunctionClosure` is the closure the optimizers call,
``closure(sync=True, update_bn=True) -> f(w)`` leaving ``p.grad = grad f(w)`` (the interface of the trainer's
:class:`~optimizers.closure.StepClosure`, whose flags have nothing to act on here); :func:`optimize_function`
takes ``steps`` steps of a registered method from ``w0`` and returns the trajectory
``w_0, w_1, ..., w_steps`` with ``f`` along it.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn

from optimizers import ERM_BASE, build_optimizer


class FunctionModel(nn.Module):
    """The point ``w`` of an analytic problem as parameters ``w0``, ``w1``, ... (or ``names``) of ``shapes``."""

    def __init__(self, w0: torch.Tensor, *, shapes: Sequence[Sequence[int]] | None = None,
                 names: Sequence[str] | None = None) -> None:
        super().__init__()
        w0 = torch.as_tensor(w0).detach().clone().reshape(-1)
        if not w0.is_floating_point():
            w0 = w0.double()
        shapes = [tuple(s) for s in shapes] if shapes is not None else [(w0.numel(),)]
        sizes = [math.prod(s) for s in shapes]
        if sum(sizes) != w0.numel():
            raise ValueError(f"shapes hold {sum(sizes)} elements, w0 has {w0.numel()}")
        names = list(names) if names is not None else [f"w{i}" for i in range(len(shapes))]
        if len(names) != len(shapes):
            raise ValueError(f"{len(names)} names for {len(shapes)} shapes")
        self.names = names
        for n, t, s in zip(names, w0.split(sizes), shapes):
            self.register_parameter(n, nn.Parameter(t.reshape(s).clone()))

    def flat(self) -> torch.Tensor:
        """``w`` as one flat vector (differentiable: gradients flow to the parameters)."""
        return torch.cat([getattr(self, n).reshape(-1) for n in self.names])


class FunctionClosure:
    """``closure(sync=True, update_bn=True) -> f(w)``: zero the gradients, evaluate ``f`` at the model's
    parameters, back-propagate. ``calls`` counts evaluations (as :class:`StepClosure` counts passes)."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor], model: FunctionModel) -> None:
        self.f, self.model = f, model
        self.calls = 0

    def __call__(self, sync: bool = True, update_bn: bool = True) -> torch.Tensor:
        for p in self.model.parameters():
            p.grad = None
        self.calls += 1
        with torch.enable_grad():
            loss = self.f(self.model.flat())
            loss.backward()
        return loss.detach()


@dataclass
class FunctionTrajectory:
    """``points[t]``: ``w_t`` (``points[0] = w0``); ``losses[t] = f(w_t)``; ``metrics[t]``: the optimizer's
    ``metrics()`` after step ``t + 1`` (e.g. its radius); ``evaluations``: closure calls in all."""

    optimizer: str
    hparams: dict[str, Any]
    lr: float
    points: np.ndarray
    losses: np.ndarray
    metrics: list[dict[str, float]] = field(default_factory=list)
    evaluations: int = 0

    @property
    def end(self) -> np.ndarray:
        return self.points[-1]


def optimize_function(
    f: Callable[[torch.Tensor], torch.Tensor],
    w0: Sequence[float] | torch.Tensor,
    optimizer: str,
    *,
    steps: int,
    lr: float,
    base: str | None = None,
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    shapes: Sequence[Sequence[int]] | None = None,
    names: Sequence[str] | None = None,
    dtype: torch.dtype = torch.float64,
    **hparams: Any,
) -> FunctionTrajectory:
    """``steps`` steps of method ``optimizer`` (any registered name, with its ``hparams``) on ``f`` from ``w0``,
    over plain SGD (``momentum``, ``weight_decay``; ``base="adamw"`` for AdamW) with a constant ``lr``.

    The optimizer is the training one (:func:`optimizers.build_optimizer`), driven through
    ``optimizer.step(closure)`` exactly as the trainer drives it. GSAM's radius follows the lr schedule,
    so with this constant lr it is ``rho_max``. Stops early if ``f`` becomes non-finite.
    """
    w = torch.as_tensor(w0, dtype=dtype)
    model = FunctionModel(w, shapes=shapes, names=names)
    base_kwargs: dict[str, Any] = {"lr": lr, "weight_decay": weight_decay}
    if ERM_BASE.get(optimizer, base or "sgd") == "sgd":
        base_kwargs["momentum"] = momentum
    opt = build_optimizer(optimizer, model.parameters(), base=base, base_kwargs=base_kwargs, **hparams)
    closure = FunctionClosure(f, model)
    points = [model.flat().detach().clone()]
    with torch.no_grad():
        losses = [float(f(points[0]))]
    metrics = []
    for _ in range(steps):
        opt.step(closure)
        metrics.append(opt.metrics())
        points.append(model.flat().detach().clone())
        with torch.no_grad():
            losses.append(float(f(points[-1])))
        if not math.isfinite(losses[-1]):
            break
    return FunctionTrajectory(optimizer=optimizer, hparams=dict(hparams), lr=float(lr),
                              points=torch.stack(points).cpu().double().numpy(), losses=np.array(losses),
                              metrics=metrics, evaluations=closure.calls)


__all__ = ["FunctionClosure", "FunctionModel", "FunctionTrajectory", "optimize_function"]
