"""Symmetric linear operators on flat parameter vectors (the curvlinops-style interface).

Every measure in :mod:`landscape.curvature` takes a :class:`LinearOperator`:
``matvec(v)`` for ``v`` of shape ``(P,)`` or a block ``(k, P)`` (rows), plus
``num_params``, ``dtype``, ``device``, ``param_shapes`` and the work counters
``num_matvecs`` / ``num_passes``. :class:`CurvatureOperator` is the Hessian,
GGN or empirical Fisher of an :class:`~landscape.objective.Objective`;
:class:`MatrixOperator` wraps an explicit matrix (tests, references).
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch


class LinearOperator:
    """A symmetric ``P x P`` operator; subclasses implement :meth:`matvec` and the counters."""

    num_params: int
    dtype: torch.dtype
    device: torch.device
    param_shapes: list[tuple[int, ...]]
    name: str = "operator"
    low_memory: bool = False
    """Whether solvers should keep compact workspaces (an objective's ``memory="low"``)."""

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        """``A v`` for ``v`` of shape ``(P,)`` or ``(k, P)``; the result has ``v``'s shape, dtype and device."""
        raise NotImplementedError

    @property
    def num_matvecs(self) -> int:
        """Products computed so far (a block of ``k`` vectors counts ``k``)."""
        raise NotImplementedError

    @property
    def num_passes(self) -> int:
        """Passes over the data so far (a block product is one pass)."""
        raise NotImplementedError

    def to_scipy(self) -> Any:
        """A float64 :class:`scipy.sparse.linalg.LinearOperator` view (e.g. for ``eigsh``)."""
        from scipy.sparse.linalg import LinearOperator as ScipyOperator

        def matmat(X: np.ndarray) -> np.ndarray:
            V = torch.as_tensor(np.ascontiguousarray(np.asarray(X, dtype=np.float64).T), device=self.device)
            return self.matvec(V).cpu().numpy().T

        def matvec(x: np.ndarray) -> np.ndarray:
            return matmat(np.asarray(x).reshape(-1, 1)).reshape(np.shape(x))

        n = self.num_params
        return ScipyOperator((n, n), matvec=matvec, rmatvec=matvec, matmat=matmat, dtype=np.float64)

    def to_dense(self, block: int = 64) -> torch.Tensor:
        """The explicit float64 ``P x P`` matrix (``P`` products; for small problems and tests)."""
        eye = torch.eye(self.num_params, dtype=torch.float64, device=self.device)
        return torch.cat([self.matvec(rows) for rows in eye.split(block)])


class CurvatureOperator(LinearOperator):
    """``kind`` (``hessian``, ``ggn``, ``fisher``) of ``objective`` at ``w`` (default its base point)."""

    def __init__(self, objective: Any, kind: str, w: torch.Tensor | None = None) -> None:
        self.objective, self.name, self.w = objective, kind, w
        self.num_params = objective.num_params
        self.dtype, self.device = objective.dtype, objective.device
        self.param_shapes = list(objective.shapes)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return self.objective.mvp(self.name, v, self.w)

    @property
    def low_memory(self) -> bool:  # type: ignore[override]
        return bool(getattr(self.objective, "low_memory", False))

    @property
    def num_matvecs(self) -> int:
        return self.objective.counts[self.name]

    @property
    def num_passes(self) -> int:
        return self.objective.counts["passes"]


class MatrixOperator(LinearOperator):
    """An explicit symmetric matrix ``A`` as an operator (one "pass" per :meth:`matvec` call)."""

    name = "matrix"

    def __init__(self, A: torch.Tensor, param_shapes: list[tuple[int, ...]] | None = None) -> None:
        if A.dim() != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"need a square matrix, got shape {tuple(A.shape)}")
        self.A = A
        self.num_params = A.shape[0]
        self.dtype, self.device = A.dtype, A.device
        self.param_shapes = param_shapes or [(self.num_params,)]
        self._matvecs = self._passes = 0

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        V = v.reshape(-1, self.num_params).to(self.device, self.dtype)
        self._matvecs += len(V)
        self._passes += 1
        return (V @ self.A.T).reshape(v.shape).to(v.device, v.dtype)

    @property
    def num_matvecs(self) -> int:
        return self._matvecs

    @property
    def num_passes(self) -> int:
        return self._passes


def as_operator(obj: Any) -> LinearOperator:
    """An objective stands for its Hessian; an operator is returned as is."""
    if isinstance(obj, LinearOperator):
        return obj
    if hasattr(obj, "hessian") and hasattr(obj, "mvp"):
        return obj.hessian
    raise TypeError(f"expected a LinearOperator or an Objective, got {type(obj).__name__}")


class Work:
    """Products and data passes ``op`` has spent since this object was made."""

    def __init__(self, op: LinearOperator) -> None:
        self.op = op
        self._m0, self._p0 = op.num_matvecs, op.num_passes

    @property
    def matvecs(self) -> int:
        return self.op.num_matvecs - self._m0

    @property
    def passes(self) -> int:
        return self.op.num_passes - self._p0


__all__ = ["CurvatureOperator", "LinearOperator", "MatrixOperator", "Work", "as_operator"]
