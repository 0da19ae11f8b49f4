"""Stochastic trace estimation: Hutchinson and Hutch++.

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

Both stop once ``stderr <= rtol * |estimate|`` (after ``min_samples``), where
``stderr = std(samples, ddof=1) / sqrt(n)`` is the standard error of the mean,
or when ``max_samples`` products are spent.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from landscape.curvature.lanczos import krylov_basis
from landscape.curvature.operators import LinearOperator, Work, as_operator
from landscape.progress import progress_bar


@dataclass
class TraceResult:
    """A trace estimate; ``samples`` are the Hutchinson terms ``z^T A z`` (of ``P A P`` for Hutch++)."""

    trace: float
    stderr: float
    method: str
    converged: bool
    num_matvecs: int
    num_passes: int
    rank: int = 0
    low_rank_trace: float = 0.0
    samples: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "trace": self.trace, "stderr": self.stderr, "converged": self.converged,
                "samples": len(self.samples), "rank": self.rank, "low_rank_trace": self.low_rank_trace,
                "matvecs": self.num_matvecs, "passes": self.num_passes}


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
        samples, converged = _sample(op, gen, 0.0, max_samples, rtol, min_samples, block, advance)
    return TraceResult(trace=float(samples.mean()), stderr=_stderr(samples), method="hutchinson",
                       converged=converged, num_matvecs=work.matvecs, num_passes=work.passes, samples=samples)


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
    ``2 * max_samples // 3``) and ``tr(Q^T A Q) = tr(T)`` comes with it: one product per basis
    vector, and a Krylov space captures the dominant eigenvectors far better than one sketch.
    Either way ``Q`` is independent of the Hutchinson vectors, so the estimate is unbiased.
    The default ``rank`` is capped so that the float64 basis fits ``basis_bytes``.
    """
    if sketch not in ("random", "lanczos"):
        raise ValueError(f"sketch must be 'random' or 'lanczos', got {sketch!r}")
    op = as_operator(op)
    P = op.num_params
    cost = 2 if sketch == "random" else 1  # products per sketch dimension
    if rank is None:
        rank = min(max_samples // 3 if sketch == "random" else 2 * max_samples // 3, max(1, basis_bytes // (8 * P)))
    r = min(P, rank)
    if r < 1 or (r < P and max_samples - cost * r < 2):
        raise ValueError(f"hutchpp needs 1 <= rank and {cost} * rank + 2 <= max_samples, got rank={r}, "
                         f"max_samples={max_samples}")
    work = Work(op)
    gen = torch.Generator().manual_seed(seed)
    with progress_bar(f"Hutch++ trace ({op.name}, {sketch} sketch)", max_samples, progress) as advance:
        if r == P:  # the sketch spans everything: the trace is exact
            Q = torch.eye(P, dtype=torch.float64, device=op.device)
            low = float((Q * op.matvec(Q)).sum())
        elif sketch == "random":
            Y = op.matvec(rademacher(r, P, gen).to(op.device))
            Q = torch.linalg.qr(Y.T).Q.T.contiguous()  # (r, P) orthonormal rows spanning range(A S)
            advance(r)
            low = float((Q * op.matvec(Q)).sum())
        else:
            V0 = torch.randn(1, P, generator=gen, dtype=torch.float64).to(op.device)
            Qs, T = krylov_basis(op, V0, r, gen, advance=advance)
            Q, low = Qs[0], float(np.trace(T[0]))
        advance(r)
        if r == P:
            return TraceResult(trace=low, stderr=0.0, method=f"hutchpp-{sketch}", converged=True,
                               num_matvecs=work.matvecs, num_passes=work.passes, rank=r, low_rank_trace=low)
        samples, converged = _sample(Deflated(op, Q), gen, low, max_samples - cost * r, rtol, min_samples, block,
                                     advance)
    return TraceResult(trace=low + float(samples.mean()), stderr=_stderr(samples), method=f"hutchpp-{sketch}",
                       converged=converged, num_matvecs=work.matvecs, num_passes=work.passes, rank=r,
                       low_rank_trace=low, samples=samples)


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


__all__ = ["Deflated", "TraceResult", "hutchinson", "hutchpp", "rademacher"]
