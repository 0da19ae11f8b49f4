"""Stochastic trace estimation: Hutchinson, Hutch++, XTrace and XNysTrace.

Hutchinson: ``tr(A) ~ (1/s) sum_i z_i^T A z_i`` with Rademacher ``z_i``
(unbiased; variance per sample ``2 (||A||_F^2 - sum_i A_ii^2)``).

Hutch++ (Meyer, Musco, Musco & Woodruff, 2021): sketch ``Y = A S`` with ``r``
Rademacher columns, ``Q = orth(Y)``; then ``tr(A) = tr(Q^T A Q) + tr(P A P)``
with ``P = I - Q Q^T``, the first term exact (``r`` more products), the second
by Hutchinson on the deflated ``P A P`` (small when ``A``'s spectrum decays).
Exact once ``r`` reaches the rank of ``A``. The ``lanczos`` sketch replaces ``orth(A S)`` by
an ``r``-step Lanczos basis, whose ``T = Q^T A Q`` comes free with it (``r`` products instead of
``2 r``) and which captures the dominant eigen-directions of a decaying spectrum much better
(a "Krylov-aware" Hutch++, cf. Chen & Hallman, 2023).

XTrace and XNysTrace (Epperly, Tropp & Webber, 2024) use every test vector twice: for ``m``
vectors ``Omega``, estimate ``i`` deflates ``A`` by a low-rank approximation built from the *other*
``m - 1`` vectors and applies Hutchinson with ``omega_i`` to the rest; the estimate is the mean of
the ``m`` exchangeable estimates and ``stderr = std(estimates, ddof=1) / sqrt(m)``. XTrace projects
onto ``range(A Omega_-i)`` (2 products per vector); XNysTrace (positive semi-definite ``A`` only)
uses the Nystrom approximation ``A Omega_-i (Omega_-i^T A Omega_-i)^-1 Omega_-i^T A`` (1 product
per vector). See :func:`xtrace` and :func:`xnystrace` for the closed forms.

All stop once ``stderr <= rtol * |estimate|`` (after ``min_samples``), where ``stderr`` is the
standard error of the mean of the samples, or when ``max_samples`` products are spent; with
``max_samples >= P`` every method (Hutch++ without an explicit ``rank``) returns the exact trace from ``P``
unit-vector products.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch

from landscape.curvature.lanczos import krylov_basis
from landscape.curvature.operators import LinearOperator, Work, as_operator
from landscape.progress import progress_bar


@dataclass
class TraceResult:
    """A trace estimate; ``samples`` are the Hutchinson terms ``z^T A z`` (of ``P A P`` for Hutch++), or the
    ``m`` exchangeable estimates of XTrace / XNysTrace (whose ``stderr`` is the jackknife's and
    ``stderr_exchangeable`` their spread's, ``std(samples, ddof=1) / sqrt(m)``)."""

    trace: float
    stderr: float
    method: str
    converged: bool
    num_matvecs: int
    num_passes: int
    rank: int = 0
    low_rank_trace: float = 0.0
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    stderr_exchangeable: float | None = None

    def to_dict(self) -> dict[str, Any]:
        out = {"method": self.method, "trace": self.trace, "stderr": self.stderr, "converged": self.converged,
               "samples": len(self.samples), "rank": self.rank, "low_rank_trace": self.low_rank_trace,
               "matvecs": self.num_matvecs, "passes": self.num_passes}
        if self.stderr_exchangeable is not None:
            out["stderr_exchangeable"] = self.stderr_exchangeable
        return out


def rademacher(n: int, P: int, gen: torch.Generator) -> torch.Tensor:
    """``(n, P)`` float64 random signs."""
    return torch.randint(0, 2, (n, P), generator=gen, dtype=torch.float64) * 2.0 - 1.0


def hutchinson(
    op: Any,
    *,
    max_samples: int = 200,
    rtol: float | None = 1e-2,
    min_samples: int = 10,
    block: int = 8,
    seed: int = 0,
    progress: bool = False,
) -> TraceResult:
    """Hutchinson's estimate of ``tr(op)`` (``block`` vectors per data pass)."""
    op = as_operator(op)
    work = Work(op)
    gen = torch.Generator().manual_seed(seed)
    with progress_bar(f"Hutchinson trace ({op.name})", max_samples, progress) as advance:
        if max_samples >= op.num_params:
            return _exact(op, work, "hutchinson", advance)
        samples, converged = _sample(op, gen, 0.0, max_samples, rtol, min_samples, block, advance)
    return TraceResult(trace=float(samples.mean()), stderr=_stderr(samples), method="hutchinson",
                       converged=converged, num_matvecs=work.matvecs, num_passes=work.passes, samples=samples)


SKETCH_PRODUCTS = {"random": 2, "lanczos": 1, "block": 1}
"""Hutch++'s products per sketch dimension: ``A S`` and then ``Q^T A Q`` for a random sketch, one for a Krylov one."""


def hutchpp(
    op: Any,
    *,
    max_samples: int = 200,
    rank: int | None = None,
    sketch: str = "random",
    rtol: float | None = 1e-2,
    min_samples: int = 10,
    block: int = 8,
    seed: int = 0,
    basis_bytes: int = 4 << 30,
    progress: bool = False,
) -> TraceResult:
    """Hutch++ estimate of ``tr(op)`` within ``max_samples`` products:
    ``tr(A) = tr(Q^T A Q) + tr(P A P)``, ``P = I - Q Q^T``, the second term by Hutchinson.

    ``sketch="random"`` (Meyer et al.): ``Q = orth(A S)`` for ``rank`` Rademacher columns ``S``
    (default ``max_samples // 3``), ``tr(Q^T A Q)`` by ``rank`` more products.
    ``sketch="lanczos"``: ``Q`` = the ``rank``-step Lanczos basis of a random start (default
    ``max_samples // 2``) and ``tr(Q^T A Q) = tr(T)`` comes with it: one product per basis
    vector, and a Krylov space captures the dominant eigenvectors far better than one sketch.
    ``sketch="block"``: ``Q`` = the block Krylov basis ``[V, A V, A^2 V, ...]`` (orthonormalised as it
    grows) of ``b = min(block, rank // 32)`` random start vectors (at least 32 steps deep; it equals
    ``lanczos`` for ``b = 1``, i.e. below 128 products), ``rank // b``
    block products (one data pass each, where ``lanczos`` needs one per vector),
    ``tr(Q^T A Q) = sum_j tr(V_j^T (A V_j))`` from the same
    products (default ``rank`` as for ``lanczos``). The half-and-half split: the exact Rademacher variance
    ``2 (||P A P||_F^2 - sum_i (P A P)_ii^2) / (max_samples - rank)`` of the dense Hessians of the six small
    workloads of ``benchmarks/workloads.py`` is least at ``rank`` = 0.33-0.53 ``max_samples`` for 30 products
    and 0.3-0.65 for 102, and within 20% of that least at one half on all twelve; 2/3 cost up to 55% more
    variance (a ViT's few outliers over a flat bulk).
    With ``rtol`` set and no ``rank``, the Krylov sketch is sized for ``rtol`` by
    :class:`_SketchSize` (``rank`` at most the fixed default) instead of taking half the budget.
    Either way ``Q`` is independent of the Hutchinson vectors, so the estimate is unbiased.
    The default ``rank`` is capped so that the float64 basis fits ``basis_bytes``.
    """
    if sketch not in ("random", "lanczos", "block"):
        raise ValueError(f"sketch must be 'random', 'lanczos' or 'block', got {sketch!r}")
    op = as_operator(op)
    P = op.num_params
    cost = SKETCH_PRODUCTS[sketch]
    adaptive = rank is None and rtol is not None and sketch != "random"
    exact = rank is None and max_samples >= P  # the budget covers the unit vectors
    if rank is None:
        rank = min(max_samples // 3 if sketch == "random" else max_samples // 2, max(1, basis_bytes // (8 * P)))
    r = min(P, rank)
    adaptive = adaptive and r < P and r >= PILOT_STEPS + 2 and max_samples >= 2 * PILOT_STEPS + PILOT_SAMPLES
    b = max(1, min(block, r // 32))  # block Krylov: at least 32 steps deep
    if sketch == "block" and r < P:
        r = r // b * b  # whole blocks
    if not exact and (r < 1 or (r < P and max_samples - cost * r < 2) or (r == P and max_samples < P)):
        raise ValueError(f"hutchpp needs 1 <= rank and {cost} * rank + 2 <= max_samples, got rank={rank}, "
                         f"max_samples={max_samples}")
    work = Work(op)
    gen = torch.Generator().manual_seed(seed)
    with progress_bar(f"Hutch++ trace ({op.name}, {sketch} sketch)", max_samples, progress) as advance:
        if exact:
            return _exact(op, work, f"hutchpp-{sketch}", advance)
        if r == P:  # the sketch spans everything: the trace is exact
            Q = torch.eye(P, dtype=torch.float64, device=op.device)
            low = float((Q * op.matvec(Q)).sum())
            advance(P)
        elif sketch == "random":
            Y = op.matvec(rademacher(r, P, gen).to(op.device))
            Q = torch.linalg.qr(Y.T).Q.T.contiguous()  # (r, P) orthonormal rows spanning range(A S)
            advance(r)
            low = float((Q * op.matvec(Q)).sum())
            advance(r)
        elif sketch == "block" and not adaptive:
            Q, low = block_krylov(op, r, b, gen, advance)
        else:  # a Lanczos sketch (also block's, when sized: its steps are single-vector below 64 anyway)
            V0 = torch.randn(1, P, generator=gen, dtype=torch.float64).to(op.device)
            Qs, T = krylov_basis(op, V0, r, gen, advance=advance,
                                 stop=_SketchSize(op, rtol, gen, advance) if adaptive else None)
            Q, low = Qs[0], float(np.trace(T[0]))
            r = len(Q)
        if r == P:
            return TraceResult(trace=low, stderr=0.0, method=f"hutchpp-{sketch}", converged=True,
                               num_matvecs=work.matvecs, num_passes=work.passes, rank=r, low_rank_trace=low)
        samples, converged = _sample(Deflated(op, Q), gen, low, max_samples - work.matvecs, rtol, min_samples,
                                     block, advance)
    return TraceResult(trace=low + float(samples.mean()), stderr=_stderr(samples), method=f"hutchpp-{sketch}",
                       converged=converged, num_matvecs=work.matvecs, num_passes=work.passes, rank=r,
                       low_rank_trace=low, samples=samples)


def xtrace(
    op: Any,
    *,
    max_samples: int = 200,
    rtol: float | None = 1e-2,
    min_samples: int = 10,
    block: int = 8,
    seed: int = 0,
    basis_bytes: int = 4 << 30,
    vectors: str = "rademacher",
    progress: bool = False,
) -> TraceResult:
    """XTrace (Epperly, Tropp & Webber, 2024) within ``max_samples`` products.

    For ``m`` test vectors ``omega_i``, ``Y = A Omega = Q R`` and
    ``Z = A Q`` (``2 m`` products). ``Pi_i``, the projector onto ``range(Y_-i) = Q range(R_-i)``, is
    ``Q (I - s_i s_i^T) Q^T`` with ``s_i = R^-T e_i / ||R^-T e_i||``; with ``u_i = (I - Pi_i) omega_i``,
    estimate ``i`` is ``tr(Pi_i A Pi_i) + u_i^T A u_i`` for ``vectors="rademacher"`` (random signs, as curvlinops)
    and ``tr(Pi_i A Pi_i) + (P - m + 1) u_i^T A u_i / ||u_i||^2`` for ``vectors="sphere"`` (Gaussians rescaled to
    norm ``sqrt(P)``, the paper's normalisation), i.e. ``tr(H) - s_i^T H s_i`` plus
    ``u_i^T A u_i = d_i - 2 c_i^T R e_i + c_i^T H c_i`` (normalised by
    ``||u_i||^2 = ||omega_i||^2 - ||W e_i||^2 + (s_i^T W e_i)^2``) where
    ``H = Q^T Z``, ``W = Q^T Omega``, ``c_i = (I - s_i s_i^T) W e_i`` and ``d_i = omega_i^T A omega_i``.
    Each is unbiased (``Pi_i`` does not depend on ``omega_i``; ``E omega omega^T = I``, and a normalised ``u_i``
    is isotropic in ``range(I - Pi_i)``); the result is their mean. Rademacher is the default: over the six small
    workloads of the benchmark matrix (dense Hessians, 30 and 102 products, 40 seeds) it had 1.00x curvlinops'
    error (the same estimator) and sphere vectors 1.05x (geometric means; 0.78-1.44x by case): random signs drop
    the diagonal's share of a Hutchinson term's variance.
    ``stderr`` is the jackknife's over the ``m`` leave-one-vector-out XTrace runs (closed form from the same
    small matrices, :func:`_xtrace_jackknife`), which errs on the safe side, where the exchangeable
    estimates' spread ``std / sqrt(m)`` (``stderr_exchangeable``) runs ~15-35% low. Vectors come in blocks
    of ``block`` (2 data passes each)
    until the stopping rule holds; the float64 ``Omega``, ``Q``, ``Z`` must fit ``basis_bytes``.
    """
    if vectors not in ("rademacher", "sphere"):
        raise ValueError(f"vectors must be 'rademacher' or 'sphere', got {vectors!r}")
    op = as_operator(op)
    P = op.num_params
    draw = rademacher if vectors == "rademacher" else sphere
    m_max = min(max_samples // 2, max(1, basis_bytes // (24 * P)))
    if max_samples < P and m_max < 2:
        raise ValueError(f"xtrace needs max_samples >= 4 (2 products per test vector), got {max_samples}")
    work = Work(op)
    gen = torch.Generator().manual_seed(seed)
    with progress_bar(f"XTrace ({op.name})", max_samples, progress) as advance:
        if max_samples >= P:
            return _exact(op, work, "xtrace", advance)
        Om = Q = Z = torch.zeros(0, P, dtype=torch.float64, device=op.device)
        R, d, converged = torch.zeros(0, 0, dtype=torch.float64), torch.zeros(0, dtype=torch.float64), rtol is None
        while len(Om) < m_max:
            new = draw(min(block, m_max - len(Om)), P, gen).to(op.device)
            Y = op.matvec(new)
            advance(len(new))
            Qn, R_on, R_nn = extend_basis(Q, Y)
            Zn = op.matvec(Qn)
            advance(len(new))
            R = torch.cat([torch.cat([R, R_on], 1), torch.cat([torch.zeros_like(R_on.T), R_nn], 1)])
            Om, Q, Z = torch.cat([Om, new]), torch.cat([Q, Qn]), torch.cat([Z, Zn])
            d = torch.cat([d, (new * Y).sum(1).cpu()])
            if rtol is None and len(Om) < m_max:
                continue
            samples, low, jack = _xtrace_estimates(Om, Q, Z, R, d, P, normalise=vectors == "sphere")
            stderr = _stderr(samples) if jack is None else jack
            advance(0, estimate=f"{samples.mean():.6g}", stderr=f"{stderr:.2g}")
            if rtol is not None and len(Om) >= max(2, min_samples) and stderr <= rtol * abs(samples.mean()):
                converged = True
                break
    return TraceResult(trace=float(samples.mean()), stderr=stderr, method="xtrace", converged=converged,
                       num_matvecs=work.matvecs, num_passes=work.passes, rank=len(Om), low_rank_trace=low,
                       samples=samples, stderr_exchangeable=_stderr(samples))


def xnystrace(
    op: Any,
    *,
    max_samples: int = 200,
    rtol: float | None = 1e-2,
    min_samples: int = 10,
    block: int = 8,
    seed: int = 0,
    basis_bytes: int = 4 << 30,
    progress: bool = False,
) -> TraceResult:
    """XNysTrace (Epperly, Tropp & Webber, 2024) of a positive semi-definite ``op``, one product per vector.

    With ``Y = A_nu Omega`` for the shifted ``A_nu = A + nu I`` (``nu`` ~ rounding, so that the Cholesky
    factor exists), ``G = Omega^T Y = C^T C``, the Nystrom approximation is ``F F^T``, ``F = Y C^-1``;
    dropping vector ``i`` removes ``F x_i x_i^T F^T / ||x_i||^2`` (``x_i = C^-T e_i``, a Schur complement),
    and since ``omega_i^T F = (C e_i)^T`` the Hutchinson term of the rest is exactly ``1 / ||x_i||^2``:
    estimate ``i`` is ``||F||_F^2 - ||F x_i||^2 / ||x_i||^2 + 1 / ||x_i||^2 - nu ||omega_i||^2``, unbiased
    for ``tr(A)`` (``omega_i`` uniform on the sphere of radius ``sqrt(P)``, so ``E omega omega^T = I``).
    ``||F x||`` comes from ``Y = Q_Y R_Y``: ``F x = Q_Y (R_Y C^-1 x)``. Mean, jackknife ``stderr`` and stopping
    as :func:`xtrace`; an indefinite sketch ``G`` (``op`` not PSD) raises ``ValueError``.
    """
    op = as_operator(op)
    P = op.num_params
    m_max = min(max_samples, max(1, basis_bytes // (16 * P)))
    if max_samples < P and m_max < 2:
        raise ValueError(f"xnystrace needs max_samples >= 2, got {max_samples}")
    work = Work(op)
    gen = torch.Generator().manual_seed(seed)
    eps = torch.finfo(op.dtype).eps if op.dtype.is_floating_point else torch.finfo(torch.float32).eps
    with progress_bar(f"XNysTrace ({op.name})", max_samples, progress) as advance:
        if max_samples >= P:
            return _exact(op, work, "xnystrace", advance)
        Om = Y = torch.zeros(0, P, dtype=torch.float64, device=op.device)
        converged = rtol is None
        while len(Om) < m_max:
            new = sphere(min(block, m_max - len(Om)), P, gen).to(op.device)
            Om, Y = torch.cat([Om, new]), torch.cat([Y, op.matvec(new)])
            advance(len(new))
            if rtol is None and len(Om) < m_max:
                continue
            samples, low, stderr = _nystrom_estimates(Om, Y, eps)
            advance(0, estimate=f"{samples.mean():.6g}", stderr=f"{stderr:.2g}")
            if rtol is not None and len(Om) >= max(2, min_samples) and stderr <= rtol * abs(samples.mean()):
                converged = True
                break
    return TraceResult(trace=float(samples.mean()), stderr=stderr, method="xnystrace", converged=converged,
                       num_matvecs=work.matvecs, num_passes=work.passes, rank=len(Om), low_rank_trace=low,
                       samples=samples, stderr_exchangeable=_stderr(samples))


PILOT_STEPS, PILOT_SAMPLES, WINDOW = 8, 4, 3  # _SketchSize's pilot and patience


class _SketchSize:
    """The size of a Lanczos sketch for Hutch++ to reach ``stderr <= rtol * |trace|`` in the fewest products: a
    stopping rule that :func:`krylov_basis` calls after each step.

    Hutchinson on the deflated ``B = P A P`` needs ``n ~ var / (rtol tr)^2`` samples, ``var ~ 2 ||B||_F^2``
    (Rademacher), and ``||B||_F^2 = ||A||_F^2 - G(m)`` with ``G(m) = 2 ||A Q||_F^2 - ||Q^T A Q||_F^2`` (``A``
    symmetric, ``Q`` orthonormal), known from the Lanczos products: ``||A q_j||^2 = ||T e_j||^2 + beta_j^2``.
    So a step that raises ``G`` by ``dG`` saves ``2 dG / (rtol tr)^2`` samples for one product. A pilot of
    ``PILOT_SAMPLES`` residual samples after ``PILOT_STEPS`` steps estimates ``tr``; the sketch then grows
    while the last ``WINDOW`` steps saved more than a sample each. (A stop predicted from the pilot's estimate
    of ``||B||_F^2`` itself stopped too early: 4 samples of a few remaining outliers' quadratic forms
    under-estimate it often.) The pilot's products are spent (its samples are not reused, so the estimate stays
    unbiased: ``Q`` does not depend on the final Hutchinson vectors). On the dense Hessians of
    the six small workloads of ``benchmarks/workloads.py`` at ``rtol = 0.01`` the best fixed sketch was 15-20
    products (27-80 products in all) where half of a 150-product budget took 85-98.
    """

    def __init__(self, op: LinearOperator, rtol: float, gen: torch.Generator, advance: Any) -> None:
        self.op, self.rtol, self.gen, self.advance = op, rtol, gen, advance
        self.aq2, self.G, self.saved = 0.0, [0.0], []  # sum_j ||A q_j||^2, G(m), samples saved per step
        self.target2: float | None = None  # (rtol tr)^2, from the pilot

    def __call__(self, Q: torch.Tensor, T: np.ndarray, beta: np.ndarray) -> bool:
        m = T.shape[1]
        self.aq2 += float((T[0, :, m - 1] ** 2).sum() + beta[0] ** 2)
        self.G.append(2.0 * self.aq2 - float((T[0] ** 2).sum()))
        if m == PILOT_STEPS:
            Z = rademacher(PILOT_SAMPLES, self.op.num_params, self.gen).to(self.op.device)
            values = (Z * Deflated(self.op, Q[0]).matvec(Z)).sum(1).cpu().numpy()
            self.advance(PILOT_SAMPLES)
            self.target2 = (self.rtol * abs(float(np.trace(T[0])) + float(values.mean()))) ** 2
            return False
        if self.target2 is None:
            return False
        self.saved.append(2.0 * (self.G[-1] - self.G[-2]) / max(self.target2, 1e-300))
        return len(self.saved) >= WINDOW and sum(self.saved[-WINDOW:]) < WINDOW


def block_krylov(op: LinearOperator, r: int, b: int, gen: torch.Generator,
                 advance: Any = None) -> tuple[torch.Tensor, float]:
    """Orthonormal rows ``Q`` ``(r, P)`` spanning the block Krylov space ``[V, A V, ..., A^(r/b-1) V]`` of
    ``b`` Gaussian start rows, and ``tr(Q^T A Q) = sum_j tr(V_j^T A V_j)`` (one block product per block)."""
    P = op.num_params
    V = torch.linalg.qr(torch.randn(P, b, generator=gen, dtype=torch.float64)).Q.T.contiguous().to(op.device)
    blocks: list[torch.Tensor] = []
    low = 0.0
    for j in range(r // b):
        W = op.matvec(V)
        if advance is not None:
            advance(b)
        low += float((V * W).sum())
        blocks.append(V)
        if j + 1 < r // b:
            Qn, _, _ = extend_basis(torch.cat(blocks), W)
            V = Qn
    return torch.cat(blocks), low


def sphere(k: int, P: int, gen: torch.Generator) -> torch.Tensor:
    """``(k, P)`` float64 rows uniform on the sphere of radius ``sqrt(P)`` (normalised Gaussians)."""
    Z = torch.randn(k, P, generator=gen, dtype=torch.float64)
    return Z * (P ** 0.5 / Z.norm(dim=1, keepdim=True).clamp_min(1e-300))


def extend_basis(Q: torch.Tensor, Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthonormal rows ``Qn`` completing ``Q`` to span ``Y``'s rows too: ``Y^T = Q^T R_on + Qn^T R_nn``.

    Block classical Gram-Schmidt twice, a QR of the rest, and once more on the result (so ``Qn`` stays
    orthogonal to ``Q`` even where ``Y`` adds nothing but rounding); ``R_nn`` is upper triangular.
    """
    C = Y @ Q.T
    V = Y - C @ Q
    C2 = V @ Q.T
    V = V - C2 @ Q
    Q1, R1 = torch.linalg.qr(V.T)  # V^T = Q1 R1
    C3 = Q1.T @ Q.T
    Q2, R2 = torch.linalg.qr(Q1 - Q.T @ C3.T)  # Q1 = Q^T C3^T + Q2 R2
    # Y^T = Q^T (C + C2)^T + Q1 R1 = Q^T ((C + C2)^T + C3^T R1) + Q2 (R2 R1)
    R_on = (C + C2).T + C3.T @ R1
    return Q2.T.contiguous(), R_on.cpu(), (R2 @ R1).cpu()


def _xtrace_estimates(Om: torch.Tensor, Q: torch.Tensor, Z: torch.Tensor, R: torch.Tensor, d: torch.Tensor,
                      P: int, normalise: bool) -> tuple[np.ndarray, float, float | None]:
    """XTrace's ``m`` exchangeable estimates (see :func:`xtrace`; ``normalise``: the sphere vectors' rescaled
    residual term), the mean of their low-rank parts and the jackknife standard error (``None`` for a
    rank-deficient sketch)."""
    m = len(Om)
    H = (Q @ Z.T).cpu()
    H = (H + H.T) / 2
    W = (Q @ Om.T).cpu()
    norms = (Om * Om).sum(1).cpu()
    sv = torch.linalg.svdvals(R)
    tol = 1e-12 * float(sv[0])
    trH = torch.trace(H)
    if m >= 2 and float(sv[-1]) > tol:  # Y of full rank: range(R_-i) misses exactly s_i (column i of S)
        S = torch.linalg.solve_triangular(R.T, torch.eye(m, dtype=R.dtype), upper=False)
        S = S / S.norm(dim=0, keepdim=True)
        low = trH - (S * (H @ S)).sum(0)
        sw = (S * W).sum(0)
        C = W - S * sw
        uAu = d - 2 * (C * R).sum(0) + (C * (H @ C)).sum(0)
        u2 = norms - (W * W).sum(0) + sw**2
        ests = low + ((P - m + 1) * uAu / u2 if normalise else uAu)
        return ests.numpy(), float(low.mean()), _xtrace_jackknife(S, H, W, R, d, norms, P, normalise)
    lows, ests = [], []  # rank-deficient Y (rank(A) < m): null(R_-i^T) from an SVD of R without column i
    for i in range(m):
        U, s, _ = torch.linalg.svd(R[:, torch.arange(m) != i])
        n = U[:, int((s > tol).sum()):]
        w = W[:, i]
        nw = n.T @ w
        c = w - n @ nw
        uAu = d[i] - 2 * c @ R[:, i] + c @ H @ c
        u2 = norms[i] - w @ w + nw @ nw
        lows.append(float(trH - torch.trace(n.T @ H @ n)))
        if normalise:
            rest = float((P - m + n.shape[1]) * uAu / u2) if u2 > 0 else 0.0
        else:
            rest = float(uAu)
        ests.append(lows[-1] + rest)
    return np.asarray(ests), float(np.mean(lows)), None


def _xtrace_jackknife(S: torch.Tensor, H: torch.Tensor, W: torch.Tensor, R: torch.Tensor, d: torch.Tensor,
                      norms: torch.Tensor, P: int, normalise: bool) -> float:
    """Jackknife standard error of XTrace from its ``m`` leave-one-vector-out runs (see :func:`_jackknife`).

    Without vectors ``i`` and ``j`` the sketch misses ``span(s_i, s_j)`` of ``range(Q)``; with the Gram matrix
    ``G = [[1, k], [k, 1]]``, ``k = s_i^T s_j``, and ``p, q, h`` the ``{s_i, s_j}`` coordinates of ``W e_i``,
    ``R e_i``, ``H W e_i``: ``t_i^(-j) = tr(H) - tr(G^-1 M2) + (P - m + 2) u^T A u / ||u||^2`` with
    ``u^T A u = d_i - 2 (w^T r - p^T G^-1 q) + w^T H w - 2 p^T G^-1 h + p^T G^-1 M2 G^-1 p`` and
    ``||u||^2 = ||omega_i||^2 - ||w||^2 + p^T G^-1 p`` (without ``normalise``: ``+ u^T A u``, as in :func:`xtrace`).
    """
    m = S.shape[1]
    K, M = S.T @ S, S.T @ H @ S
    Pw, Qr, Hw = S.T @ W, S.T @ R, S.T @ H @ W  # [k, i] = s_k^T (W, R, H W) e_i
    a, b, w2 = (W * R).sum(0), (W * (H @ W)).sum(0), (W * W).sum(0)
    one = 1.0 - K**2
    one.fill_diagonal_(1.0)

    def form(u0, u1, v0, v1):  # [u0 u1] G^-1 [v0 v1]^T over all pairs [i, j]
        return (u0 * v0 + u1 * v1 - K * (u0 * v1 + u1 * v0)) / one

    p0, p1 = torch.diagonal(Pw)[:, None], Pw.T  # [i, j]: s_i^T W e_i, s_j^T W e_i
    q0, q1 = torch.diagonal(Qr)[:, None], Qr.T
    h0, h1 = torch.diagonal(Hw)[:, None], Hw.T
    md = torch.diagonal(M)
    g0, g1 = (p0 - K * p1) / one, (p1 - K * p0) / one  # G^-1 p
    quad = g0**2 * md[:, None] + g1**2 * md[None, :] + 2 * g0 * g1 * M
    low = torch.trace(H) - (md[:, None] + md[None, :] - 2 * K * M) / one
    uAu = d[:, None] - 2 * (a[:, None] - form(p0, p1, q0, q1)) + b[:, None] - 2 * form(p0, p1, h0, h1) + quad
    if not normalise:
        return _jackknife(low + uAu)
    u2 = norms[:, None] - w2[:, None] + form(p0, p1, p0, p1)
    return _jackknife(low + (P - m + 2) * uAu / u2)


def _jackknife(pair: torch.Tensor) -> float:
    """``sqrt((m-1)/m sum_j (T_j - mean T)^2)``, ``T_j = mean_{i != j} pair[i, j]`` the estimate without vector
    ``j``; by the Efron-Stein inequality its square over-estimates the variance of an estimate from ``m - 1``
    vectors in expectation, where the spread of the ``m`` exchangeable estimates under-estimates it."""
    m = pair.shape[0]
    T = (pair.sum(0) - torch.diagonal(pair)) / (m - 1)
    return float(((m - 1) / m * ((T - T.mean()) ** 2).sum()).sqrt())


def _nystrom_estimates(Om: torch.Tensor, Y: torch.Tensor, eps: float) -> tuple[np.ndarray, float, float]:
    """XNysTrace's ``m`` exchangeable estimates (see :func:`xnystrace`), the mean of their Nystrom parts and
    the jackknife standard error."""
    m = len(Om)
    norms = (Om * Om).sum(1).cpu().numpy()
    scale = float(Y.norm()) / m ** 0.5
    if scale == 0.0:  # A Omega = 0: the Nystrom approximation and every residual term vanish
        return np.zeros(m), 0.0, 0.0
    eye = torch.eye(m, dtype=torch.float64)
    for k in range(3):
        nu = 10.0 * eps * scale * 10.0**k
        Yn = Y + nu * Om
        G = (Om @ Yn.T).cpu()
        C, info = torch.linalg.cholesky_ex((G + G.T) / 2, upper=True)
        if int(info) == 0:
            break
    else:
        raise ValueError("xnystrace needs a positive semi-definite operator: Omega^T A Omega is indefinite")
    Ry = torch.linalg.qr(Yn.T, mode="r").R.cpu()
    B = torch.linalg.solve_triangular(C, Ry, upper=True, left=False)  # B = R_Y C^-1
    X = torch.linalg.solve_triangular(C.T, eye, upper=False)  # C^-T
    x2 = (X**2).sum(0)
    BX = B @ X
    low = float((B**2).sum()) - (BX**2).sum(0) / x2 - nu * torch.as_tensor(norms)
    # leave j out too: t_i^(-j) = ||B||^2 - tr(K2^-1 M2) + (K2^-1)_ii - nu ||omega_i||^2 over the pair {i, j},
    # K = X^T X, M = (B X)^T (B X) (a two-column Schur complement; omega_i^T F X e_j = delta_ij)
    K, M = X.T @ X, BX.T @ BX
    kd, md = torch.diagonal(K), torch.diagonal(M)
    det = kd[:, None] * kd[None, :] - K**2
    det.fill_diagonal_(1.0)
    pair = (float((B**2).sum()) - (kd[None, :] * md[:, None] + kd[:, None] * md[None, :] - 2 * K * M) / det
            + kd[None, :] / det - nu * torch.as_tensor(norms)[:, None])  # [i, j]
    return (low + 1.0 / x2).numpy(), float(low.mean()), _jackknife(pair)


def _exact(op: LinearOperator, work: Work, method: str, advance: Any, block: int = 64) -> TraceResult:
    """``sum_j e_j^T A e_j`` from ``P`` unit-vector products (``block`` per pass)."""
    total = 0.0
    for start in range(0, op.num_params, block):
        rows = torch.eye(op.num_params, dtype=torch.float64, device=op.device)[start:start + block]
        total += float((rows * op.matvec(rows)).sum())
        advance(len(rows))
    return TraceResult(trace=total, stderr=0.0, method=method, converged=True, num_matvecs=work.matvecs,
                       num_passes=work.passes, rank=op.num_params, low_rank_trace=total)


TRACE_METHODS = ("hutchinson", "hutchpp-random", "hutchpp-lanczos", "hutchpp-block", "xtrace", "xnystrace")
DEFAULT_TRACE_METHOD = "hutchpp-block"


def trace_estimator(method: str) -> Callable[..., TraceResult]:
    """The estimator function of ``method`` (one of :data:`TRACE_METHODS`; Hutch++'s takes its ``sketch``)."""
    if method not in TRACE_METHODS:
        raise ValueError(f"trace method must be one of {', '.join(TRACE_METHODS)}, got {method!r}")
    return {"hutchinson": hutchinson, "xtrace": xtrace, "xnystrace": xnystrace}.get(method, hutchpp)


def estimate_trace(op: Any, method: str = DEFAULT_TRACE_METHOD, **options: Any) -> TraceResult:
    """``tr(op)`` by ``method`` (one of :data:`TRACE_METHODS`); ``options`` go to the estimator."""
    estimator = trace_estimator(method)
    if estimator is hutchpp:
        options["sketch"] = method.split("-")[1]
    return estimator(op, **options)


class Deflated(LinearOperator):
    """``P A P`` with ``P = I - Q^T Q`` for orthonormal rows ``Q`` (same cost and counters as ``A``)."""

    def __init__(self, op: LinearOperator, Q: torch.Tensor) -> None:
        self.op, self.Q = op, Q
        self.num_params, self.dtype, self.device = op.num_params, op.dtype, op.device
        self.param_shapes, self.name = op.param_shapes, op.name

    def _project(self, V: torch.Tensor) -> torch.Tensor:
        return V - (V @ self.Q.T) @ self.Q

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        V = v.reshape(-1, self.num_params).to(self.Q)
        return self._project(self.op.matvec(self._project(V))).reshape(v.shape).to(v.device, v.dtype)

    @property
    def num_matvecs(self) -> int:
        return self.op.num_matvecs

    @property
    def num_passes(self) -> int:
        return self.op.num_passes


def _sample(op: LinearOperator, gen: torch.Generator, offset: float, budget: int, rtol: float | None,
            min_samples: int, block: int, advance: Any) -> tuple[np.ndarray, bool]:
    """Hutchinson samples ``z^T A z`` in blocks until ``stderr <= rtol * |offset + mean|`` or ``budget``."""
    values: list[float] = []
    while len(values) < budget:
        Z = rademacher(min(block, budget - len(values)), op.num_params, gen).to(op.device)
        values.extend((Z * op.matvec(Z)).sum(dim=1).tolist())
        s = np.asarray(values)
        advance(len(Z), estimate=f"{offset + s.mean():.6g}", stderr=f"{_stderr(s):.2g}")
        if rtol is not None and len(s) >= max(2, min_samples) and _stderr(s) <= rtol * abs(offset + s.mean()):
            return s, True
    return np.asarray(values), rtol is None


def _stderr(samples: np.ndarray) -> float:
    return float(samples.std(ddof=1) / np.sqrt(len(samples))) if len(samples) > 1 else float("inf")


__all__ = ["DEFAULT_TRACE_METHOD", "Deflated", "SKETCH_PRODUCTS", "TRACE_METHODS", "TraceResult",
           "block_krylov", "estimate_trace", "extend_basis", "hutchinson", "hutchpp", "rademacher", "sphere",
           "trace_estimator", "xnystrace", "xtrace"]
