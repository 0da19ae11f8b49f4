"""The training module: every optimizer that produces the checkpoints we analyze.

``build_optimizer(name, params, base="sgd", base_kwargs={...}, **hparams)``
returns a :class:`optimizers.base.ClosureOptimizer`. ``sgd`` and ``adamw`` are
plain empirical-risk minimization with that base; every sharpness-aware method
wraps either base. ``optimizer_hparams(name)`` lists a method's
hyper-parameters and defaults (the CLI turns them into flags).
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Iterable

from optimizers.base import BASES, ClosureOptimizer

OptimizerFactory = Callable[..., ClosureOptimizer]
OPTIMIZERS: dict[str, OptimizerFactory] = {}
# Methods that are a base optimizer on its own: their base is fixed.
ERM_BASE = {"sgd": "sgd", "adamw": "adamw"}
_WRAPPER_ARGS = {"params", "base", "base_kwargs", "max_grad_norm", "self"}


def register_optimizer(name: str) -> Callable[[OptimizerFactory], OptimizerFactory]:
    """Decorator for a :class:`ClosureOptimizer` subclass (or factory) named ``name``."""

    def deco(factory: OptimizerFactory) -> OptimizerFactory:
        if name in OPTIMIZERS:
            raise ValueError(f"optimizer {name!r} registered twice")
        OPTIMIZERS[name] = factory
        return factory

    return deco


def _load_builtin() -> None:
    from optimizers import builtin  # noqa: F401  (registers the family)


def available_optimizers() -> list[str]:
    _load_builtin()
    return sorted(OPTIMIZERS)


def optimizer_hparams(name: str) -> dict[str, Any]:
    """Keyword hyper-parameters of method ``name`` with their defaults."""
    _load_builtin()
    if name not in OPTIMIZERS:
        raise KeyError(f"unknown optimizer {name!r}; known: {', '.join(sorted(OPTIMIZERS))}")
    sig = inspect.signature(OPTIMIZERS[name])
    return {p.name: p.default for p in sig.parameters.values()
            if p.name not in _WRAPPER_ARGS and p.kind is p.KEYWORD_ONLY}


def resolve_hparams(name: str, given: dict[str, Any]) -> dict[str, Any]:
    """Defaults of ``name`` updated with ``given``; unknown names are an error."""
    known = optimizer_hparams(name)
    unknown = sorted(set(given) - set(known))
    if unknown:
        raise ValueError(f"optimizer {name!r} has no hyper-parameter {', '.join(unknown)}; "
                         f"it takes: {', '.join(sorted(known)) or 'none'}")
    return {**known, **given}


def build_optimizer(
    name: str,
    params: Iterable[Any],
    *,
    base: str | None = None,
    base_kwargs: dict[str, Any] | None = None,
    max_grad_norm: float | None = None,
    **hparams: Any,
) -> ClosureOptimizer:
    """Build method ``name`` over base optimizer ``base`` (``sgd``/``adamw``)."""
    _load_builtin()
    if name in ERM_BASE:
        if base not in (None, ERM_BASE[name]):
            raise ValueError(f"optimizer {name!r} is the base itself; --base {base} does not apply")
        base = ERM_BASE[name]
    base = base or "sgd"
    if base not in BASES:
        raise KeyError(f"unknown base optimizer {base!r}; known: {', '.join(BASES)}")
    return OPTIMIZERS[name](params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm,
                            **resolve_hparams(name, hparams))


__all__ = ["ClosureOptimizer", "OPTIMIZERS", "available_optimizers", "build_optimizer",
           "optimizer_hparams", "register_optimizer", "resolve_hparams"]
