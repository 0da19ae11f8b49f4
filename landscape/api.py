"""The front door: one call from a model, a loss and data to a number.

Every function takes ``(model, loss, data)`` -- any ``nn.Module``; a task name, a mean-reduced
``criterion(output, target)`` or a ``loss_fn(model, batch) -> (sum, count)``; tensors ``(x, y)``, a dict of
tensors or any re-iterable of batches (a ``DataLoader``) -- or an :class:`~landscape.objective.Objective` in
place of all three (``landscape.Objective(model, data, loss=...)``: one objective shared by several
measures keeps its cached graphs); eigenvalues, trace and density also take an operator in its place
(``objective.ggn``, ``objective.fisher``)::

    import landscape
    eig = landscape.hessian_eigenvalues(model, nn.CrossEntropyLoss(), loader, k=5)
    print(eig.eigenvalues)

Options of the objective (``batch_size``, ``device``, ``dtype``, ``params``, ...) and each measure's own
options are keyword arguments; a keyword the measure itself takes goes to the measure (``seed``; the
sharpness measures' ``batch_size``, m-sharpness), so the objective's stream seed is ``data_seed`` (and
``memory="low"``, a string, is the objective's). The model is left exactly as it was.
"""
from __future__ import annotations

import inspect
from typing import Any, Callable, Sequence


_OBJECTIVE_OPTIONS = ("batch_size", "device", "dtype", "params", "hvp_mode", "max_block", "cache_graph",
                      "graph_memory", "cache_memory", "memory", "data_seed", "max_rows", "label_smoothing")


def _objective(model: Any, loss: Any, data: Any, kwargs: dict[str, Any], *measures: Callable[..., Any]) -> Any:
    """``model`` if it is already an objective, else an :class:`~landscape.objective.Objective` built with the
    objective options in ``kwargs`` (taken out of it); an option that one of ``measures`` takes stays in
    ``kwargs`` for the measure."""
    from landscape.objective import Objective

    own = {name for f in measures for name in inspect.signature(f).parameters}
    if isinstance(kwargs.get("memory"), str):  # the objective's memory="low" (an ascent's ``memory`` is a size)
        own.discard("memory")
    options = {k: kwargs.pop(k) for k in list(kwargs) if k in _OBJECTIVE_OPTIONS and k not in own}
    if hasattr(model, "mvp") and hasattr(model, "w0"):
        if options or loss is not None or data is not None:
            raise ValueError(f"an Objective already fixes its loss, data and options; got "
                             f"{', '.join(sorted(options)) or 'a loss or data'} beside it")
        return model
    if _is_operator(model):
        raise ValueError(f"{type(model).__name__} is an operator: this measure needs an Objective or (model, loss, "
                         "data)")
    if data is None:
        raise ValueError("need data: tensors (x, y), a dict of tensors or a DataLoader")
    if "data_seed" in options:
        options["seed"] = options.pop("data_seed")
    return Objective(model, data, loss=loss, **options)


def _is_operator(x: Any) -> bool:
    from landscape.curvature.operators import LinearOperator

    return isinstance(x, LinearOperator)


def _operator(model: Any, loss: Any, data: Any, kwargs: dict[str, Any], *measures: Callable[..., Any]) -> Any:
    """The Hessian of :func:`_objective`'s objective, or ``model`` itself if it is already an operator (an
    objective's ``.ggn`` or ``.fisher``, a :class:`~landscape.curvature.operators.MatrixOperator`)."""
    if _is_operator(model):
        if loss is not None or data is not None:
            raise ValueError("an operator already fixes its loss and data")
        return model
    return _objective(model, loss, data, kwargs, *measures).hessian


def hessian_eigenvalues(model: Any, loss: Any = None, data: Any = None, k: int = 5, *, method: str = "lanczos",
                        **kwargs: Any) -> Any:
    """The ``k`` largest Hessian eigenvalues: thick-restart Lanczos, or PyHessian's power iteration
    (``method="power"``); ``kwargs`` go to :func:`~landscape.curvature.lanczos.lanczos` /
    :func:`~landscape.curvature.power.power_iteration` (``tol``, ``seed``, ``return_vectors``, ...).
    Returns an :class:`~landscape.curvature.lanczos.EigenResult` (``.eigenvalues``)."""
    from landscape.curvature.lanczos import lanczos
    from landscape.curvature.power import power_iteration

    measures = {"lanczos": lanczos, "power": power_iteration}
    if method not in measures:
        raise ValueError(f"method must be 'lanczos' or 'power', got {method!r}")
    return measures[method](_operator(model, loss, data, kwargs, measures[method]), k, **kwargs)


def hessian_trace(model: Any, loss: Any = None, data: Any = None, *, method: str | None = None,
                  **kwargs: Any) -> Any:
    """``tr(H)`` by ``method``, one of :data:`~landscape.curvature.trace.TRACE_METHODS` (default
    :data:`~landscape.curvature.trace.DEFAULT_TRACE_METHOD`, the most accurate per HVP by
    ``benchmarks/bench_trace.py``); ``kwargs`` go to the estimator (``max_samples``, ``rtol``, ``seed``, ...).
    Returns a :class:`~landscape.curvature.trace.TraceResult` (``.trace``, ``.stderr``)."""
    from landscape.curvature.trace import DEFAULT_TRACE_METHOD, estimate_trace, trace_estimator

    method = method or DEFAULT_TRACE_METHOD
    return estimate_trace(_operator(model, loss, data, kwargs, trace_estimator(method)), method, **kwargs)


def spectral_density(model: Any, loss: Any = None, data: Any = None, **kwargs: Any) -> Any:
    """The Hessian's spectral density by stochastic Lanczos quadrature; ``kwargs`` go to
    :func:`~landscape.curvature.density.spectral_density` (``num_runs``, ``num_steps``, ...)."""
    from landscape.curvature.density import spectral_density as slq

    return slq(_operator(model, loss, data, kwargs, slq), **kwargs)


def sharpness_of(model: Any, loss: Any = None, data: Any = None, rho: float = 0.05, *, adaptive: bool = False,
              p: float = 2, kind: str = "worst", **kwargs: Any) -> Any:
    """Sharpness at radius ``rho``: ``max_{||T^-1 e||_p <= rho} L(w + e) - L(w)`` (``kind="worst"``) or the
    mean increase under random perturbations (``"average"``), with ASAM's normalization ``T = |w| + eta``
    when ``adaptive``. ``kwargs`` go to :func:`~landscape.sharpness.worst_case.worst_case_sharpness` /
    :func:`~landscape.sharpness.average_case.average_sharpness` (``steps``, ``seed``, ``samples``, ...)."""
    from landscape.geometry import Geometry
    from landscape.sharpness.average_case import average_sharpness
    from landscape.sharpness.worst_case import worst_case_sharpness

    measures = {"worst": worst_case_sharpness, "average": average_sharpness}
    if kind not in measures:
        raise ValueError(f"kind must be 'worst' or 'average', got {kind!r}")
    obj = _objective(model, loss, data, kwargs, measures[kind])
    geometry = kwargs.pop("geometry", None) or Geometry(p=p, normalization="element" if adaptive else "none")
    return measures[kind](obj, rho, geometry=geometry, **kwargs)


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
    obj = _objective(model, loss, data, kwargs, compute_surface)
    dirs = random_directions(obj, dims, seed=seed, norm=norm, bias_bn=bias_bn)
    grid = axis(range[0], range[1], points)
    return compute_surface({"train": obj}, dirs, [grid] * dims, path=path, **kwargs)


__all__ = ["hessian_eigenvalues", "hessian_trace", "sharpness_of", "spectral_density", "surface"]
