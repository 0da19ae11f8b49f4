"""Top eigenvalues of the empirical Fisher and the generalized Gauss-Newton matrix.

GA-SAM (Sec. 5.3, Fig. 3) reports "the top 50 eigenvalues of the Hessian under
the Fisher assumption" ``H ~ F = E_z[grad l(w; z) grad l(w; z)^T]``: here
``F = (1/N) sum_i g_i g_i^T`` over the samples (rows) of the objective's data,
with ``g_i`` the gradient of row ``i``'s loss (for a language model, the mean
over its tokens). The GGN ``G = (1/N) sum_i J_i^T (d^2 l_i / d out^2) J_i`` is
the positive semi-definite part of the Hessian for convex losses
(cross-entropy, MSE).

Two methods:

* ``lanczos`` (any size, both kinds): thick-restart Lanczos on products
  ``F v = J^T (J v) / N``, applied without forming any ``g_i``;
* ``gram`` (empirical Fisher, one process): with ``J = [g_1 .. g_N]^T`` the
  ``N x P`` per-sample gradients (one ``vmap`` pass), ``F = J^T J / N`` and the
  Gram matrix ``K = J J^T / N`` have the same non-zero eigenvalues, so
  ``eigvalsh(K)`` gives all of them exactly. It holds ``J`` in memory (``N P`` numbers)
  and costs ``N^2 P`` flops for ``K``: much faster than Lanczos (hundreds of
  data passes) for up to a few thousand samples.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from landscape.curvature.lanczos import EigenResult, lanczos
from landscape.distributed import accumulation_dtype
from landscape.objective import Objective

METHODS = ("lanczos", "gram")


def fisher_eigenvalues(objective: Objective, k: int = 50, *, kind: str = "fisher", method: str = "lanczos",
                       **kwargs: Any) -> EigenResult:
    """The ``k`` largest eigenvalues of the empirical Fisher (``kind="fisher"``) or the GGN (``"ggn"``),
    by ``method`` ``lanczos`` (``kwargs`` go to :func:`~landscape.curvature.lanczos.lanczos`) or ``gram``
    (exact, empirical Fisher only; ``kwargs``: ``max_memory`` of :func:`fisher_gram`)."""
    if kind not in ("fisher", "ggn"):
        raise ValueError(f"kind must be 'fisher' or 'ggn', got {kind!r}")
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    if method == "lanczos":
        return lanczos(objective.operator(kind), k, which="largest", **kwargs)
    if kind != "fisher":
        raise ValueError("the gram method computes the empirical Fisher only; use method='lanczos' for the GGN")
    return fisher_gram(objective, k, **kwargs)


def fisher_gram(objective: Objective, k: int = 50, *, max_memory: int = 1 << 31) -> EigenResult:
    """The ``k`` largest eigenvalues of ``F = J^T J / N`` from the Gram matrix ``J J^T / N`` (module docstring).

    ``J`` (``N x P``) comes from :meth:`Objective.group_gradients` with ``group_size=1``, in the objective's
    dtype; ``K`` is accumulated and diagonalized in float64. Past the rank ``min(N, P)`` the eigenvalues
    are exactly 0. ``max_memory``: most bytes ``J`` may take (a larger problem raises: use Lanczos or a
    subset of the data). One process only: a sharded objective raises.
    """
    P, N = objective.num_params, objective.num_samples
    if not 1 <= k <= P:
        raise ValueError(f"need 1 <= k <= {P} parameters, got k={k}")
    if objective.sharded:
        raise ValueError("the gram method needs all the data in one process (this objective is sharded)")
    itemsize = torch.finfo(objective.dtype).bits // 8
    if N * P * itemsize > max_memory:
        raise ValueError(f"the gram method would hold {N} x {P} per-sample gradients ({N * P * itemsize / 2**30:.2f} "
                         f"GiB > max_memory {max_memory / 2**30:.2f} GiB); use method='lanczos' or a data subset")
    J = torch.empty(N, P, dtype=objective.dtype, device=objective.device)
    row = 0
    for G in objective.group_gradients(1):
        J[row:row + len(G)] = G
        row += len(G)
    acc = accumulation_dtype(J.device)  # float64, float32 on MPS
    K = torch.zeros(N, N, dtype=acc, device=J.device)
    step = max(1, (1 << 24) // N)  # parameter columns per float64 block (128 MiB)
    for start in range(0, P, step):
        block = J[:, start:start + step].to(acc)
        K.addmm_(block, block.T)
    K = K if acc == torch.float64 else K.cpu().double()  # the eigensolve in float64
    top = torch.linalg.eigvalsh(K / N).flip(0)[:k].clamp_min(0.0)  # PSD: clamp round-off below 0
    eig = np.zeros(k)
    eig[:len(top)] = top.cpu().numpy()
    return EigenResult(eigenvalues=eig, method="gram", which="largest", converged=True, num_matvecs=0,
                       num_passes=1, num_iterations=0, tol=0.0)


__all__ = ["METHODS", "fisher_eigenvalues", "fisher_gram"]
