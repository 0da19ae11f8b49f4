"""The front door: one call from a model, a loss and data to a number.

Every function takes ``(model, loss, data)`` -- any ``nn.Module``; a task name, a mean-reduced
``criterion(output, target)`` or a ``loss_fn(model, batch) -> (sum, count)``; tensors ``(x, y)``, a dict of
tensors or any re-iterable of batches (a ``DataLoader``) -- or an :class:`~landscape.objective.Objective` in
place of all three (``landscape.Objective(model, data, loss=...)``: one objective shared by several
measures keeps its cached graphs)::

    import landscape
    eig = landscape.hessian_eigenvalues(model, nn.CrossEntropyLoss(), loader, k=5)
    print(eig.eigenvalues)

Options of the objective (``batch_size``, ``device``, ``dtype``, ``params``, ...) and each measure's own
options are keyword arguments. The model is left exactly as it was.
"""
from __future__ import annotations

from typing import Any, Sequence


_OBJECTIVE_OPTIONS = ("batch_size", "device", "dtype", "params", "hvp_mode", "max_block", "cache_graph",
                      "graph_memory", "cache_memory", "memory", "seed", "max_rows", "label_smoothing")


def _objective(model: Any, loss: Any, data: Any, kwargs: dict[str, Any]) -> Any:
    """``model`` if it is already an objective, else an :class:`~landscape.objective.Objective` built with the
    objective options in ``kwargs`` (taken out of it)."""
    from landscape.objective import Objective

    options = {k: kwargs.pop(k) for k in list(kwargs) if k in _OBJECTIVE_OPTIONS}
    if hasattr(model, "mvp") and hasattr(model, "w0"):
        if options or loss is not None or data is not None:
            raise ValueError("an Objective already fixes its loss, data and options")
        return model
    if data is None:
        raise ValueError("need data: tensors (x, y), a dict of tensors or a DataLoader")
    return Objective(model, data, loss=loss, **options)


def hessian_eigenvalues(model: Any, loss: Any = None, data: Any = None, k: int = 5, *, method: str = "lanczos",
                        **kwargs: Any) -> Any:
    """The ``k`` largest Hessian eigenvalues: thick-restart Lanczos, or PyHessian's power iteration
    (``method="power"``); ``kwargs`` go to :func:`~landscape.curvature.lanczos.lanczos` /
    :func:`~landscape.curvature.power.power_iteration` (``tol``, ``seed``, ``return_vectors``, ...).
    Returns an :class:`~landscape.curvature.lanczos.EigenResult` (``.eigenvalues``)."""
    obj = _objective(model, loss, data, kwargs)
    if method == "lanczos":
        from landscape.curvature.lanczos import lanczos

        return lanczos(obj.hessian, k, **kwargs)
    if method == "power":
        from landscape.curvature.power import power_iteration

        return power_iteration(obj.hessian, k, **kwargs)
    raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")


def hessian_trace(model: Any, loss: Any = None, data: Any = None, *, method: str | None = None,
                  **kwargs: Any) -> Any:
    """``tr(H)`` by ``method``, one of :data:`~landscape.curvature.trace.TRACE_METHODS` (default
    :data:`~landscape.curvature.trace.DEFAULT_TRACE_METHOD`, the most accurate per HVP by
    ``benchmarks/bench_trace.py``); ``kwargs`` go to the estimator (``max_samples``, ``rtol``, ``seed``, ...).
    Returns a :class:`~landscape.curvature.trace.TraceResult` (``.trace``, ``.stderr``)."""
    from landscape.curvature.trace import DEFAULT_TRACE_METHOD, estimate_trace

    return estimate_trace(_objective(model, loss, data, kwargs).hessian, method or DEFAULT_TRACE_METHOD, **kwargs)


def spectral_density(model: Any, loss: Any = None, data: Any = None, **kwargs: Any) -> Any:
    """The Hessian's spectral density by stochastic Lanczos quadrature; ``kwargs`` go to
    :func:`~landscape.curvature.density.spectral_density` (``num_runs``, ``num_steps``, ...)."""
    from landscape.curvature.density import spectral_density as slq

    return slq(_objective(model, loss, data, kwargs).hessian, **kwargs)


def sharpness_of(model: Any, loss: Any = None, data: Any = None, rho: float = 0.05, *, adaptive: bool = False,
              p: float = 2, kind: str = "worst", **kwargs: Any) -> Any:
    """Sharpness at radius ``rho``: ``max_{||T^-1 e||_p <= rho} L(w + e) - L(w)`` (``kind="worst"``) or the
    mean increase under random perturbations (``"average"``), with ASAM's normalization ``T = |w| + eta``
    when ``adaptive``. ``kwargs`` go to :func:`~landscape.sharpness.worst_case.worst_case_sharpness` /
    :func:`~landscape.sharpness.average_case.average_sharpness` (``steps``, ``seed``, ``samples``, ...)."""
    from landscape.geometry import Geometry

    obj = _objective(model, loss, data, kwargs)
    geometry = kwargs.pop("geometry", None) or Geometry(p=p, normalization="element" if adaptive else "none")
    if kind == "worst":
        from landscape.sharpness.worst_case import worst_case_sharpness

        return worst_case_sharpness(obj, rho, geometry=geometry, **kwargs)
    if kind == "average":
        from landscape.sharpness.average_case import average_sharpness

        return average_sharpness(obj, rho, geometry=geometry, **kwargs)
    raise ValueError(f"kind must be 'worst' or 'average', got {kind!r}")


def surface(model: Any, loss: Any = None, data: Any = None, *, dims: int = 2,
            range: Sequence[float] = (-1.0, 1.0), points: int = 21, norm: str = "filter", bias_bn: str = "zero",
            seed: int = 0, path: str | None = None, **kwargs: Any) -> Any:
    """The loss (and accuracy) on a ``points``-per-axis grid over ``range`` along ``dims`` (1 or 2) random
    directions normalized by ``norm`` (Li et al.'s filter normalization by default), like
    loss-landscapes' ``random_plane``. ``path``: a resumable ``.npz`` result file. ``kwargs`` go to
    :func:`~landscape.landscapes.surface.compute_surface` (``chunk_size``, ``bn``, ...). Returns a
    :class:`~landscape.landscapes.surface.Surface` (``surface["train_loss"]``, ``.axes``)."""
    from landscape.landscapes.directions import random_directions
    from landscape.landscapes.surface import axis, compute_surface

    if dims not in (1, 2):
        raise ValueError(f"dims must be 1 or 2, got {dims}")
    obj = _objective(model, loss, data, kwargs)
    dirs = random_directions(obj, dims, seed=seed, norm=norm, bias_bn=bias_bn)
    grid = axis(range[0], range[1], points)
    return compute_surface({"train": obj}, dirs, [grid] * dims, path=path, **kwargs)


__all__ = ["hessian_eigenvalues", "hessian_trace", "sharpness_of", "spectral_density", "surface"]
