"""Top eigenvalues of the empirical Fisher and the generalized Gauss-Newton matrix.

GA-SAM (Sec. 5.3, Fig. 3) reports "the top 50 eigenvalues of the Hessian under
the Fisher assumption" ``H ~ F = E_z[grad l(w; z) grad l(w; z)^T]``: here
``F = (1/N) sum_i g_i g_i^T`` over the samples of the objective's data, applied
as ``J_l^T (J_l v)`` without forming any ``g_i``. The GGN
``G = (1/N) sum_i J_i^T (d^2 l_i / d out^2) J_i`` is the positive semi-definite
part of the Hessian for convex losses (cross-entropy, MSE). Both go through
thick-restart Lanczos.
"""
from __future__ import annotations

from typing import Any

from landscape.curvature.lanczos import EigenResult, lanczos
from landscape.objective import Objective


def fisher_eigenvalues(objective: Objective, k: int = 50, *, kind: str = "fisher",
                       **lanczos_kwargs: Any) -> EigenResult:
    """The ``k`` largest eigenvalues of the empirical Fisher (``kind="fisher"``) or the GGN (``"ggn"``)."""
    if kind not in ("fisher", "ggn"):
        raise ValueError(f"kind must be 'fisher' or 'ggn', got {kind!r}")
    return lanczos(objective.operator(kind), k, which="largest", **lanczos_kwargs)


__all__ = ["fisher_eigenvalues"]
