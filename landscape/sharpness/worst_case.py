"""Worst-case (adaptive) sharpness by multi-step projected ascent.

    S_rho(w) = max_{||T_w^{-1} e||_p <= rho} L(w + e) - L(w)          (ASAM eq. 4; T = 1: SAM's sharpness)

``T`` is the :class:`~landscape.geometry.Geometry`'s normalization operator evaluated at ``w``; with the
element-wise operator (``eta = 0``) this is *adaptive sharpness*, invariant under node-wise rescaling of a ReLU
network (ASAM Thm. 1). The filter-wise operator is invariant only where whole filters are scaled (a layer's output
channels alone); node-wise rescaling also scales the next layer's input channels, which one filter's norm mixes (a
two-convolution ReLU net measured 0.022 and 0.131 for the same function). The maximum is approached from below by
Auto-PGD-style projected ascent (:func:`~landscape.sharpness.common.projected_ascent`: step halving on stagnation,
momentum, the best point kept at every step; for p = 2 a secant subspace model that makes it converge like Lanczos
on a quadratic); where the gradient at ``w`` vanishes (an exact minimum) the ascent starts along ``direction`` (e.g.
the top Hessian eigenvector) or at a seeded random point, and the result says which. Every result carries its
convergence trace and a ``converged`` flag.

``batch_size = m`` gives m-sharpness (Foret et al.; ASAM App. B uses m = 8): the maximum is taken
separately on disjoint mini-batches ``B`` of ``m`` samples and averaged,
``S_rho^m(w) = mean_B [max_e L_B(w + e) - L_B(w)]``.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import torch

from landscape.geometry import Geometry, Region
from landscape.progress import progress_bar
from landscape.sharpness.common import (MEMORY, TOL, AscentResult, Cost, convergence, default_step_size, mean_std,
                                       per_batch, projected_ascent)


@dataclass
class SharpnessResult:
    """Worst-case sharpness at one radius.

    ``sharpness``: ``max L(w + e) - L(w)`` (the mean over mini-batches in per-batch mode, ``std`` its
    spread); ``loss`` / ``perturbed_loss``: ``L(w)`` and ``L(w + e*)`` (batch means in per-batch mode);
    ``perturbation_norm``: ``||T^{-1} e*||_p`` (<= rho); ``run_values``: the best perturbed loss of each
    run (run 0 starts at ``e = 0``, the others at random points of the ball); ``work``: gradients,
    loss evaluations and data passes spent. ``trace[r][k]``: the best ``L(w + e) - L(w)`` of run ``r`` over its
    first ``k`` steps (per-batch mode: the mean over the batches); ``converged`` / ``relative_change``: the rise
    of the best value over the last quarter of the steps relative to the sharpness
    (:func:`~landscape.sharpness.common.convergence`); ``start``: how run 0 left ``e = 0`` (``gradient``, or
    ``eigenvector`` / ``random`` where the gradient vanishes; per-batch mode: counts over the batches).
    """

    rho: float
    sharpness: float
    loss: float
    perturbed_loss: float
    geometry: dict[str, Any]
    steps: int
    restarts: int
    schedule: str
    step_size: float
    seed: int
    work: dict[str, int]
    perturbation_norm: float | None = None
    run_values: list[float] | None = None
    trace: list[list[float]] | None = None
    converged: bool = False
    relative_change: float | None = None
    start: str = "gradient"
    batch_size: int | None = None
    num_batches: int | None = None
    std: float | None = None
    perturbation: torch.Tensor | None = field(default=None, repr=False)

    @property
    def curvature_estimate(self) -> float:
        """``2 S / rho^2``: ``lambda_max`` of the Hessian at a minimum for p = 2, T = 1, small rho."""
        return 2.0 * self.sharpness / self.rho ** 2

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in self.__dict__.items() if k != "perturbation"}
        d["curvature_estimate"] = self.curvature_estimate
        return d


def worst_case_sharpness(
    objective: Any,
    rho: float,
    *,
    geometry: Geometry | None = None,
    steps: int = 20,
    restarts: int = 0,
    schedule: str = "apgd",
    step_size: float | None = None,
    seed: int = 0,
    batch_size: int | None = None,
    max_batches: int | None = None,
    direction: torch.Tensor | None = None,
    memory: int = MEMORY,
    tol: float = TOL,
    progress: bool = False,
) -> SharpnessResult:
    """``max_{||T^{-1} e||_p <= rho} L(w + e) - L(w)`` by ``steps`` ascent steps from ``e = 0`` plus
    ``restarts`` runs from random points of the ball (each step one gradient; the best point kept).

    ``geometry``: the ball (default ``Geometry()``: L2, T = 1). ``schedule``: ``apgd`` (default, converges;
    ``step_size`` its first step as a fraction of rho, default 2, ``memory`` its L2 subspace model) or GA-SAM's
    fixed ``constant`` / ``cosine`` steps (:func:`~landscape.sharpness.common.step_sizes`; ``steps = 1`` is
    SAM's / ASAM's single step). ``direction``: where to start if the gradient at ``w`` vanishes (default: a
    seeded random point). ``batch_size``: m-sharpness on at most ``max_batches`` mini-batches. ``tol``: the
    ``converged`` threshold. Cost (full data): ``(1 + restarts) * steps`` gradients and ``1 + restarts`` loss
    evaluations.
    """
    geometry = geometry or Geometry()
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    frac = default_step_size(steps, schedule) if step_size is None else float(step_size)
    settings = dict(rho=float(rho), geometry=geometry.to_dict(), steps=steps, restarts=restarts, schedule=schedule,
                    step_size=frac, seed=seed)
    ascent = dict(steps=steps, restarts=restarts, schedule=schedule, step_size=frac, direction=direction,
                  memory=memory, tol=tol)
    work = Cost(objective)
    if batch_size is None:
        with progress_bar(f"sharpness rho={rho:g}", (1 + restarts) * (steps + 1), progress) as advance:
            loss0, r, norm = maximize(objective, rho, geometry, seed=seed, progress=advance, **ascent)
        return SharpnessResult(sharpness=r.value - loss0, loss=loss0, perturbed_loss=r.value, work=work.to_dict(),
                               perturbation_norm=norm, run_values=r.run_values, perturbation=r.perturbation,
                               trace=_gains(r.trace, loss0), converged=r.converged,
                               relative_change=r.relative_change, start=r.start, **settings)

    rows: list[tuple[float, float]] = []
    traces: list[list[list[float]]] = []
    starts: Counter[str] = Counter()

    def one(batch: Any) -> float:
        work.add(batch)
        loss0, r, _ = maximize(batch, rho, geometry, seed=seed + len(rows), **ascent)
        rows.append((loss0, r.value))
        traces.append(_gains(r.trace, loss0))
        starts[r.start] += 1
        advance(1)
        return r.value - loss0

    with progress_bar(f"{batch_size}-sharpness rho={rho:g}", max_batches, progress) as advance:
        values, _ = per_batch(objective, batch_size, max_batches, seed, one)
    mean, std, n = mean_std(values, objective)
    loss_mean = mean_std([r[0] for r in rows], objective)[0]
    pert_mean = mean_std([r[1] for r in rows], objective)[0]
    trace = _mean_trace(traces, objective, 1 + restarts, steps + 1)
    rel, converged = convergence(trace, 0.0, tol)
    return SharpnessResult(sharpness=mean, loss=loss_mean, perturbed_loss=pert_mean, work=work.to_dict(),
                           batch_size=batch_size, num_batches=n, std=std, trace=trace, converged=converged,
                           relative_change=rel, start=", ".join(f"{k} {c}" for k, c in sorted(starts.items())),
                           **settings)


def _mean_trace(traces: list[list[list[float]]], objective: Any, runs: int, length: int) -> list[list[float]]:
    """The mean over the batches (of all processes: one summation) of their traces."""
    total = torch.zeros(runs * length + 1, dtype=torch.float64)
    for t in traces:
        total[:-1] += torch.tensor(t, dtype=torch.float64).reshape(-1)
    total[-1] = len(traces)
    total = objective.reduce_sum(total.to(objective.device)).cpu()
    if not total[-1] > 0:
        return []
    return (total[:-1] / total[-1]).reshape(runs, length).tolist()


def _gains(trace: list[list[float]], loss0: float) -> list[list[float]]:
    return [[v - loss0 for v in run] for run in trace]


def maximize(obj: Any, rho: float, geometry: Geometry, *, seed: int = 0, progress: Any = None,
             at_w: tuple[float, torch.Tensor] | None = None, **ascent: Any) -> tuple[float, AscentResult, float]:
    """``(L(w), the ascent's result, ||T^{-1} e*||_p)`` of ``max L(w + e)`` over the ball on one objective
    (``ascent``: :func:`~landscape.sharpness.common.projected_ascent`'s options); the gradient at ``w``
    (``at_w = (L(w), grad L(w))`` when the caller has it) is reused for the first step."""
    w0 = obj.w0
    loss0, g0 = obj.loss_and_grad() if at_w is None else at_w
    region = Region.of(geometry, obj, grad=g0 if geometry.needs_grad else None)
    first = [(loss0, g0)]

    def value_and_grad(e: torch.Tensor) -> tuple[float, torch.Tensor]:
        if first and not bool(e.any()):  # e = 0: reuse the gradient at w
            return first.pop()
        return obj.loss_and_grad(w0 + e)

    r = projected_ascent(value_and_grad, region, rho, seed=seed, value=lambda e: obj.loss(w0 + e), progress=progress,
                         **ascent)
    return loss0, r, region.norm(r.perturbation)


__all__ = ["SharpnessResult", "maximize", "worst_case_sharpness"]
