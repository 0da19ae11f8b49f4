"""What the sharpness measures share: work accounting, the projected-ascent loop, step-size schedules,
rho sweeps and the per-batch (m-sharpness) mode.

Every ball, ascent step, projection and random draw goes through :class:`landscape.geometry.Region`
(the shared :class:`~landscape.geometry.Geometry` at the base point, on flat vectors).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch

from landscape.geometry import Region

SCHEDULES = ("apgd", "constant", "cosine")
ValueAndGrad = Callable[[torch.Tensor], tuple[float, torch.Tensor]]
"""``f(e) -> (value, gradient of value w.r.t. e)`` at the perturbation ``e`` (a flat vector)."""

APGD_STEP = 2.0
"""Auto-PGD's first step as a fraction of the radius (Croce & Hein 2020: ``eta_0 = 2 eps``)."""
MOMENTUM = 0.0
"""The default weight ``beta`` of the previous step in ``x_{k+1} = P(x_k + (1 - beta) (z_{k+1} - x_k) + beta (x_k -
x_{k-1}))`` (Croce & Hein use ``beta = 0.25``; with this ascent's fixed-point restarts and ~20-step budgets no
momentum found better L-inf maxima of quadratics (mean 0.992 vs 0.958 of the enumerated maximum, d = 6) and the
same on a small MLP)."""
MEMORY = 10
"""Points (and their gradients) the L2 ascent keeps for its subspace model (see :func:`projected_ascent`)."""
TOL = 5e-3
"""``converged`` when the best value rose by at most this fraction of the gain over the last quarter of the steps."""
VANISHING = 1e-9
"""A gradient *vanishes* when a full step's first-order gain ``radius ||T g||_q`` is at most this times
``max(|f|, 1)``: its direction is rounding noise, so the ascent starts elsewhere and says so."""

STALL = 1e-6
"""An Auto-PGD step that moves less than this fraction of the radius has reached a fixed point (e.g. a vertex
of an L-inf ball); the run goes on from a seeded random point of the ball with the first step size."""

_COUNTED = ("grad", "hessian", "loss", "passes")

class Cost:
    """Gradients, Hessian-vector products, loss evaluations and data passes spent on objectives
    since this object was made (``add`` more objectives, e.g. mini-batch ones, as they are created)."""

    def __init__(self, *objectives: Any) -> None:
        self._start: list[tuple[Any, Counter[str]]] = []
        for obj in objectives:
            self.add(obj)

    def add(self, obj: Any) -> None:
        self._start.append((obj, Counter(obj.counts)))

    def to_dict(self) -> dict[str, int]:
        total: Counter[str] = Counter()
        for obj, start in self._start:
            for k in _COUNTED:
                total[k] += obj.counts[k] - start[k]
        return {"grads": total["grad"], "hvps": total["hessian"], "losses": total["loss"],
                "passes": total["passes"]}


def default_step_size(steps: int, schedule: str = "apgd") -> float:
    """The default first step as a fraction of the radius: ``2`` (``apgd``, Croce & Hein's ``2 eps``),
    ``1.5 / K`` (``constant``) or ``3 / K`` (``cosine``)."""
    if schedule == "apgd":
        return APGD_STEP
    return (3.0 if schedule == "cosine" else 1.5) / max(steps, 1)


def step_sizes(steps: int, radius: float, schedule: str = "constant", step_size: float | None = None) -> list[float]:
    """Step lengths ``eta_k`` (in the geometry's norm) of a fixed-schedule ``steps``-step ascent in a ball of
    ``radius``.

    ``step_size``: the first step as a fraction of ``radius`` (default :func:`default_step_size`: GA-SAM's /
    Zhang et al.'s ``eta = 1.5 rho / K`` for ``constant``, twice that for ``cosine``: the constant steps travel
    ``1.5 rho`` in all, the cosine ones ``1.5 rho (K + 1) / K`` (``sum_k cos(pi k / K) = 1``; 3 rho for one step,
    1.65 rho for ten); ``steps = 1`` gives SAM's single step to the boundary).
    ``constant``: ``eta_k = step_size * radius``; ``cosine``: ``eta_k = step_size * radius * (1 + cos(pi k / K)) / 2``.
    These schedules travel a fixed distance whatever ``steps``, so they do not converge as ``steps`` grows;
    ``apgd`` (the default of the measures) adapts its steps and has no fixed list.
    """
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if schedule not in SCHEDULES or schedule == "apgd":
        raise ValueError(f"a fixed step schedule must be constant or cosine; got {schedule!r}")
    frac = default_step_size(steps, schedule) if step_size is None else float(step_size)
    if frac <= 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if schedule == "constant":
        return [frac * radius] * steps
    return [frac * radius * 0.5 * (1.0 + math.cos(math.pi * k / steps)) for k in range(steps)]


def convergence(trace: Sequence[Sequence[float]], baseline: float, tol: float = TOL) -> tuple[float, bool]:
    """``(relative_change, converged)`` of an ascent from its trace (``trace[r][k]``: run ``r``'s best value
    over its iterates ``0..k``): with ``B_k = max_r trace[r][k]`` and ``w = ceil(K / 4)`` of the ``K`` steps,
    ``relative_change = (B_K - B_{K-w}) / |B_K - baseline|`` and ``converged = relative_change <= tol``
    (NaN and False for fewer than 2 steps: too short to tell)."""
    if not trace or len(trace[0]) < 3:
        return math.nan, False
    best = [max(run[k] for run in trace) for k in range(len(trace[0]))]
    window = math.ceil((len(best) - 1) / 4)
    rise, gain = best[-1] - best[-1 - window], abs(best[-1] - baseline)
    rel = 0.0 if rise <= 0 else rise / gain if gain > 0 else math.inf
    return rel, bool(rel <= tol)


def vanishing(region: Region, grad: torch.Tensor, radius: float, value: float) -> bool:
    """Whether a full step's first-order gain ``radius ||T g||_q`` is at most ``VANISHING max(|value|, 1)``
    (below it the step's direction is rounding noise, e.g. at an exact minimum)."""
    gain = radius * region.dual_norm(grad)
    return not gain > VANISHING * max(abs(value), 1.0)


@dataclass
class AscentResult:
    """Outcome of :func:`projected_ascent`.

    ``value`` / ``perturbation``: the best value over every iterate of every run, and where; ``run_values``:
    each run's best; ``trace[r][k]``: run ``r``'s best over its iterates ``0..k``; ``start_value``: ``f(0)``;
    ``start``: how run 0 left ``e = 0`` (``gradient``; ``eigenvector`` or ``random`` when the gradient
    vanishes); ``relative_change`` / ``converged``: :func:`convergence`; ``evaluations``: points evaluated.
    """

    value: float
    perturbation: torch.Tensor = field(repr=False)
    run_values: list[float]
    start_value: float
    evaluations: int
    trace: list[list[float]] = field(default_factory=list)
    start: str = "gradient"
    relative_change: float = math.nan
    converged: bool = False


def projected_ascent(
    value_and_grad: ValueAndGrad,
    region: Region,
    radius: float,
    *,
    steps: int,
    restarts: int = 0,
    schedule: str = "apgd",
    step_size: float | None = None,
    seed: int = 0,
    value: Callable[[torch.Tensor], float] | None = None,
    start: str = "uniform",
    direction: torch.Tensor | None = None,
    memory: int = MEMORY,
    momentum: float = MOMENTUM,
    tol: float = TOL,
    progress: Callable[..., None] | None = None,
) -> AscentResult:
    """Maximize ``f(e)`` over ``{||T^{-1} e||_p <= radius}``; return the best of all ``(1 + restarts) (steps + 1)``
    points visited (each run: ``steps`` gradients, then ``value(e)``, a value-only evaluation, at its last point).

    Run 0 starts at ``e = 0``, runs ``1..restarts`` at seeded random points of the ball (``start``:
    ``uniform`` or ``boundary``, :meth:`Geometry.sample`). Where the gradient *vanishes* (:func:`vanishing`)
    the first step goes to ``radius`` along ``direction`` (e.g. the top Hessian eigenvector) or to a seeded
    random point of the boundary instead (``start`` of the result says which).

    ``schedule = "apgd"`` (default; Auto-PGD, Croce & Hein 2020, Alg. 1)::

        z_{k+1} = P(x_k + u_k),  u_k = argmax_{||T^{-1} u||_p <= eta} u . grad f(x_k)   (Region.ascent / project)
        x_{k+1} = P(x_k + (1 - beta) (z_{k+1} - x_k) + beta (x_k - x_{k-1}))           (beta = ``momentum``)

    with ``eta_0 = step_size * radius`` (default ``2 radius``), and whenever a step fails to raise the best
    value: ``eta <- eta / 2`` and the next step leaves from the best point (Croce & Hein check this at
    checkpoints placed at fractions of the budget; here it is checked at every step, so that a run of ``K``
    steps is the first ``K`` steps of a longer one and the value never decreases as ``steps`` grows). A step
    that no longer moves (:data:`STALL`: a fixed point, e.g. an L-inf vertex) restarts the search at a seeded
    random point, within the same run and budget.
    For p = 2 (any ``T``), with ``memory > 0``, each step leaves instead from the maximizer of the
    secant model over the points seen: with ``u = T^{-1} e``, anchor ``a`` (the best of the last ``memory``
    points), ``S = [u_i - u_a]``, ``Y = [T g_i - T g_a]`` (``Y = B S`` for a quadratic of Hessian ``B`` in
    ``u``), ``u* = u_a + S x*`` with ``x* = argmax {(T g_a)^T S x + x^T S^T Y x / 2 : ||u_a + S x|| <= radius}``
    and the step ``u_{k+1} = P(u* + eta m / ||m||)`` along the model gradient ``m = T g_a + Y x*``. On a
    quadratic the points span a Krylov space and ``u*`` is its Rayleigh-Ritz / trust-region solution, so the
    ascent converges like Lanczos rather than like power iteration. ``schedule = "constant" / "cosine"``:
    GA-SAM's fixed steps (:func:`step_sizes`; eqs. 15-18), for reproducing its attack; they do not converge.
    """
    if restarts < 0 or steps < 0:
        raise ValueError(f"steps and restarts must be >= 0, got steps={steps}, restarts={restarts}")
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}; got {schedule!r}")
    frac = default_step_size(steps, schedule) if step_size is None else float(step_size)
    if not frac > 0:
        raise ValueError(f"step_size must be > 0, got {step_size}")
    if not 0 <= momentum < 1 or memory < 0:
        raise ValueError(f"need 0 <= momentum < 1 and memory >= 0, got momentum={momentum}, memory={memory}")
    etas = None if schedule == "apgd" else step_sizes(steps, radius, schedule, frac)
    t = region.diagonal() if schedule == "apgd" and region.geometry.p == 2.0 and memory > 0 else None
    zero = region.point.new_zeros(region.point.shape)
    best_value, best_e = -math.inf, zero
    run_values: list[float] = []
    traces: list[list[float]] = []
    start_value, how, evaluations = math.nan, "gradient", 0
    for run in range(1 + restarts):
        gen = torch.Generator().manual_seed(seed * 1_000_003 + run)
        e = zero if run == 0 else region.project(region.sample(radius, start, gen), radius)
        trace: list[float] = []
        run_best = -math.inf
        seg_best, seg_e, seg_g = -math.inf, e, zero  # the best point since the run's last (re)start
        prev: torch.Tensor | None = None
        eta = frac * radius
        model: list[tuple[torch.Tensor, torch.Tensor, float]] = []
        for k in range(steps + 1):
            if k < steps:
                v, g = value_and_grad(e)
            else:
                v, g = (value(e) if value is not None else value_and_grad(e)[0]), None
            evaluations += 1
            if progress is not None:
                progress(1)
            if run == 0 and k == 0:
                start_value = v
            run_best = max(run_best, v)
            if v > best_value:
                best_value, best_e = v, e
            trace.append(run_best)
            if g is None:
                break
            improved = v > seg_best
            if improved:
                seg_best, seg_e, seg_g = v, e, g
            if t is not None:
                model = (model + [(_safe_div(e, t), t * g, v)])[-(memory + 1):]
            if k == 0 and vanishing(region, g, radius, v):
                d = direction if direction is not None and run == 0 else region.sample(radius, start, gen)
                if run == 0:
                    how = "random" if direction is None else "eigenvector"
                e_next = region.project(region.ascent(d, radius), radius)
            elif etas is not None:
                e_next = region.project(e + region.ascent(g, etas[k]), radius)
            else:
                if not improved:  # stagnation: halve the step, leave from the best point
                    eta, e, g, v, prev = eta / 2, seg_e, seg_g, seg_best, None
                    model = [] if t is None else [(_safe_div(e, t), t * g, v)]
                if t is not None:
                    e_next = t * _model_step(model, radius, eta)
                else:
                    z = region.project(e + region.ascent(g, eta), radius)
                    e_next = z if prev is None or not momentum else region.project(
                        e + (1 - momentum) * (z - e) + momentum * (e - prev), radius)
                if not region.norm(e_next - e) > STALL * radius:  # a fixed point: restart at a random point
                    e_next = region.project(region.sample(radius, start, gen), radius)
                    eta, model, seg_best, e = frac * radius, [], -math.inf, None
            prev, e = e, e_next
        run_values.append(run_best)
        traces.append(trace)
    rel, converged = convergence(traces, start_value, tol)
    return AscentResult(best_value, best_e.clone(), run_values, start_value, evaluations, traces, how, rel, converged)


def _safe_div(e: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """``T^{-1} e`` on the coordinates in the ball (``T > 0``), 0 elsewhere."""
    return torch.where(t > 0, e / torch.where(t > 0, t, torch.ones_like(t)), torch.zeros_like(e))


def _model_step(model: list[tuple[torch.Tensor, torch.Tensor, float]], radius: float, eta: float) -> torch.Tensor:
    """The next point ``u`` of the L2 subspace ascent (see :func:`projected_ascent`): the secant model's
    maximizer ``u*`` over the span of the points in ``model`` (``(u_i, T g_i, f_i)``), then a step of
    length ``eta`` along the model gradient there, projected onto ``{||u|| <= radius}``."""
    a = max(range(len(model)), key=lambda i: model[i][2])
    ua, ga, _ = model[a]
    ritz, grad = ua, ga
    others = [m for i, m in enumerate(model) if i != a]
    if others:
        S = torch.stack([m[0] - ua for m in others], 1)
        Y = torch.stack([m[1] - ga for m in others], 1)
        f64 = torch.float64
        G = (S.T @ S).to(f64)
        gam, V = torch.linalg.eigh(G)
        keep = gam > 1e-10 * gam[-1].clamp_min(1e-300)
        if bool(keep.any()):
            C = V[:, keep] / gam[keep].sqrt()          # S C: an orthonormal basis of span(S)
            M = C.T @ (S.T @ Y).to(f64) @ C
            M = (M + M.T) / 2
            h = C.T @ (S.T @ ga).to(f64)
            aq = C.T @ (S.T @ ua).to(f64)
            r2 = radius ** 2 - max(float((ua @ ua).to(f64)) - float(aq @ aq), 0.0)
            z = _trust_region(M, h - M @ aq, math.sqrt(max(r2, 0.0)), aq)
            x = (C @ (z - aq)).to(S.dtype)
            ritz, grad = ua + S @ x, ga + Y @ x
    n = float(grad.norm())
    u = ritz + grad * (eta / n) if n > 0 and math.isfinite(n) else ritz
    norm = float(u.norm())
    return u * (radius / norm) if norm > radius else u


def _trust_region(M: torch.Tensor, h: torch.Tensor, r: float, near: torch.Tensor) -> torch.Tensor:
    """``argmax_{||z|| <= r} h.z + z.M z / 2`` for a small symmetric ``M`` (float64): ``z = (lam I - M)^{-1} h``
    with ``lam >= max(lambda_max(M), 0)`` found by bisection on ``||z|| = r``; in the hard case (``h`` without a
    component on the top eigenvector) the top eigenvector fills the rest of the radius, on ``near``'s side."""
    if r <= 0:
        return torch.zeros_like(h)
    mu, W = torch.linalg.eigh(M)
    hw = W.T @ h
    if float(mu[-1]) < 0:
        z = -hw / mu
        if float(z.norm()) <= r:
            return W @ z
    lo = max(float(mu[-1]), 0.0)
    scale = max(float(mu.abs().max()), 1e-300)
    gap = lo - mu
    flat = gap <= 1e-12 * scale
    if bool((hw[flat].abs() <= 1e-12 * max(float(hw.abs().max()), 1e-300)).all()):
        z = torch.where(flat, torch.zeros_like(hw), hw / torch.where(flat, torch.ones_like(gap), gap))
        rest = r * r - float(z @ z)
        if rest >= 0:
            side = float(W[:, -1] @ near)
            z[-1] = z[-1] + math.copysign(math.sqrt(rest), side if side != 0 else 1.0)
            return W @ z
    hi = lo + float(hw.norm()) / r + scale
    for _ in range(200):
        lam = 0.5 * (lo + hi)
        if float((hw / (lam - mu)).norm()) > r:
            lo = lam
        else:
            hi = lam
        if hi - lo <= 1e-15 * hi:
            break
    return W @ (hw / (hi - mu))


def parse_floats(text: str | Sequence[float] | float | None) -> list[float]:
    """``"0.01,0.05"`` -> ``[0.01, 0.05]``; a number or a list passes through; ``""``/None -> ``[]``."""
    if text is None:
        return []
    if isinstance(text, (int, float)):
        return [float(text)]
    if isinstance(text, str):
        parts = [t.strip() for t in text.replace(";", ",").split(",")]
        try:
            return [float(t) for t in parts if t]
        except ValueError as e:
            raise ValueError(f"expected a comma-separated list of numbers, got {text!r}") from e
    return [float(t) for t in text]


@dataclass
class Sweep:
    """One result per radius (``rows[i]`` at ``radii[i]``)."""

    measure: str
    radii: list[float]
    rows: list[Any]

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure, "rho": self.radii, "rows": [r.to_dict() for r in self.rows]}


def rho_sweep(measure: Callable[..., Any], objective: Any, rhos: Iterable[float], **kwargs: Any) -> Sweep:
    """``measure(objective, rho, **kwargs)`` for each ``rho`` (same seed each time: common random numbers)."""
    rhos = [float(r) for r in rhos]
    return Sweep(getattr(measure, "__name__", str(measure)), rhos, [measure(objective, rho, **kwargs) for rho in rhos])


def per_batch(objective: Any, batch_size: int, max_batches: int | None, seed: int,
              compute: Callable[[Any], float]) -> tuple[list[float], list[Any]]:
    """``compute(batch_objective)`` on each of ``objective.minibatches(batch_size, ...)`` (this process's rows;
    under DDP the values of all processes are gathered by summation). Returns ``(values, batches)``."""
    if not hasattr(objective, "minibatches"):
        raise ValueError("per-batch (m-sharpness) mode needs a data objective with minibatches()")
    batches = objective.minibatches(batch_size, limit=max_batches, seed=seed)
    values = [compute(b) for b in batches]
    return values, batches


def mean_std(values: Sequence[float], objective: Any | None = None) -> tuple[float, float, int]:
    """Mean, (population) standard deviation and count of ``values``, summed over processes through
    ``objective.reduce_sum`` when given."""
    t = torch.tensor([float(len(values)), float(sum(values)), float(sum(v * v for v in values))], dtype=torch.float64)
    if objective is not None:
        t = objective.reduce_sum(t.to(objective.device)).cpu()
    n = int(t[0])
    if n == 0:
        return math.nan, math.nan, 0
    mean = float(t[1]) / n
    var = max(float(t[2]) / n - mean * mean, 0.0)
    return mean, math.sqrt(var), n


__all__ = ["AscentResult", "Cost", "SCHEDULES", "Sweep", "convergence", "default_step_size", "mean_std", "parse_floats",
           "per_batch", "projected_ascent", "rho_sweep", "step_sizes", "vanishing"]
