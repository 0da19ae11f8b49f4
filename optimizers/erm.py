"""Empirical-risk minimization: the base optimizer on its own (``sgd``, ``adamw``)."""
from __future__ import annotations

from typing import Any, Iterable

from optimizers import register_optimizer
from optimizers.base import ClosureOptimizer


class ERM(ClosureOptimizer):
    """``w <- base_update(w, grad L_B(w))``: one forward/backward per step."""

    def __init__(self, params: Iterable[Any], *, base: str = "sgd", base_kwargs: dict[str, Any] | None = None,
                 max_grad_norm: float | None = None) -> None:
        super().__init__(params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm)


register_optimizer("sgd")(ERM)
register_optimizer("adamw")(ERM)
