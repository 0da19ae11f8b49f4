"""The surrogate gap of GSAM (Zhuang et al. 2022, eq. 4 and Lemma 3.3).

    h(w) = max_{||e|| <= rho} L(w + e) - L(w)  ~  L(w + rho g / ||g||) - L(w),      g = grad L(w)

and at a local minimum ``lambda_max(H) ~ 2 h / rho^2`` for small ``rho``. The step ``e = rho g / ||g||`` is the
:class:`~landscape.geometry.Geometry`'s steepest ascent (``rho T^2 g / ||T g||_2`` with another ``T``).

Away from a minimum the first-order term dominates: ``h = rho ||T g||_q + (rho^2 / 2) u^T H u + O(rho^3)``
with ``u = e / rho``, so ``2 h / rho^2 ~ 2 ||T g||_q / rho`` grows without bound as ``rho -> 0``. The result
therefore also reports ``first_order = rho ||T g||_q`` and ``second_order_estimate = 2 (h - first_order) / rho^2``
(the curvature along ``u``).

``steps = 1`` (default) is the paper's definition. ``steps > 1`` offers the maximizer itself: the shared ascent
of worst-case sharpness (:func:`~landscape.sharpness.common.projected_ascent`, ``steps`` gradients), whose value
tends to ``h``'s first form as the steps grow. If the gradient *vanishes*
(:func:`~landscape.sharpness.common.vanishing`: at an exact minimum, e.g. of an analytic function, or after
full-batch descent has converged) ``g / ||g||`` is undefined: the result says so (``gradient_vanishes``,
``method = "ascent"``) and ``h`` is the ascent's maximum over the ball (``max(steps, 20)`` gradients, starting
along ``direction``, e.g. the top Hessian eigenvector, or at a seeded random point), never a single random probe.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from landscape.geometry import Geometry, Region
from landscape.sharpness.common import MEMORY, TOL, Cost, vanishing
from landscape.sharpness.worst_case import maximize

FALLBACK_STEPS = 20
"""Ascent steps used where the gradient vanishes and ``steps`` asks for fewer."""


@dataclass
class SurrogateGapResult:
    """``gap``: ``h = L(w + e) - L(w)``; ``estimate``: ``2 h / rho^2``; ``first_order``: ``rho ||T g||_q``;
    ``second_order_estimate``: ``2 (h - first_order) / rho^2``; ``grad_norm``: ``||T g||_q`` at ``w``;
    ``method``: ``gradient`` (GSAM's single step) or ``ascent`` (the maximizer; ``trace``, ``converged``,
    ``relative_change`` and ``start`` then describe it); ``gradient_vanishes``: ``g / ||g||`` was undefined."""

    rho: float
    gap: float
    estimate: float
    first_order: float
    second_order_estimate: float
    loss: float
    perturbed_loss: float
    grad_norm: float
    steps: int
    geometry: dict[str, Any]
    seed: int
    work: dict[str, int]
    method: str = "gradient"
    gradient_vanishes: bool = False
    converged: bool | None = None
    relative_change: float | None = None
    start: str | None = None
    trace: list[list[float]] | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def surrogate_gap(objective: Any, rho: float, *, geometry: Geometry | None = None, steps: int = 1, seed: int = 0,
                  direction: torch.Tensor | None = None, memory: int = MEMORY, tol: float = TOL) -> SurrogateGapResult:
    """``h = L(w + rho g / ||g||) - L(w)`` and ``2 h / rho^2`` (GSAM Lemma 3.3; ``steps = 1``, one gradient and one
    loss), or with ``steps > 1`` the ascent's ``max_{||T^{-1} e||_p <= rho} L(w + e) - L(w)`` (``steps``
    gradients); see the module docstring for a vanishing gradient. ``geometry``: default L2, T = 1."""
    geometry = geometry or Geometry()
    if rho <= 0 or steps < 1:
        raise ValueError(f"need rho > 0 and steps >= 1, got rho={rho}, steps={steps}")
    work = Cost(objective)
    w0 = objective.w0
    loss0, g = objective.loss_and_grad()
    region = Region.of(geometry, objective, grad=g)
    dual = region.dual_norm(g)
    gone = vanishing(region, g, rho, loss0)
    extra: dict[str, Any] = {}
    if steps == 1 and not gone:
        perturbed = objective.loss(w0 + region.ascent(g, rho))
    else:
        _, r, _ = maximize(objective, rho, geometry, seed=seed, steps=max(steps, FALLBACK_STEPS) if gone else steps,
                           direction=direction, memory=memory, tol=tol, at_w=(loss0, g))
        perturbed = r.value
        extra = dict(method="ascent", converged=r.converged, relative_change=r.relative_change, start=r.start,
                     trace=[[v - loss0 for v in run] for run in r.trace])
    h = perturbed - loss0
    first = rho * dual
    return SurrogateGapResult(rho=float(rho), gap=h, estimate=2 * h / rho ** 2, first_order=first,
                              second_order_estimate=2 * (h - first) / rho ** 2, loss=loss0, perturbed_loss=perturbed,
                              grad_norm=dual, steps=steps, geometry=geometry.to_dict(), seed=seed, work=work.to_dict(),
                              gradient_vanishes=gone, **extra)


__all__ = ["FALLBACK_STEPS", "SurrogateGapResult", "surrogate_gap"]
