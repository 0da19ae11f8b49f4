"""Extreme eigenvalues in three vectors: Lanczos without reorthogonalization (the low-memory mode).

The recurrence ``beta_j q_{j+1} = A q_j - alpha_j q_j - beta_{j-1} q_{j-1}`` keeps only ``q_{j-1}``, ``q_j``
and the product, so the workspace is ``3 P`` numbers instead of a restarted basis' ``ncv P``. In finite
precision the ``q_j`` lose orthogonality as Ritz values converge (Paige), and ``T_m = tridiag(beta, alpha,
beta)`` acquires copies of converged eigenvalues. Its eigenvalues are read as Cullum and Willoughby do
(*Lanczos Algorithms for Large Symmetric Eigenvalue Computations*, Sec. 4.5):

* spurious: a Ritz value that is also an eigenvalue of ``T_m`` without its first row and column, a copy
  in transit that approximates no eigenvalue of ``A``. By interlacing these are exactly the Ritz vectors
  ``s_i`` with no first component. Dropped are a Ritz value with ``|s_{1,i}| <= sqrt(eps_64) max_j |s_{1,j}|``
  (a genuine eigenvector so nearly orthogonal to a random start is improbable, and a converged copy's genuine
  twin keeps its weight), and an unconverged one (residual above the noise floor) within ``5 m eps_64 ||T||``
  of an eigenvalue of that smaller matrix that has a Ritz value of more start weight within its residual (the
  genuine value it is a copy of: while a copy forms, the genuine value's own residual rises and it sits by
  an eigenvalue of the smaller matrix too, so it is kept as the heaviest of its neighbourhood);
* the others are grouped into clusters whose members lie within ``COPY_SIGMAS`` noise floors of each other:
  the copies of one eigenvalue, each perturbed by the operator's noise (a float64 model that computes in
  float32 inside, as RMSNorm layers do, gave copies 2 noise floors apart). A cluster is reported once, as its
  member with the smallest residual estimate ``r = |beta_m s_{m,i}|`` (Paige: still the residual of that Ritz
  pair), with the error bound ``min(r, r^2 / gap)`` (Kato-Temple, ``gap`` the distance to the nearest Ritz value
  outside the cluster).

Stopping is :func:`~landscape.curvature.lanczos.lanczos`'s: ``r <= tol |theta|`` for every wanted value, or
every bound below the noise floor, estimated from the symmetry defects ``q_{j-1} . A q_j - beta_{j-1}``
(:class:`~landscape.curvature.lanczos.NoiseFloor`).

What it cannot do: return eigenvectors (no basis is kept), or tell a multiple eigenvalue, or two closer than
the noise floor, from a simple one. If the Krylov space becomes invariant before ``k`` eigenvalues are found
(a tiny or low-rank operator), :func:`three_term_lanczos` returns ``None`` and the caller restarts with a basis.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
from scipy.linalg import eigh_tridiagonal, eigvalsh_tridiagonal

from landscape.curvature.operators import LinearOperator

SPURIOUS_WEIGHT = 1.5e-8  # sqrt(eps_64): a Ritz vector with less of the start vector (relative) is spurious
SPURIOUS_TOL = 5.0  # an unconverged Ritz value within SPURIOUS_TOL * m * eps_64 * ||T|| of one of T-hat's is too
COPY_SIGMAS = 4.0  # copies of one eigenvalue each carry the noise sigma: within 4 sigma (~3 sigma of a difference)


def ritz_clusters(alpha: np.ndarray, beta: np.ndarray, beta_m: float, merge: float
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The distinct eigenvalue estimates of ``T = tridiag(beta, alpha, beta)`` (ascending), their residual
    estimates ``r`` and error bounds ``min(r, r^2/gap)``; ``merge``: the noise floor under which
    two Ritz values are copies of one eigenvalue (module doc)."""
    m = len(alpha)
    if m == 1:
        return alpha.copy(), np.array([abs(beta_m)]), np.array([abs(beta_m)])
    theta, S = eigh_tridiagonal(alpha, beta)
    est = np.abs(beta_m * S[-1])
    weight = np.abs(S[0])  # the start vector's component: ~0 exactly for copies of T-hat's eigenvalues
    mu = eigvalsh_tridiagonal(alpha[1:], beta[1:]) if m > 2 else alpha[1:]
    dist = np.abs(theta[:, None] - mu[None, :]).min(axis=1)
    near = np.abs(theta[:, None] - theta[None, :]) <= est[:, None]  # j within i's residual of it
    heavier_near = (near & (weight[None, :] > weight[:, None])).any(axis=1)
    in_transit = (dist <= SPURIOUS_TOL * m * np.finfo(float).eps * np.abs(theta).max()) & (est > merge) & heavier_near
    keep = (weight > SPURIOUS_WEIGHT * weight.max()) & ~in_transit
    theta, est = theta[keep], est[keep]
    starts = np.flatnonzero(np.concatenate([[True], np.diff(theta) > merge]))
    bounds = np.append(starts, len(theta))
    best = np.array([a + int(np.argmin(est[a:b])) for a, b in zip(bounds[:-1], bounds[1:])])
    values, R = theta[best], est[best]
    lo = np.concatenate([[np.inf], theta[bounds[1:-1]] - theta[bounds[1:-1] - 1]])  # gap below each cluster
    gap = np.minimum(lo, np.concatenate([lo[1:], [np.inf]]))
    quad = np.divide(R ** 2, gap, out=np.full_like(R, np.inf), where=gap > 0)
    return values, R, np.minimum(R, quad)


def recurrence_step(op: LinearOperator, q: torch.Tensor, q_prev: torch.Tensor, beta: torch.Tensor
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One step of the recurrence for each row of ``q`` ``(R, P)``: ``w = A q - beta q_prev - alpha q`` with
    ``alpha = q . A q`` after one local reorthogonalization against ``q`` (keeps ``alpha`` accurate), in place
    and fused (no ``(R, P)`` temporary). Returns ``w``, ``alpha`` and ``q_prev . A q`` (the symmetry-defect
    sample of :class:`~landscape.curvature.lanczos.NoiseFloor`)."""
    w = op.matvec(q)
    defect = torch.einsum("rp,rp->r", q_prev, w)
    w.addcmul_(q_prev, beta[:, None], value=-1)
    a = torch.einsum("rp,rp->r", q, w)
    w.addcmul_(q, a[:, None], value=-1)
    c = torch.einsum("rp,rp->r", q, w)
    w.addcmul_(q, c[:, None], value=-1)
    return w, a + c, defect


def three_term_lanczos(op: LinearOperator, k: int, which: str, tol: float, max_matvecs: int, q0: torch.Tensor,
                       precision_stop: bool, history: list[dict[str, Any]] | None, advance: Any) -> dict | None:
    """``k`` extreme eigenvalues of ``op`` (``which``: largest, smallest or both) from the unit start ``q0``,
    holding three ``P``-vectors in the operator's dtype (module doc). Returns the fields of an
    :class:`~landscape.curvature.lanczos.EigenResult` (no vectors), or ``None`` if the Krylov space became
    invariant before ``k`` distinct eigenvalues were found at each wanted end."""
    from landscape.curvature.lanczos import NoiseFloor, _wanted, relative_residuals

    n_want = 2 * k if which == "both" else k
    eps_op = torch.finfo(op.dtype).eps
    q = q0.to(device=op.device, dtype=op.dtype)[None]
    q_prev = torch.zeros_like(q)
    alpha: list[float] = []
    beta: list[float] = []
    noise = NoiseFloor()
    steps, converged, stopped_by = 0, False, "max_matvecs"
    while True:
        w, a, defect = recurrence_step(op, q, q_prev, q.new_tensor(beta[-1:] or [0.0]))
        if beta:
            noise.add(np.array([float(defect[0])]), beta_prev=beta[-1])
        alpha.append(float(a[0]))
        b = float(w.norm())
        steps += 1
        scale_T = max(float(np.abs(alpha).max()), max(beta, default=0.0))
        merge = max(COPY_SIGMAS * noise.sigma, eps_op * scale_T)
        values, R, bound = ritz_clusters(np.array(alpha), np.array(beta), b, merge)
        idx = _wanted(len(values), which, k)
        rel, floor = relative_residuals(values, idx, R[idx], noise.sigma, eps_op)
        if history is not None:
            history.append({"matvecs": steps, "eigenvalues": values[idx].copy(), "residual_estimates": R[idx],
                            "error_bounds": bound[idx], "noise": floor})
        advance(1, residual=f"{rel.max():.1e}")
        enough = len(values) >= n_want
        invariant = b <= eps_op ** 0.75 * max(scale_T, np.finfo(float).tiny)  # rounding level: A q_j in span
        if enough and bool(np.all(rel <= tol)):
            converged, stopped_by = True, "tol"
            break
        if precision_stop and enough and noise.ready and bool(np.all(bound[idx] <= floor)):
            converged, stopped_by = True, "noise"
            break
        if invariant:
            if not enough:
                return None
            converged, stopped_by = True, "tol"  # T's eigenvalues are A's on an invariant subspace
            break
        if steps >= max_matvecs:
            break
        beta.append(b)
        q_prev, q = q, w.div_(b)
    return {"eigenvalues": values[idx], "converged": converged, "num_iterations": steps,
            "residual_estimates": R[idx], "error_bounds": bound[idx], "noise": floor, "stopped_by": stopped_by}


def three_term_tridiagonals(op: LinearOperator, V0: torch.Tensor, steps: int, advance: Any = None
                            ) -> np.ndarray:
    """``steps`` Lanczos steps without reorthogonalization from each row of ``V0`` ``(R, P)``, all runs in one
    block product per step, holding three ``(R, P)`` blocks in ``V0``'s dtype. Returns the tridiagonals ``T``
    ``(R, m, m)``, ``m = min(steps, P)``. For quadrature (stochastic Lanczos quadrature) this is the classical
    recurrence: in finite precision the ghosts share their eigenvalue's weight ``S_{1j}^2``, and the Gauss rule
    stays accurate (Greenbaum 1989; Ubaru, Chen & Saad 2017). A run whose Krylov space becomes invariant (a
    rounding-level ``beta``) keeps its tridiagonal there and its remaining rows and columns are left out of the
    quadrature by a zero weight (its next vector is zero)."""
    R, P = V0.shape
    m = min(steps, P)
    T = np.zeros((R, m, m))
    q = V0 / V0.norm(dim=1, keepdim=True)
    q_prev = torch.zeros_like(q)
    beta = torch.zeros(R, dtype=q.dtype, device=q.device)
    eps = torch.finfo(q.dtype).eps
    for j in range(m):
        w, a, _ = recurrence_step(op, q, q_prev, beta)
        if advance is not None:
            advance(1)
        T[:, j, j] = a.cpu().numpy()
        if j + 1 == m:
            break
        beta = w.norm(dim=1)
        scale = torch.as_tensor(np.abs(T[:, : j + 1, : j + 1]).max(axis=(1, 2)), dtype=q.dtype, device=q.device)
        beta = torch.where(beta <= eps ** 0.75 * scale, torch.zeros_like(beta), beta)
        b = beta.cpu().numpy()
        T[:, j, j + 1] = T[:, j + 1, j] = b
        q_prev, q = q, w.div_(torch.where(beta > 0, beta, torch.ones_like(beta))[:, None])
        q[beta == 0] = 0.0
    return T


__all__ = ["recurrence_step", "ritz_clusters", "three_term_lanczos", "three_term_tridiagonals"]
