"""The gradient norm regularizer of GNR (gnr.txt, Def. 2.1, eqs. 1, 2, 6).

    R_rho(w) = rho * max_{w' in B(w, rho)} ||grad L(w')||_2                          (eq. 1)

found by projected ascent on ``||grad L||`` whose gradient is a Hessian-vector product,

    grad ||grad L(w')|| = H(w') g(w') / ||g(w')||                                      (eq. 6)

(one gradient and one HVP per step; no HVP where ``g = 0``). At a minimum of a quadratic
``R / rho^2 = lambda_max(H)`` (Prop. 2.1), the estimate reported beside Lanczos'. The ball is the shared
:class:`~landscape.geometry.Geometry` (default L2 with ``T = 1``, the paper's ``B(w, rho)``); the norm
maximized is always the Euclidean ``||grad L||``. Since ``R >= R_SAM`` (Prop. 2.4), it separates minima that
SAM's sharpness cannot, e.g. ``cos(pi t + pi)`` and ``cos(3 pi t + pi)`` at ``t = 0``, ``rho = 1``: ``R_SAM = 2``
for both, ``R = pi`` and ``3 pi``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from landscape.geometry import Geometry, Region
from landscape.progress import progress_bar
from landscape.sharpness.common import MEMORY, Cost, default_step_size, projected_ascent


@dataclass
class GNRResult:
    """``R``: ``rho * max ||grad L(w + e)||``; ``estimate``: ``R / rho^2``; ``max_grad_norm``: the maximum found;
    ``grad_norm``: ``||grad L(w)||``; ``perturbation_norm``: ``||T^{-1} e*||_p`` of the maximizer ``e*``
    (``perturbation``, a flat vector; not in :meth:`to_dict`); ``trace[r][k]``: run ``r``'s best ``||grad L||``
    over its first ``k`` steps, ``converged`` / ``relative_change`` / ``start`` as in worst-case sharpness."""

    rho: float
    R: float
    estimate: float
    max_grad_norm: float
    grad_norm: float
    perturbation_norm: float
    run_values: list[float]
    steps: int
    restarts: int
    schedule: str
    step_size: float
    geometry: dict[str, Any]
    seed: int
    work: dict[str, int]
    trace: list[list[float]] | None = None
    converged: bool = False
    relative_change: float | None = None
    start: str = "gradient"
    perturbation: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "perturbation"}


def gradient_norm_regularizer(
    objective: Any,
    rho: float,
    *,
    geometry: Geometry | None = None,
    steps: int = 20,
    restarts: int = 0,
    schedule: str = "apgd",
    step_size: float | None = None,
    seed: int = 0,
    direction: torch.Tensor | None = None,
    memory: int = MEMORY,
    progress: bool = False,
) -> GNRResult:
    """``R = rho max_{||T^{-1} e||_p <= rho} ||grad L(w + e)||`` by ``steps`` ascent steps along ``H g / ||g||``
    (the shared :func:`~landscape.sharpness.common.projected_ascent`, Auto-PGD-style by default) from ``e = 0``
    and from ``restarts`` random points of the ball; at an exact minimum (``g = 0``: no direction) the first
    step goes along ``direction`` (e.g. the top Hessian eigenvector) or to a seeded random point.
    Cost: ``(1 + restarts) * (steps + 1)`` gradients and at most ``(1 + restarts) * steps`` HVPs."""
    geometry = geometry or Geometry()
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    frac = default_step_size(steps, schedule) if step_size is None else float(step_size)
    work = Cost(objective)
    w0 = objective.w0
    region = Region.of(geometry, objective)

    def value_and_grad(e: torch.Tensor) -> tuple[float, torch.Tensor]:
        w = w0 + e
        g = objective.grad(w)
        n = g.norm()
        if not bool(n > 0):
            return 0.0, torch.zeros_like(g)
        return float(n), objective.hvp(g / n, w)

    with progress_bar(f"GNR rho={rho:g}", (1 + restarts) * (steps + 1), progress) as advance:
        r = projected_ascent(value_and_grad, region, rho, steps=steps, restarts=restarts, schedule=schedule,
                             step_size=frac, seed=seed, value=lambda e: float(objective.grad(w0 + e).norm()),
                             direction=direction, memory=memory, progress=advance)
    return GNRResult(rho=float(rho), R=rho * r.value, estimate=r.value / rho, max_grad_norm=r.value,
                     grad_norm=r.start_value, perturbation_norm=region.norm(r.perturbation), run_values=r.run_values,
                     steps=steps, restarts=restarts, schedule=schedule, step_size=frac,
                     geometry=geometry.to_dict(), seed=seed, work=work.to_dict(), trace=r.trace, converged=r.converged,
                     relative_change=r.relative_change, start=r.start, perturbation=r.perturbation)


__all__ = ["GNRResult", "gradient_norm_regularizer"]
