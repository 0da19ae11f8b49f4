"""Extreme eigenvalues by thick-restart Lanczos with full reorthogonalization.

For a symmetric ``A`` and an orthonormal basis ``Q_m = [q_1..q_m]`` built from
a random start, ``T_m = Q_m^T A Q_m`` (tridiagonal, or arrowhead-plus-
tridiagonal after a restart) satisfies ``A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T``.
A Ritz pair ``(theta_i, y_i = Q_m s_i)`` of ``T_m`` then has the residual
``||A y_i - theta_i y_i|| = |beta_m s_{m,i}|`` for free; a wanted pair is
converged once that is ``<= tol * max(|theta_i|, sqrt(eps) * max|theta|)``.

Every new vector is orthogonalized twice against the whole basis (classical
Gram-Schmidt, "twice is enough") in ``basis_dtype`` (float64 by default, even
when the operator runs in float32) and ``T`` is filled with the computed
projections. When the basis reaches ``ncv`` vectors it is restarted with the
wanted Ritz vectors plus as many again nearest to them (Wu & Simon's thick
restart), so memory stays ``ncv * P``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from landscape.curvature.operators import LinearOperator, Work, as_operator
from landscape.progress import progress_bar

WHICH = ("largest", "smallest", "both")


@dataclass
class EigenResult:
    """Eigenvalues of a symmetric operator.

    Order: ``largest`` descending, ``smallest`` ascending, ``both`` the ``k``
    largest descending then the ``k`` smallest ascending; ``power`` in the order found.
    ``residuals`` are true ``||A v - lambda v||`` (``k`` extra products, counted);
    ``residual_estimates`` are Lanczos' free ``|beta_m s_{m,i}|``.
    """

    eigenvalues: np.ndarray
    method: str
    which: str
    converged: bool
    num_matvecs: int
    num_passes: int
    num_iterations: int
    tol: float
    residual_estimates: np.ndarray | None = None
    residuals: np.ndarray | None = None
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without eigenvectors)."""
        def lst(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(x) for x in a]

        return {"method": self.method, "which": self.which, "eigenvalues": lst(self.eigenvalues),
                "residuals": lst(self.residuals), "residual_estimates": lst(self.residual_estimates),
                "converged": self.converged, "tol": self.tol, "matvecs": self.num_matvecs,
                "passes": self.num_passes, "iterations": self.num_iterations}


def lanczos(
    op: Any,
    k: int = 5,
    *,
    which: str = "largest",
    tol: float = 1e-6,
    max_matvecs: int | None = None,
    ncv: int | None = None,
    v0: torch.Tensor | None = None,
    seed: int = 0,
    return_vectors: bool = False,
    residuals: bool = False,
    basis_dtype: torch.dtype = torch.float64,
    progress: bool = False,
) -> EigenResult:
    """The ``k`` extreme eigenvalues of ``op`` (an operator, or an objective = its Hessian).

    ``which``: ``largest``/``smallest`` algebraic, or ``both`` (``k`` at each end).
    ``ncv``: Krylov dimension before a restart (default ``2 * wanted + 20``, at most ``P``).
    ``max_matvecs``: cap on products (default ``max(20 * ncv, 500)``); if reached, ``converged`` is False.
    ``v0``: start vector (default a standard normal draw seeded by ``seed``).
    ``residuals``: also compute the true residuals (``k`` more products, one data pass).
    """
    op = as_operator(op)
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    P = op.num_params
    n_want = 2 * k if which == "both" else k
    if k < 1 or n_want > P:
        raise ValueError(f"need 1 <= k and {n_want} eigenvalues <= {P} parameters, got k={k}")
    ncv = min(P, ncv if ncv is not None else 2 * n_want + 20)
    if ncv < P and ncv < n_want + 2:
        raise ValueError(f"ncv={ncv} must be at least wanted + 2 = {n_want + 2}")
    max_matvecs = max_matvecs if max_matvecs is not None else max(20 * ncv, 500)
    work = Work(op)
    eps_op = torch.finfo(op.dtype).eps
    gen = torch.Generator().manual_seed(seed)

    Q = torch.zeros(1, ncv, P, dtype=basis_dtype, device=op.device)
    T = np.zeros((1, ncv, ncv))
    q = (torch.randn(P, generator=gen, dtype=torch.float64) if v0 is None else v0.detach().double().cpu())
    Q[0, 0] = (q / q.norm()).to(Q)
    j, steps, converged = 0, 0, False
    with progress_bar(f"Lanczos ({op.name}, top {k} {which})", max_matvecs, progress) as advance:
        while True:
            W, beta = krylov_step(op, Q, T, j)
            steps += 1
            m = j + 1
            theta, S = np.linalg.eigh(T[0, :m, :m])
            idx = _wanted(m, which, k)
            scale = float(np.abs(theta).max())
            est = np.abs(beta[0] * S[m - 1, idx])
            rel = est / np.maximum(np.abs(theta[idx]), max(np.sqrt(eps_op) * scale, np.finfo(float).tiny))
            advance(1, residual=f"{rel.max():.1e}")
            if m >= n_want and bool(np.all(rel <= tol)) or m == P:
                converged = True
                break
            if steps >= max_matvecs:
                break
            if m == ncv:  # thick restart: keep the wanted Ritz vectors and the nearest others
                keep = _keep(m, which, n_want)
                Q[0, : len(keep)] = torch.as_tensor(S[:, keep].T, dtype=basis_dtype, device=Q.device) @ Q[0, :m]
                T[:] = 0.0
                T[0, np.arange(len(keep)), np.arange(len(keep))] = theta[keep]
                j = len(keep)
            else:
                j = m
            Q[:, j] = next_vector(W, beta, Q[:, :j], np.array([scale]), gen)

    values = theta[idx]
    out = EigenResult(eigenvalues=values, method="lanczos", which=which, converged=converged,
                      num_matvecs=0, num_passes=0, num_iterations=steps, tol=tol, residual_estimates=est)
    if return_vectors or residuals:
        Y = torch.as_tensor(S[:, idx].T, dtype=basis_dtype, device=Q.device) @ Q[0, :m]
        if residuals:
            out.residuals = true_residuals(op, Y, values)
        if return_vectors:
            out.eigenvectors = Y
    out.num_matvecs, out.num_passes = work.matvecs, work.passes
    return out


def krylov_step(op: LinearOperator, Q: torch.Tensor, T: np.ndarray, j: int) -> tuple[torch.Tensor, np.ndarray]:
    """One Lanczos step for each of ``R`` independent runs (one block product).

    ``Q`` ``(R, n, P)`` holds orthonormal bases in its first ``j + 1`` rows per run; ``w_r = A q_{r,j}``
    is orthogonalized twice against them (classical Gram-Schmidt) and the coefficients fill column and
    row ``j`` of ``T`` ``(R, n, n)``. Returns the residuals ``W`` ``(R, P)`` and their norms ``beta``.
    """
    W = op.matvec(Q[:, j])
    B = Q[:, : j + 1]
    h = torch.einsum("rmp,rp->rm", B, W)
    W -= torch.einsum("rm,rmp->rp", h, B)
    h2 = torch.einsum("rmp,rp->rm", B, W)
    W -= torch.einsum("rm,rmp->rp", h2, B)
    coef = (h + h2).cpu().numpy()
    T[:, : j + 1, j] = coef
    T[:, j, : j + 1] = coef
    return W, W.norm(dim=1).cpu().numpy()


def next_vector(W: torch.Tensor, beta: np.ndarray, B: torch.Tensor, scale: np.ndarray,
                gen: torch.Generator) -> torch.Tensor:
    """``W / beta`` row by row; a run whose ``beta`` is at rounding level (its Krylov space is
    invariant) continues from a random direction orthogonal to its basis ``B[r]`` instead."""
    for r in np.flatnonzero(beta <= torch.finfo(W.dtype).eps * np.maximum(scale, 1e-300)):
        z = torch.randn(W.shape[1], generator=gen, dtype=torch.float64).to(W)
        for _ in range(2):
            z -= B[r].T @ (B[r] @ z)
        W[r] = z
    return W / W.norm(dim=1, keepdim=True)


def krylov_basis(op: LinearOperator, V0: torch.Tensor, steps: int, gen: torch.Generator,
                 basis_dtype: torch.dtype = torch.float64, advance: Any = None) -> tuple[torch.Tensor, np.ndarray]:
    """``steps`` Lanczos steps from each row of ``V0`` ``(R, P)``, all runs in one block product per step.

    Returns the orthonormal bases ``Q`` ``(R, m, P)`` and ``T = Q^T A Q`` ``(R, m, m)`` (tridiagonal up
    to rounding), ``m = min(steps, P)``.
    """
    R, P = V0.shape
    m = min(steps, P)
    Q = torch.zeros(R, m, P, dtype=basis_dtype, device=V0.device)
    T = np.zeros((R, m, m))
    Q[:, 0] = V0 / V0.norm(dim=1, keepdim=True)
    for j in range(m):
        W, beta = krylov_step(op, Q, T, j)
        if advance is not None:
            advance(1)
        if j + 1 < m:
            Q[:, j + 1] = next_vector(W, beta, Q[:, : j + 1], np.abs(T[:, : j + 1, : j + 1]).max(axis=(1, 2)), gen)
    return Q, T


def true_residuals(op: LinearOperator, Y: torch.Tensor, values: np.ndarray) -> np.ndarray:
    """``||A y_i - lambda_i y_i||`` for the rows ``y_i`` of ``Y`` (one block product)."""
    AY = op.matvec(Y)
    lam = torch.as_tensor(values, dtype=Y.dtype, device=Y.device)[:, None]
    return (AY - lam * Y).norm(dim=1).cpu().numpy()


def _wanted(m: int, which: str, k: int) -> np.ndarray:
    """Indices (into ascending Ritz values of size ``m``) of the wanted ones, in output order."""
    top = np.arange(m - 1, max(-1, m - 1 - k), -1)
    bottom = np.arange(0, min(m, k))
    if which == "largest":
        return top
    if which == "smallest":
        return bottom
    return np.concatenate([top, bottom]) if m >= 2 * k else np.arange(m - 1, -1, -1)


def _keep(m: int, which: str, n_want: int) -> np.ndarray:
    """Ritz indices kept at a restart: the wanted plus half the free room, nearest the wanted end(s)."""
    n_keep = min(m - 1, n_want + max(1, (m - n_want) // 2))
    if which == "largest":
        return np.arange(m - n_keep, m)
    if which == "smallest":
        return np.arange(n_keep)
    lo = n_keep // 2
    return np.concatenate([np.arange(lo), np.arange(m - (n_keep - lo), m)])


__all__ = ["EigenResult", "WHICH", "krylov_basis", "krylov_step", "lanczos", "next_vector", "true_residuals"]
