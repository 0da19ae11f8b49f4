"""Power iteration with deflation, step for step as PyHessian's ``hessian.eigenvalues``.

Kept for parity with published numbers (Yao et al., PyHessian, 2020); prefer
:func:`landscape.curvature.lanczos.lanczos`, which needs far fewer products.
For each of the ``k`` eigenvalues: draw ``v`` (one standard normal tensor per
parameter, in parameter order), ``v <- v / (||v|| + 1e-6)``; then repeat up to
``max_iter`` times: orthogonalize ``v`` against the eigenvectors found so far
(modified Gram-Schmidt) and renormalize, ``Hv = A v``, ``lambda' = Hv . v``,
``v <- Hv / (||Hv|| + 1e-6)``; stop when ``|lambda - lambda'| / (|lambda| + 1e-6) < tol``
(the returned ``lambda`` is then the previous iterate's, as in PyHessian).
Power iteration converges to the eigenvalue of largest *magnitude* in the
remaining subspace, not the largest algebraic one, and the ``+ 1e-6`` leaves
``||v|| = 1 / (1 + 1e-6)``, so every eigenvalue is low by a relative ``2e-6``.

With ``seed=s`` the start vectors are those PyHessian draws after
``torch.manual_seed(s)`` (same CPU generator, same shapes, same order).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from landscape.curvature.lanczos import EigenResult, true_residuals
from landscape.curvature.operators import Work, as_operator
from landscape.progress import progress_bar


def power_iteration(
    op: Any,
    k: int = 1,
    *,
    max_iter: int = 100,
    tol: float = 1e-3,
    seed: int = 0,
    return_vectors: bool = False,
    residuals: bool = False,
    progress: bool = False,
) -> EigenResult:
    """PyHessian's ``eigenvalues(maxIter=max_iter, tol=tol, top_n=k)`` on ``op``."""
    op = as_operator(op)
    if k < 1 or k > op.num_params:
        raise ValueError(f"k must be in [1, {op.num_params}], got {k}")
    if max_iter < 1:
        raise ValueError(f"max_iter must be >= 1, got {max_iter}")
    work = Work(op)
    gen = torch.Generator().manual_seed(seed)
    values: list[float] = []
    vectors: list[torch.Tensor] = []
    iterations, all_converged = 0, True
    with progress_bar(f"power iteration ({op.name}, top {k})", k * max_iter, progress) as advance:
        for _ in range(k):
            v = _normalize(torch.cat([torch.randn(s, generator=gen, dtype=op.dtype).reshape(-1)
                                      for s in op.param_shapes]).to(op.device))
            value: float | None = None
            converged = False
            for i in range(max_iter):
                for u in vectors:
                    v = v - (v @ u) * u
                v = _normalize(v)
                Hv = op.matvec(v)
                iterations += 1
                new = float(Hv @ v)
                v = _normalize(Hv)
                advance(1, eig=f"{new:.6g}")
                if value is not None and abs(value - new) / (abs(value) + 1e-6) < tol:
                    converged = True
                    advance(max_iter - i - 1)
                    break
                value = new
            all_converged &= converged
            values.append(float(value))  # type: ignore[arg-type]
            vectors.append(v)
    out = EigenResult(eigenvalues=np.array(values), method="power", which="largest magnitude",
                      converged=all_converged, num_matvecs=0, num_passes=0, num_iterations=iterations, tol=tol)
    Y = torch.stack(vectors)
    if residuals:
        out.residuals = true_residuals(op, Y, out.eigenvalues)
    if return_vectors:
        out.eigenvectors = Y
    out.num_matvecs, out.num_passes = work.matvecs, work.passes
    return out


def _normalize(v: torch.Tensor) -> torch.Tensor:
    return v / (float(v.norm()) + 1e-6)


__all__ = ["power_iteration"]
