"""Spectral density by stochastic Lanczos quadrature (Ghorbani, Krishnan & Xiao, 2019).

Each of ``num_runs`` runs starts Lanczos (full reorthogonalization; on a ``low_memory`` operator the
three-term recurrence without it, :func:`~landscape.curvature.three_term.three_term_tridiagonals`) from a
normalized Rademacher vector ``v`` and takes ``num_steps`` steps; the
eigen-decomposition ``T = S diag(theta) S^T`` of its tridiagonal matrix gives
Gauss quadrature nodes ``theta_j`` and weights ``tau_j = S_{1j}^2``
(``sum_j tau_j = 1``), so that ``v^T f(A) v ~ sum_j tau_j f(theta_j)``. The
density of the ``P`` eigenvalues, ``phi(t) = (1/P) sum_i delta(t - lambda_i)``,
is estimated as

    phi_sigma(t) = (1/R) sum_r sum_j tau_{r,j} N(t; theta_{r,j}, sigma^2),

a mixture of Gaussians of standard deviation ``sigma`` (default
``sigma_rel * (max theta - min theta)``), evaluated on ``grid_size`` points
spanning ``[min theta - 5 sigma, max theta + 5 sigma]`` and renormalized so
that the trapezoidal integral over the grid is exactly 1. The runs advance
together: every step is one block product of ``num_runs`` vectors.
``trace_estimate = P * mean_r sum_j tau_{r,j} theta_{r,j}`` (= Hutchinson on the same vectors).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.integrate import trapezoid
from scipy.linalg import eigh_tridiagonal

from landscape.curvature.lanczos import krylov_basis
from landscape.curvature.three_term import three_term_tridiagonals
from landscape.curvature.operators import Work, as_operator
from landscape.curvature.trace import rademacher
from landscape.progress import progress_bar


@dataclass
class DensityResult:
    """``density`` on ``grid`` (integrates to 1) and the raw quadrature ``nodes``/``weights`` ``(R, m)``."""

    grid: np.ndarray
    density: np.ndarray
    nodes: np.ndarray
    weights: np.ndarray
    sigma: float
    trace_estimate: float
    num_matvecs: int
    num_passes: int
    extras: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"grid": self.grid.tolist(), "density": self.density.tolist(), "nodes": self.nodes.tolist(),
                "weights": self.weights.tolist(), "sigma": self.sigma, "trace_estimate": self.trace_estimate,
                "matvecs": self.num_matvecs, "passes": self.num_passes, **self.extras}


def spectral_density(
    op: Any,
    *,
    num_runs: int = 4,
    num_steps: int = 64,
    sigma: float | None = None,
    sigma_rel: float = 0.01,
    grid_size: int = 1000,
    seed: int = 0,
    basis_dtype: torch.dtype = torch.float64,
    basis_bytes: int = 8 << 30,
    progress: bool = False,
) -> DensityResult:
    """SLQ density of ``op`` (see the module docstring for the estimator and the smoothing).

    Runs advance together while their Lanczos bases fit ``basis_bytes``; more runs go in turns. On a
    ``low_memory`` operator all runs advance together in three ``(num_runs, P)`` blocks of its dtype.
    """
    op = as_operator(op)
    P = op.num_params
    m = min(num_steps, P)
    if num_runs < 1 or m < 1:
        raise ValueError("num_runs and num_steps must be >= 1")
    work = Work(op)
    gen = torch.Generator().manual_seed(seed)
    low = bool(getattr(op, "low_memory", False))
    if low:  # three (R, P) blocks in the operator's dtype instead of R bases of m vectors
        basis_dtype = op.dtype
    together = num_runs if low else max(1, min(num_runs, basis_bytes // (m * P * torch.finfo(basis_dtype).bits // 8)))
    starts = rademacher(num_runs, P, gen).to(op.device, basis_dtype)
    with progress_bar(f"spectral density ({op.name}, {num_runs} runs)", m * -(-num_runs // together),
                      progress) as advance:
        if low:
            T = three_term_tridiagonals(op, starts, m, advance)
        else:
            T = np.concatenate([krylov_basis(op, V0, m, gen, basis_dtype, advance)[1]
                                for V0 in starts.split(together)])
    nodes, weights = np.zeros((num_runs, m)), np.zeros((num_runs, m))
    for r in range(num_runs):
        theta, S = eigh_tridiagonal(np.diagonal(T[r]).copy(), np.diagonal(T[r], 1).copy())
        nodes[r], weights[r] = theta, S[0] ** 2
    lo, hi = float(nodes.min()), float(nodes.max())
    if sigma is None:
        sigma = sigma_rel * (hi - lo) if hi > lo else max(abs(hi), 1.0) * sigma_rel
    grid = np.linspace(lo - 5 * sigma, hi + 5 * sigma, grid_size)
    z = (grid[None, :] - nodes.reshape(-1, 1)) / sigma
    density = (weights.reshape(-1, 1) * np.exp(-0.5 * z**2)).sum(0) / (num_runs * sigma * np.sqrt(2 * np.pi))
    density /= trapezoid(density, grid)
    return DensityResult(grid=grid, density=density, nodes=nodes, weights=weights, sigma=float(sigma),
                         trace_estimate=float(P * (weights * nodes).sum(1).mean()), num_matvecs=work.matvecs,
                         num_passes=work.passes)


__all__ = ["DensityResult", "spectral_density"]
