"""Curvature measures on linear operators: Hessian/GGN/Fisher eigenvalues, traces, spectral
density, gradient norms. Build the operators from a :class:`landscape.objective.Objective`."""
from landscape.curvature.operators import CurvatureOperator, LinearOperator, MatrixOperator, Work, as_operator

__all__ = ["CurvatureOperator", "LinearOperator", "MatrixOperator", "Work", "as_operator"]
