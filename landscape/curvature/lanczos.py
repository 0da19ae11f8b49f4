"""Extreme eigenvalues by thick-restart Lanczos with full reorthogonalization.

For a symmetric ``A`` and an orthonormal basis ``Q_m = [q_1..q_m]`` built from
a random start, ``T_m = Q_m^T A Q_m`` (tridiagonal, or arrowhead-plus-
tridiagonal after a restart) satisfies ``A Q_m = Q_m T_m + beta_m q_{m+1} e_m^T``.
A Ritz pair ``(theta_i, y_i = Q_m s_i)`` of ``T_m`` then has the residual
``||A y_i - theta_i y_i|| = |beta_m s_{m,i}|`` for free; a wanted pair is
converged once that is ``<= tol * max(|theta_i|, sqrt(eps) * max|theta|)``.

Precision-aware stopping: a computed product is ``(A + E) v``, and no iteration resolves an
eigenvalue better than ``E`` does. ``E``'s size is estimated for free from the symmetry defects
``q_i . A q_j - q_j . A q_i`` of the Lanczos vectors (:class:`NoiseFloor`); the floor of eigenvalue
``i`` is ``noise_i = max(sigma, eps * |theta_i|)`` (``eps`` of the operator's dtype). The run also
stops once every wanted Ritz value's error bound ``min(r_i, r_i^2 / gap_i)`` (with vectors requested:
its residual ``r_i``) is below its floor, and reports ``accuracy_i = bound_i + noise_i`` next to each
eigenvalue. In float32 this ends the iterations that only chase rounding; a float64 operator's floor
(``~1e-16 |theta|``) keeps its eigenvalues converging to machine precision.

Every new vector is orthogonalized twice against the whole basis (classical
Gram-Schmidt, "twice is enough") in ``basis_dtype`` (float64 by default, even
when the operator runs in float32) and ``T`` is filled with the computed
projections. When the basis reaches ``ncv`` vectors it is restarted with the
wanted Ritz vectors plus as many again nearest to them (Wu & Simon's thick
restart), so memory stays ``ncv * P``. On a ``low_memory`` operator the largest eigenvalues (without
vectors) take three vectors instead: Lanczos without reorthogonalization (:mod:`.three_term`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from landscape.curvature.operators import LinearOperator, Work, as_operator
from landscape.curvature.three_term import three_term_lanczos
from landscape.progress import progress_bar

WHICH = ("largest", "smallest", "both")
MIN_NOISE_SAMPLES = 3
LOW_MEMORY_EXTRA = 3  # default Krylov vectors beyond the wanted ones on a low_memory operator


@dataclass
class EigenResult:
    """Eigenvalues of a symmetric operator.

    Order: ``largest`` descending, ``smallest`` ascending, ``both`` the ``k``
    largest descending then the ``k`` smallest ascending; ``power`` in the order found.
    ``residuals`` are true ``||A v - lambda v||`` (``k`` extra products, counted);
    ``residual_estimates`` are Lanczos' free ``|beta_m s_{m,i}|``; ``error_bounds`` the Ritz-value
    bounds ``min(r_i, r_i^2 / gap_i)`` on them, ``noise`` each eigenvalue's floor from the operator's
    rounding, ``accuracy`` their sum; ``stopped_by`` is ``tol``, ``noise`` or ``max_matvecs``.
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
    error_bounds: np.ndarray | None = None
    noise: np.ndarray | None = None
    stopped_by: str | None = None
    eigenvectors: torch.Tensor | None = field(default=None, repr=False)

    @property
    def accuracy(self) -> np.ndarray | None:
        """Estimated absolute error of each eigenvalue: ``error_bounds + noise``."""
        if self.error_bounds is None:
            return None
        return self.error_bounds + (0.0 if self.noise is None else self.noise)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary (without eigenvectors)."""
        def lst(a: np.ndarray | None) -> list[float] | None:
            return None if a is None else [float(x) for x in a]

        return {"method": self.method, "which": self.which, "eigenvalues": lst(self.eigenvalues),
                "residuals": lst(self.residuals), "residual_estimates": lst(self.residual_estimates),
                "accuracy": lst(self.accuracy), "error_bounds": lst(self.error_bounds), "noise": lst(self.noise),
                "stopped_by": self.stopped_by, "converged": self.converged, "tol": self.tol,
                "matvecs": self.num_matvecs, "passes": self.num_passes, "iterations": self.num_iterations}


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
    basis_dtype: torch.dtype | None = None,
    precision_stop: bool = True,
    history: list[dict[str, Any]] | None = None,
    progress: bool = False,
) -> EigenResult:
    """The ``k`` extreme eigenvalues of ``op`` (an operator, or an objective = its Hessian).

    ``which``: ``largest``/``smallest`` algebraic, or ``both`` (``k`` at each end).
    ``ncv``: Krylov dimension before a restart (default ``2 * wanted + 20``, at most ``P``; on an operator
    with ``low_memory``, ``wanted + LOW_MEMORY_EXTRA``). A ``low_memory`` operator's ``largest`` eigenvalues
    without vectors, residuals, ``ncv`` or ``basis_dtype`` take three vectors instead (:mod:`.three_term`).
    ``basis_dtype``: the basis' dtype (default float64; with ``low_memory``, the operator's).
    ``max_matvecs``: cap on products (default ``max(20 * ncv, 500)``); if reached, ``converged`` is False.
    ``v0``: start vector (default a standard normal draw seeded by ``seed``); a block ``(r, P)``, e.g.
    the eigenvectors of a nearby checkpoint, starts from the sum of its normalized rows.
    ``residuals``: also compute the true residuals (``k`` more products, one data pass).
    ``precision_stop``: also stop when the eigenvalues reach the operator's noise floor (module doc).
    ``history``: if a list, one dict per step is appended (Ritz values, residual estimates, error
    bounds, noise floors) for convergence studies.
    """
    op = as_operator(op)
    if which not in WHICH:
        raise ValueError(f"which must be one of {WHICH}, got {which!r}")
    P = op.num_params
    n_want = 2 * k if which == "both" else k
    if k < 1 or n_want > P:
        raise ValueError(f"need 1 <= k and {n_want} eigenvalues <= {P} parameters, got k={k}")
    low = bool(getattr(op, "low_memory", False))
    work = Work(op)
    if (low and which == "largest" and ncv is None and basis_dtype is None and not (return_vectors or residuals)
            and P > ncv_default(n_want)):
        with progress_bar(f"Lanczos ({op.name}, top {k} {which}, 3 vectors)", max_matvecs or 500, progress) as advance:
            fields = three_term_lanczos(op, k, which, tol, max_matvecs or 500,
                                        start_vector(v0, P, torch.Generator().manual_seed(seed)), precision_stop,
                                        history, advance)
        if fields is not None:
            return EigenResult(method="lanczos", which=which, tol=tol, num_matvecs=work.matvecs,
                               num_passes=work.passes, **fields)
        ncv = min(P, ncv_default(n_want))  # an invariant Krylov space: restart with a basis
    if ncv is None:
        ncv = n_want + LOW_MEMORY_EXTRA if low else ncv_default(n_want)
    ncv = min(P, ncv)
    if basis_dtype is None:
        basis_dtype = op.dtype if low and op.dtype.is_floating_point else torch.float64
    if ncv < P and ncv < n_want + 2:
        raise ValueError(f"ncv={ncv} must be at least wanted + 2 = {n_want + 2}")
    max_matvecs = max_matvecs if max_matvecs is not None else max(20 * ncv, 500)
    eps_op = torch.finfo(op.dtype).eps
    gen = torch.Generator().manual_seed(seed)

    Q = torch.zeros(1, ncv, P, dtype=basis_dtype, device=op.device)
    T = np.zeros((1, ncv, ncv))
    Q[0, 0] = start_vector(v0, P, gen).to(Q)
    noise, beta_prev = NoiseFloor(), 0.0
    j, fresh, steps, converged, stopped_by = 0, 0, 0, False, "max_matvecs"
    probe: np.ndarray | None = None  # the wanted Ritz values when the Krylov space last became invariant
    with progress_bar(f"Lanczos ({op.name}, top {k} {which})", max_matvecs, progress) as advance:
        while True:
            W, beta = krylov_step(op, Q, T, j)
            noise.add(T[0, fresh:j, j], beta_prev=beta_prev if j > fresh else None)
            beta_prev = float(beta[0])
            steps += 1
            m = j + 1
            theta, S = np.linalg.eigh(T[0, :m, :m])
            idx = _wanted(m, which, k)
            scale = float(np.abs(theta).max())
            est = np.abs(beta[0] * S[m - 1, idx])
            rel, floor = relative_residuals(theta, idx, est, noise.sigma, eps_op)
            bound = eigenvalue_bounds(theta, idx, est)
            if history is not None:
                history.append({"matvecs": steps, "eigenvalues": theta[idx].copy(), "residual_estimates": est,
                                "error_bounds": bound, "noise": floor})
            advance(1, residual=f"{rel.max():.1e}")
            by_tol = m >= n_want and bool(np.all(rel <= tol)) or m == P
            by_noise = precision_stop and m >= n_want and noise.ready and bool(np.all(
                (est if return_vectors else bound) <= floor))
            if (by_tol or by_noise) and m < P and float(beta[0]) <= max(tol, eps_op ** 0.75) * max(scale, 1e-300):
                # an invariant Krylov space (to tol): every Ritz value passes, but eigenvalues outside it (the
                # other copies of a zero eigenvalue of a rank-deficient Hessian) may be more extreme; it goes on in
                # a direction orthogonal to it (random at rounding level) until a step leaves the wanted values
                # as they were
                values = theta[idx]
                settled = probe is not None and len(probe) == len(values) and bool(np.all(
                    np.abs(values - probe) <= np.maximum(tol * np.abs(values), floor)))
                probe = values.copy()
                by_tol, by_noise = settled and by_tol, settled and by_noise
            if by_tol:
                converged, stopped_by = True, "tol"
                break
            if by_noise:
                converged, stopped_by = True, "noise"
                break
            if steps >= max_matvecs:
                break
            if m == ncv:  # thick restart: keep the wanted Ritz vectors and the nearest others
                keep = _keep(m, which, n_want)
                rotate_rows(Q[0], torch.as_tensor(S[:, keep].T, dtype=basis_dtype, device=Q.device))
                T[:] = 0.0
                T[0, np.arange(len(keep)), np.arange(len(keep))] = theta[keep]
                j = fresh = len(keep)
            else:
                j = m
            Q[:, j] = next_vector(W, beta, Q[:, :j], np.array([scale]), gen)

    values = theta[idx]
    out = EigenResult(eigenvalues=values, method="lanczos", which=which, converged=converged,
                      num_matvecs=0, num_passes=0, num_iterations=steps, tol=tol, residual_estimates=est,
                      error_bounds=bound, noise=floor, stopped_by=stopped_by)
    if return_vectors or residuals:
        Y = torch.as_tensor(S[:, idx].T, dtype=basis_dtype, device=Q.device) @ Q[0, :m]
        if residuals:
            out.residuals = true_residuals(op, Y, values)
        if return_vectors:
            out.eigenvectors = Y
    out.num_matvecs, out.num_passes = work.matvecs, work.passes
    return out


def relative_residuals(theta: np.ndarray, idx: np.ndarray, residuals: np.ndarray, sigma: float,
                       eps: float) -> tuple[np.ndarray, np.ndarray]:
    """The residuals of the Ritz values ``theta[idx]`` relative to ``max(|theta_i|, sqrt(eps) max|theta|)`` (what
    ``tol`` bounds), and their noise floors ``max(sigma, eps |theta_i|)``."""
    scale = max(np.sqrt(eps) * float(np.abs(theta).max()), np.finfo(float).tiny)
    return residuals / np.maximum(np.abs(theta[idx]), scale), np.maximum(sigma, eps * np.abs(theta[idx]))


def ncv_default(n_want: int) -> int:
    """The default Krylov dimension before a restart: ``2 * wanted + 20``."""
    return 2 * n_want + 20


class NoiseFloor:
    """The operator's own rounding level ``sigma``, from symmetry defects that Lanczos gets for free.

    In exact arithmetic ``q_i . A q_j = q_j . A q_i`` for the Lanczos vectors since the last restart;
    the right side is known without a product (``beta_{j-1}`` for ``i = j - 1``, ``0`` for ``i < j - 1``,
    because the computed ``A q_i`` lies in ``span(q_0..q_{i+1})``). The computed left side minus it is
    the defect ``q_i . E q_j - q_j . E q_i`` of the computed product ``A + E``; ``sigma``, the RMS of
    the defects over ``sqrt 2``, estimates the size of ``q . E q'`` for unit ``q, q'`` (exact for an
    ``E`` with independent entries), the first-order eigenvalue perturbation ``y . E y``. A symmetric
    part of ``E`` leaves no defect: the floor also has ``eps * |theta|``.
    """

    def __init__(self) -> None:
        self.sum_sq, self.count = 0.0, 0

    def add(self, column: np.ndarray, beta_prev: float | None) -> None:
        """Column ``j`` of ``T`` over the rows since the restart (empty on its first step)."""
        if beta_prev is None or len(column) == 0:
            return
        d = np.array(column, dtype=float)
        d[-1] -= beta_prev
        self.sum_sq += float(d @ d) / 2.0
        self.count += len(d)

    @property
    def ready(self) -> bool:
        return self.count >= MIN_NOISE_SAMPLES

    @property
    def sigma(self) -> float:
        return float(np.sqrt(self.sum_sq / self.count)) if self.count else 0.0


def eigenvalue_bounds(theta: np.ndarray, idx: np.ndarray, residuals: np.ndarray) -> np.ndarray:
    """``min(r_i, r_i^2 / gap_i)``: bounds on ``|theta_i - lambda|`` for Ritz values ``theta[idx]`` with
    residuals ``r_i`` (Bauer-Fike, and Kato-Temple with ``gap_i`` the distance to the nearest other Ritz
    value, Parlett, *The Symmetric Eigenvalue Problem*, Sec. 11.7)."""
    if len(theta) < 2:
        return residuals.copy()
    D = np.abs(theta[idx, None] - theta[None, :])
    D[np.arange(len(idx)), idx] = np.inf
    gaps = D.min(axis=1)
    quad = np.divide(residuals**2, gaps, out=np.full_like(residuals, np.inf), where=gaps > 0)
    return np.minimum(residuals, quad)


def start_vector(v0: torch.Tensor | None, P: int, gen: torch.Generator) -> torch.Tensor:
    """Unit float64 start: ``v0`` (a vector, or the sum of the rows of a block, e.g. a nearby run's Ritz
    vectors), else a standard normal draw."""
    if v0 is None:
        q = torch.randn(P, generator=gen, dtype=torch.float64)
    else:
        V = v0.detach().double().cpu().reshape(-1, P)
        q = (V / V.norm(dim=1, keepdim=True)).sum(0)
    return q / q.norm()


def krylov_step(op: LinearOperator, Q: torch.Tensor, T: np.ndarray, j: int) -> tuple[torch.Tensor, np.ndarray]:
    """One Lanczos step for each of ``R`` independent runs (one block product).

    ``Q`` ``(R, n, P)`` holds orthonormal bases in its first ``j + 1`` rows per run; ``w_r = A q_{r,j}``
    is orthogonalized twice against them (classical Gram-Schmidt) and the coefficients fill column and
    row ``j`` of ``T`` ``(R, n, n)``. Returns the residuals ``W`` ``(R, P)`` and their norms ``beta``.
    """
    W = op.matvec(Q[:, j])
    B = Q[:, : j + 1]
    h = project_out(W, B)
    h2 = project_out(W, B)
    coef = (h + h2).cpu().numpy()
    T[:, : j + 1, j] = coef
    T[:, j, : j + 1] = coef
    return W, W.norm(dim=1).cpu().numpy()


def project_out(W: torch.Tensor, B: torch.Tensor) -> torch.Tensor:
    """``W_r -= B_r^T (B_r W_r)`` in place (no ``P``-sized temporary); returns the coefficients ``B_r W_r``."""
    h = torch.einsum("rmp,rp->rm", B, W)
    W.unsqueeze(2).baddbmm_(B.transpose(1, 2), h.unsqueeze(2), alpha=-1)
    return h


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
                 basis_dtype: torch.dtype = torch.float64, advance: Any = None,
                 stop: Callable[[torch.Tensor, np.ndarray, np.ndarray], bool] | None = None
                 ) -> tuple[torch.Tensor, np.ndarray]:
    """``steps`` Lanczos steps from each row of ``V0`` ``(R, P)``, all runs in one block product per step.

    Returns the orthonormal bases ``Q`` ``(R, m, P)`` and ``T = Q^T A Q`` ``(R, m, m)`` (tridiagonal up
    to rounding), ``m = min(steps, P)``; fewer where ``stop(Q, T, beta)``, called after each step but the last
    with the rows so far (``beta``: that step's residual norms), returns True.
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
            if stop is not None and stop(Q[:, : j + 1], T[:, : j + 1, : j + 1], beta):
                return Q[:, : j + 1].clone(), T[:, : j + 1, : j + 1].copy()
            Q[:, j + 1] = next_vector(W, beta, Q[:, : j + 1], np.abs(T[:, : j + 1, : j + 1]).max(axis=(1, 2)), gen)
    return Q, T


def rotate_rows(Q: torch.Tensor, C: torch.Tensor, columns: int = 1 << 14) -> None:
    """``Q[:r] = C @ Q[:m]`` in place for ``C`` ``(r, m)``, ``r <= m``, a slab of ``columns`` at a time, so the
    restart needs ``r * columns`` extra numbers, not ``r * P``."""
    for c in range(0, Q.shape[1], columns):
        Q[: len(C), c:c + columns] = C @ Q[: C.shape[1], c:c + columns]


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
