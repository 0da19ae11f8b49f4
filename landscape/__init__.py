"""landscape: sharpness-aware training and loss-landscape geometry.

The front door (:mod:`landscape.api`), one call from a model, a loss and data to a number::

    import landscape
    landscape.hessian_eigenvalues(model, criterion, loader, k=5).eigenvalues
    landscape.hessian_trace(model, criterion, loader).trace
    landscape.sharpness_of(model, criterion, loader, rho=0.05, adaptive=True).sharpness
    landscape.surface(model, criterion, loader, points=21)["train_loss"]

Everything else is imported from its module (``landscape.objective``, ``landscape.curvature``, ...); the
package root loads them lazily, so ``import landscape`` stays cheap.
"""
from typing import Any

__version__ = "0.1.0"

_API = ("hessian_eigenvalues", "hessian_trace", "spectral_density", "sharpness_of", "surface")
_OBJECTIVE = ("Objective", "BatchLoss", "Criterion", "TaskLoss")


def __getattr__(name: str) -> Any:
    if name in _API:
        from landscape import api

        return getattr(api, name)
    if name in _OBJECTIVE:
        from landscape import objective

        return getattr(objective, name)
    raise AttributeError(f"module 'landscape' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API, *_OBJECTIVE])


__all__ = [*_API, *_OBJECTIVE, "__version__"]
