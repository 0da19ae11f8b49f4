"""The surrogate gap of GSAM (Zhuang et al. 2022, eq. 4 and Lemma 3.3).

    h(w) = max_{||e|| <= rho} L(w + e) - L(w)  ~  L(w + rho g / ||g||) - L(w),      g = grad L(w)

and at a local minimum ``lambda_max(H) ~ 2 h / rho^2`` for small ``rho``. The step ``e = rho g / ||g||`` is the
:class:`~landscape.geometry.Geometry`'s steepest ascent (``rho T^2 g / ||T g||_2`` with another ``T``).

Away from a minimum the first-order term dominates: ``h = rho ||T g||_q + (rho^2 / 2) u^T H u + O(rho^3)``
with ``u = e / rho``, so ``2 h / rho^2 ~ 2 ||T g||_q / rho`` grows without bound as ``rho -> 0``. The result
therefore also reports ``first_order = rho ||T g||_q`` and ``second_order_estimate = 2 (h - first_order) / rho^2``
(the curvature along ``u``).

``steps > 1`` refines the direction by normalized gradient ascent on the sphere,
``e_k = rho T^2 g_k / ||T g_k||`` with ``g_k = grad L(w + e_{k-1})``, which at a minimum of a quadratic is
power iteration on ``H`` (so ``2 h / rho^2 -> lambda_max``). If ``g`` is zero, or too small for its step to be
normalized (``||T g||`` below the geometry's floor ``1e-12``, e.g. at a minimum of an analytic function or after
full-batch descent has converged), ``e_0`` is a seeded random point on the sphere and the first direction is
``grad L(w + e_0)``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from landscape.geometry import Geometry, Region
from landscape.sharpness.common import Cost


@dataclass
class SurrogateGapResult:
    """``gap``: ``h = L(w + e) - L(w)``; ``estimate``: ``2 h / rho^2``; ``first_order``: ``rho ||T g||_q``;
    ``second_order_estimate``: ``2 (h - first_order) / rho^2``; ``grad_norm``: ``||T g||_q`` at ``w``."""

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

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def surrogate_gap(objective: Any, rho: float, *, geometry: Geometry | None = None, steps: int = 1,
                  seed: int = 0) -> SurrogateGapResult:
    """``h = L(w + rho g / ||g||) - L(w)`` and ``2 h / rho^2`` (GSAM Lemma 3.3); ``steps`` ascent directions
    (1: GSAM's single step; each further one costs a gradient). ``geometry``: default L2, T = 1."""
    geometry = geometry or Geometry()
    if rho <= 0 or steps < 1:
        raise ValueError(f"need rho > 0 and steps >= 1, got rho={rho}, steps={steps}")
    work = Cost(objective)
    w0 = objective.w0
    loss0, g = objective.loss_and_grad()
    region = Region.of(geometry, objective, grad=g)
    dual = region.dual_norm(g)
    e = region.ascent(g, rho)
    if not region.norm(e) > 0.5 * rho:  # g = 0, or too small to normalize (||T g|| under the geometry's floor)
        probe = region.sample(rho, "boundary", torch.Generator().manual_seed(seed))
        e = region.ascent(objective.grad(w0 + probe), rho)
    for _ in range(steps - 1):
        e = region.ascent(objective.grad(w0 + e), rho)
    perturbed = objective.loss(w0 + e)
    h = perturbed - loss0
    first = rho * dual
    return SurrogateGapResult(rho=float(rho), gap=h, estimate=2 * h / rho ** 2, first_order=first,
                              second_order_estimate=2 * (h - first) / rho ** 2, loss=loss0, perturbed_loss=perturbed,
                              grad_norm=dual, steps=steps, geometry=geometry.to_dict(), seed=seed, work=work.to_dict())


__all__ = ["SurrogateGapResult", "surrogate_gap"]
