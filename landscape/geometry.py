"""The perturbation geometry: one p-norm ball with a normalization operator ``T``.

Every sharpness-aware optimizer and every sharpness measure perturbs weights
inside the same kind of region (ASAM Def. 2, GA-SAM Sec. 4)::

    S(w, g) = { e : ||T^{-1} e||_p <= rho },   T = diag(T_1 I_{n_1}, ..., T_l I_{n_l})  (diagonal, T > 0)

and this module is the one implementation of it. Vectors are *lists of
tensors*, one per parameter tensor (an optimizer's ``params``, or
:meth:`landscape.objective.Objective.unflatten` of a flat vector), so the
optimizers and the measures run literally the same code.

Normalization operators (``n_i`` elements in tensor ``i``, ``n`` in all perturbed tensors):

==================  ==========================================  =================================
``none``            T = 1                                        SAM
``element``         T_j = |w_j| + eta                           ASAM element-wise
``filter``          T = ||f_k||_2 + eta on each conv filter f_k  ASAM eq. 5 (dim-0 slices of
                    (dim-0 slice of a >=3-D weight), |w_j| + eta  conv weights; other tensors
                    elsewhere                                     element-wise)
``layer``           T_i = ||w_i||_2 + eta                        layer-wise weight norm
``layer_rms``       T_i = ||w_i||_2 / sqrt(n_i)                  GA-SAM ablation
``gradient``        T_i = sqrt(n_i) / (||g_i||_2 sqrt(n))        GA-SAM eq. 13 (gradient strength)
``gradient_element`` T_j = 1 / (|g_j| sqrt(n))                   GA-SAM element-wise ablation
``gradient_model``  T = 1 / ||g||_2                              GA-SAM model-wise ablation
``weight_gradient`` T_i = ||w_i||_2 / ||g_i||_2                  Layer-SAM; GA-SAM ablation
``inverse_gradient`` T_i = 1 / ||g_i||_2                         GA-SAM ablation
==================  ==========================================  =================================

Bias / normalization-layer exclusion (``exclude``) acts on the *exempt* tensors: by default those with
at most one dimension (biases and the weights of BatchNorm/LayerNorm/...); a caller that knows the
parameter names passes its own mask (``scaling(..., exempt=...)``: ASAM's optimizers exempt biases only,
ASAM Sec. 4). ``"none"`` treats them like the others, ``"unscaled"`` gives them ``T = 1`` (ASAM's
default: no bias normalization), ``"unperturbed"`` leaves them out of the ball entirely (never
perturbed, not counted in ``n``).

The layer-wise operators (``layer``, ``layer_rms``, ``weight_gradient``, ``gradient``,
``inverse_gradient``) take one ``T_i`` per tensor, or per group of tensors with ``groups`` (a group id
per tensor, e.g. one per module so that a layer's weight and bias share ``T_i``: ``||w_i||`` and
``||g_i||`` over the group's tensors together, ``n_i`` their total size).

Operations (``rho`` the radius, ``q = p / (p - 1)`` the dual exponent):

* :meth:`Geometry.ascent`: the dual-norm steepest-ascent step
  ``argmax_{||T^{-1} e||_p <= rho} g.e = rho T sgn(Tg) |Tg|^{q-1} / ||Tg||_q^{q-1}``
  (GA-SAM eq. 15, ASAM Sec. 2): ``rho T^2 g / ||Tg||_2`` for p = 2, ``rho T sgn(g)`` for p = inf;
* :meth:`Geometry.project`: the projection onto the ball, ``v min(1, rho / ||T^{-1} v||_2)``
  for p = 2 (eq. 17) and ``T clip(T^{-1} v, -rho, rho)`` for p = inf (eq. 18);
* :meth:`Geometry.norm`: ``||T^{-1} v||_p``; :meth:`Geometry.sample`: random points.

:class:`Region` binds a geometry to one point (``T`` evaluated there) and runs the same operations on
flat parameter vectors (those of :class:`~landscape.objective.Objective`), as the sharpness measures do.
"""
from __future__ import annotations

import functools
import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import torch

Tensors = Sequence[torch.Tensor]

NORMALIZATIONS = ("none", "element", "filter", "layer", "layer_rms", "gradient", "gradient_element",
                  "gradient_model", "weight_gradient", "inverse_gradient")
EXCLUDE = ("none", "unscaled", "unperturbed")
DISTRIBUTIONS = ("gaussian", "uniform", "boundary")
_NEEDS_GRAD = {"gradient", "gradient_element", "gradient_model", "weight_gradient", "inverse_gradient"}
_TAKES_ETA = {"element", "filter", "layer"}
_TINY = 1e-12  # floor of gradient norms and of T in T^{-1}: a zero gradient gives a zero step


@dataclass
class Scaling:
    """``T`` evaluated at one point: ``factors[i]`` broadcasts against tensor ``i`` (``None``: T = 1);
    ``active[i]`` is False for a tensor outside the ball (never perturbed)."""

    factors: list[torch.Tensor | None]
    active: list[bool]

    def __len__(self) -> int:
        return len(self.factors)


@dataclass(frozen=True)
class Geometry:
    """The region ``{e : ||T^{-1} e||_p <= rho}`` (see the module docstring for ``T``).

    ``p``: 2, ``inf``, or any ``p > 1`` for :meth:`ascent`/:meth:`norm` (projection and
    uniform sampling have closed forms for 2 and inf only). ``eta``: ASAM's stability term,
    added to ``T`` for ``element``, ``filter`` and ``layer``.
    """

    p: float = 2.0
    normalization: str = "none"
    eta: float = 0.0
    exclude: str = "none"

    def __post_init__(self) -> None:
        p = float(self.p)
        if not p > 1:
            raise ValueError(f"p must be > 1 (2 or inf for SAM-style balls), got {self.p}")
        object.__setattr__(self, "p", p)
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}; got {self.normalization!r}")
        if self.exclude not in EXCLUDE:
            raise ValueError(f"exclude must be one of {', '.join(EXCLUDE)}; got {self.exclude!r}")
        if self.eta < 0:
            raise ValueError(f"eta must be >= 0, got {self.eta}")

    @property
    def needs_grad(self) -> bool:
        """Whether ``T`` depends on the gradient (GA-SAM, Layer-SAM)."""
        return self.normalization in _NEEDS_GRAD

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["p"] = "inf" if math.isinf(self.p) else self.p
        return d

    # ------------------------------------------------------------------ T
    def scaling(self, params: Tensors, grads: Tensors | None = None, exempt: Sequence[bool] | None = None,
                groups: Sequence[int] | None = None) -> Scaling:
        """``T`` at weights ``params`` (and gradient ``grads`` for the gradient-based operators).

        ``exempt``: which tensors ``exclude`` applies to (default: those with at most one dimension);
        ``groups``: a group id per tensor for the layer-wise operators (default: each tensor its own)."""
        if self.needs_grad and grads is None:
            raise ValueError(f"normalization {self.normalization!r} needs the gradient")
        if exempt is None:
            exempt = [p.dim() <= 1 for p in params]
        elif len(exempt) != len(params):
            raise ValueError(f"{len(params)} tensors but an exempt mask for {len(exempt)}")
        if groups is not None and len(groups) != len(params):
            raise ValueError(f"{len(params)} tensors but group ids for {len(groups)}")
        active = [not (self.exclude == "unperturbed" and x) for x in exempt]
        scaled = [a and not (self.exclude == "unscaled" and x) for a, x in zip(active, exempt)]
        factors: list[torch.Tensor | None] = [None] * len(params)
        idx = [i for i, s in enumerate(scaled) if s]
        if self.normalization == "none" or not idx:
            return Scaling(factors, active)
        w = [params[i].detach() for i in idx]
        norm = self.normalization
        if norm == "element":
            made = torch._foreach_abs(w)
            torch._foreach_add_(made, self.eta)
        elif norm == "filter":
            made = [_filter_norms(t) + self.eta if t.dim() >= 3 else t.abs() + self.eta for t in w]
        elif norm in ("layer", "layer_rms", "weight_gradient"):
            wn = _grouped(_acc(torch.stack(torch._foreach_norm(w))), groups, idx)
            if norm == "layer":
                tn = wn + self.eta
            elif norm == "layer_rms":
                tn = wn / _grouped(_sqrt_sizes(tuple(t.numel() for t in w), wn.dtype, wn.device), groups, idx)
            else:
                gn = _grad_norms([grads[i] for i in idx], floor=0.0)  # type: ignore[index]
                tn = wn / _grouped(gn, groups, idx).clamp_min(_TINY)
            made = list(tn.unbind())
        else:
            g = [grads[i].detach() for i in idx]  # type: ignore[index]
            n = sum(params[i].numel() for i, a in enumerate(active) if a)
            if norm == "gradient":
                gn = _grouped(_grad_norms(g, floor=0.0), groups, idx).clamp_min(_TINY)
                sizes = _grouped(_sqrt_sizes(tuple(t.numel() for t in g), gn.dtype, gn.device), groups, idx)
                made = list((sizes / (gn * math.sqrt(n))).unbind())
            elif norm == "gradient_element":
                made = [1.0 / (_acc(t.abs()).clamp_min(_TINY) * math.sqrt(n)) for t in g]
            elif norm == "gradient_model":
                total = torch.linalg.vector_norm(_grad_norms(g, floor=0.0)).clamp_min(_TINY)
                made = [1.0 / total] * len(g)
            else:  # inverse_gradient
                made = list((1.0 / _grouped(_grad_norms(g, floor=0.0), groups, idx).clamp_min(_TINY)).unbind())
        for i, f in zip(idx, made):
            factors[i] = f.to(params[i].dtype)
        return Scaling(factors, active)

    # ----------------------------------------------------------- operations
    def ascent(self, grads: Tensors, scaling: Scaling, radius: float | torch.Tensor,
               eps: float = 0.0) -> list[torch.Tensor]:
        """``e = argmax_{||T^{-1} e||_p <= radius} g.e = radius T sgn(Tg)|Tg|^{q-1} / ||Tg||_q^{q-1}``
        (GA-SAM eq. 15). Inactive tensors get zeros; a zero gradient gives ``e = 0``.

        ``eps > 0`` regularizes the norm as GSAM does (``rho g / (||g|| + eps)``, Algo. 1 step 1a):
        the denominator becomes ``(||Tg||_q + eps)^{q-1}`` (no effect for p = inf); the point is then
        just inside the ball instead of on its boundary."""
        _check(grads, scaling)
        out: list[torch.Tensor | None] = [None] * len(grads)
        idx = [i for i, a in enumerate(scaling.active) if a]
        for i, a in enumerate(scaling.active):
            if not a:
                out[i] = torch.zeros_like(grads[i])
        if not idx:
            return out  # type: ignore[return-value]
        g = [grads[i] for i in idx]
        T = [scaling.factors[i] for i in idx]
        if math.isinf(self.p):  # sgn(T g) = sgn(g): T >= 0
            e = _foreach_scale(_mul(torch._foreach_sign(g), T), radius)
        elif self.p == 2.0 and _per_tensor(T):  # ||T g|| = ||(T_i ||g_i||)_i||: one norm, one product
            norms = _acc(torch.stack(torch._foreach_norm(g)))
            t = _stack_factors(T, norms)
            denom = (torch.linalg.vector_norm(t * norms) + eps).clamp_min(_TINY)
            e = _mul(g, list((t * t * (radius / denom)).to(g[0].dtype).unbind()))
        elif self.p == 2.0:
            z = _mul(g, T)  # T g
            denom = (_total_norm(z, 2.0) + eps).clamp_min(_TINY)
            e = _foreach_scale(_mul(z, T), radius / denom)
        else:
            z = _mul(g, T)
            q = self.p / (self.p - 1)
            denom = (_total_norm(z, q) + eps).clamp_min(_TINY) ** (q - 1)
            e = [torch.sign(t) * t.abs() ** (q - 1) for t in z]
            e = _foreach_scale(_mul(e, T), radius / denom)
        for i, t in zip(idx, e):
            out[i] = t
        return out  # type: ignore[return-value]

    def norm(self, vecs: Tensors, scaling: Scaling) -> torch.Tensor:
        """``||T^{-1} v||_p`` over the active tensors (a 0-d tensor, at least float32)."""
        _check(vecs, scaling)
        idx = [i for i, a in enumerate(scaling.active) if a]
        if not idx:
            return torch.zeros((), device=vecs[0].device if vecs else None)
        v, T = [vecs[i] for i in idx], [scaling.factors[i] for i in idx]
        if _per_tensor(T):  # T^{-1} constant on each tensor: ||(||v_i||_p / T_i)_i||_p
            norms = _acc(torch.stack(torch._foreach_norm(v, self.p)))
            return torch.linalg.vector_norm(norms / _stack_factors(T, norms).clamp_min(_TINY), self.p)
        return _total_norm(_inv(v, T), self.p)

    def project(self, vecs: Tensors, scaling: Scaling, radius: float | torch.Tensor) -> list[torch.Tensor]:
        """Projection onto the ball: ``v min(1, radius / ||T^{-1} v||_2)`` (p = 2, GA-SAM eq. 17) or
        ``T clip(T^{-1} v, -radius, radius)`` (p = inf, eq. 18); inactive tensors become zero."""
        _check(vecs, scaling)
        out = [v if a else torch.zeros_like(v) for v, a in zip(vecs, scaling.active)]
        idx = [i for i, a in enumerate(scaling.active) if a]
        if not idx:
            return out
        v = [vecs[i] for i in idx]
        T = [scaling.factors[i] for i in idx]
        if self.p == 2.0:
            norm = self.norm(v, Scaling(T, [True] * len(v)))
            factor = torch.clamp(radius / norm.clamp_min(_TINY), max=1.0)
            projected = _foreach_scale(v, factor)
        elif math.isinf(self.p):
            if torch.is_tensor(radius):
                projected = _mul([torch.clamp(a, -radius, radius) for a in _inv(v, T)], T)
            else:
                inner = _inv(v, T)
                inner = torch._foreach_clamp_max(torch._foreach_clamp_min(inner, -float(radius)), float(radius))
                projected = _mul(inner, T)
        else:
            raise ValueError(f"projection onto an L{self.p:g} ball has no closed form here; use p = 2 or inf")
        for i, t in zip(idx, projected):
            out[i] = t
        return out

    def sample(self, like: Tensors, scaling: Scaling, radius: float, distribution: str = "gaussian",
               generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """A random perturbation ``e = T a`` (inactive tensors zero), drawn on the CPU from ``generator``
        (device independent) then moved to each tensor's device and dtype:

        * ``gaussian``: ``a ~ N(0, radius^2 I)`` (average-case sharpness; not confined to the ball),
        * ``uniform``: ``a`` uniform in ``{||a||_p <= radius}`` (p = 2 or inf),
        * ``boundary``: a Gaussian direction rescaled to ``||a||_p = radius`` exactly.
        """
        if distribution not in DISTRIBUTIONS:
            raise ValueError(f"distribution must be one of {', '.join(DISTRIBUTIONS)}; got {distribution!r}")
        _check(like, scaling)
        idx = [i for i, a in enumerate(scaling.active) if a]
        z = [torch.randn(like[i].shape, generator=generator, dtype=torch.float64) for i in idx]
        if distribution == "gaussian":
            a = [t * radius for t in z]
        elif distribution == "boundary":
            norm = _total_norm(z, self.p)
            a = [t * (radius / norm) for t in z]
        elif self.p == 2.0:  # uniform in the L2 ball: uniform direction, radius * U^(1/d)
            d = sum(t.numel() for t in z)
            u = torch.rand((), generator=generator, dtype=torch.float64) ** (1.0 / max(d, 1))
            a = [t * (radius * u / _total_norm(z, 2.0)) for t in z]
        elif math.isinf(self.p):
            a = [(torch.rand(like[i].shape, generator=generator, dtype=torch.float64) * 2 - 1) * radius for i in idx]
        else:
            raise ValueError(f"uniform sampling in an L{self.p:g} ball is not implemented; use p = 2 or inf")
        out = [torch.zeros_like(t) for t in like]
        for i, t in zip(idx, a):
            t = t.to(like[i].device, like[i].dtype)
            f = scaling.factors[i]
            out[i] = t if f is None else t * f
        return out


class Region:
    """The geometry at one point, on flat vectors: ``{e : ||T_w^{-1} e||_p <= radius}`` with ``T``
    evaluated once at ``point`` (and ``grad`` for the gradient-based operators).

    Flat vectors of length ``sum(prod(shapes))`` (an :class:`~landscape.objective.Objective`'s
    parameter vectors) are split into per-tensor views of ``shapes``, handed to the
    :class:`Geometry` methods, and concatenated back; nothing is re-implemented here. ``names``
    (optional) labels the tensors.
    """

    def __init__(self, geometry: Geometry, shapes: Sequence[Sequence[int]], point: torch.Tensor,
                 grad: torch.Tensor | None = None, names: Sequence[str] | None = None) -> None:
        self.geometry = geometry
        self.shapes = [tuple(s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.names = list(names) if names is not None else [str(i) for i in range(len(self.shapes))]
        if point.dim() != 1 or point.numel() != sum(self.sizes):
            raise ValueError(f"point must be a flat vector of {sum(self.sizes)} elements, "
                             f"got shape {tuple(point.shape)}")
        if geometry.needs_grad and grad is None:
            raise ValueError(f"normalization {geometry.normalization!r} needs the gradient at the point")
        self.point = point.detach()
        self.scaling = geometry.scaling(self.split(self.point), None if grad is None else self.split(grad.detach()))

    @classmethod
    def of(cls, geometry: Geometry, objective: Any, point: torch.Tensor | None = None,
           grad: torch.Tensor | None = None) -> "Region":
        """The region around ``point`` (default ``objective.w0``) of an objective (anything with ``shapes``,
        ``names``, ``w0`` and ``grad(w)``); the gradient is computed there only if ``T`` needs it."""
        point = objective.w0 if point is None else point
        if geometry.needs_grad and grad is None:
            grad = objective.grad(point)
        return cls(geometry, objective.shapes, point, grad, getattr(objective, "names", None))

    # ------------------------------------------------------------ flat <-> list
    def split(self, v: torch.Tensor) -> list[torch.Tensor]:
        """Per-tensor views of a flat vector."""
        return [t.view(s) for t, s in zip(v.split(self.sizes), self.shapes)]

    @staticmethod
    def join(ts: Sequence[torch.Tensor]) -> torch.Tensor:
        """One flat vector from per-tensor tensors."""
        return torch.cat([t.reshape(-1) for t in ts])

    # --------------------------------------------------------------- operations
    def ascent(self, grad: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
        """:meth:`Geometry.ascent` on a flat gradient: the steepest-ascent step of length ``radius``."""
        return self.join(self.geometry.ascent(self.split(grad), self.scaling, radius))

    def project(self, v: torch.Tensor, radius: float | torch.Tensor) -> torch.Tensor:
        """:meth:`Geometry.project` of a flat vector onto the ball of ``radius``."""
        return self.join(self.geometry.project(self.split(v), self.scaling, radius))

    def norm(self, v: torch.Tensor) -> float:
        """:meth:`Geometry.norm`: ``||T^{-1} v||_p`` of a flat vector."""
        return float(self.geometry.norm(self.split(v), self.scaling))

    def sample(self, radius: float, distribution: str = "gaussian",
               generator: torch.Generator | None = None) -> torch.Tensor:
        """:meth:`Geometry.sample` as one flat vector (dtype and device of the point)."""
        like = self.split(self.point)
        return self.join(self.geometry.sample(like, self.scaling, radius, distribution, generator))

    def diagonal(self) -> torch.Tensor:
        """``T`` as a flat vector (1 where ``T = 1``, 0 on tensors outside the ball), so that ``e = T u``
        maps the unit-free ball ``{||u||_p <= radius}`` onto this region."""
        parts = []
        for shape, f, a in zip(self.shapes, self.scaling.factors, self.scaling.active):
            t = self.point.new_ones(shape) if a else self.point.new_zeros(shape)
            parts.append(t if f is None or not a else t * f.to(t.dtype))
        return self.join(parts)

    def dual_norm(self, grad: torch.Tensor) -> float:
        """``||T g||_q`` (``q = p / (p - 1)``) = ``g . ascent(g, 1)``: the first-order gain of a unit step."""
        return float(torch.dot(grad.reshape(-1).to(self.point.dtype), self.ascent(grad, 1.0)))


# ---------------------------------------------------------------------- helpers
def _check(vecs: Tensors, scaling: Scaling) -> None:
    if len(vecs) != len(scaling):
        raise ValueError(f"{len(vecs)} tensors but a scaling for {len(scaling)}")


@functools.lru_cache(maxsize=64)
def _sqrt_sizes(numels: tuple[int, ...], dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """``[sqrt(n_i)]`` on ``device``, built once per layout (a host-to-device copy every step would
    synchronize the device)."""
    return torch.tensor([math.sqrt(n) for n in numels], dtype=dtype, device=device)


def _grouped(norms: torch.Tensor, groups: Sequence[int] | None, idx: Sequence[int]) -> torch.Tensor:
    """Per-tensor L2 norms -> the norm of each tensor's group, ``sqrt(sum_{j in group} norms_j^2)``, one
    entry per tensor (``groups`` holds a group id per tensor of the full list, ``idx`` the tensors here)."""
    if groups is None:
        return norms
    ids = tuple(groups[i] for i in idx)
    if len(set(ids)) == len(ids):
        return norms
    seg, n = _segments(ids, norms.device)
    sq = torch.zeros(n, dtype=norms.dtype, device=norms.device).index_add_(0, seg, norms * norms)
    return sq.sqrt()[seg]


@functools.lru_cache(maxsize=64)
def _segments(ids: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, int]:
    """Group ids -> dense indices 0..m-1 on ``device`` (built once per layout, no per-step copy) and m."""
    dense = {g: k for k, g in enumerate(dict.fromkeys(ids))}
    return torch.tensor([dense[g] for g in ids], dtype=torch.long, device=device), len(dense)


def _filter_norms(w: torch.Tensor) -> torch.Tensor:
    """``||w[k]||_2`` of each dim-0 slice, shaped to broadcast against ``w``."""
    return torch.linalg.vector_norm(w.reshape(len(w), -1), dim=1).reshape(-1, *([1] * (w.dim() - 1)))


def _acc(t: torch.Tensor) -> torch.Tensor:
    """``t`` in an accumulation precision: float32 for half types (AMP), else unchanged."""
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _grad_norms(g: Tensors, floor: float = _TINY) -> torch.Tensor:
    """Per-tensor L2 norms (at least float32; floored so that ``1 / ||g_i||`` stays finite)."""
    n = _acc(torch.stack(torch._foreach_norm(list(g))))
    return n.clamp_min(floor) if floor else n


def _per_tensor(factors: Sequence[torch.Tensor | None]) -> bool:
    """Whether ``T`` is one scalar per tensor (layer-wise, model-wise), and not 1 everywhere."""
    return (any(f is not None for f in factors)
            and all(f is None or (torch.is_tensor(f) and f.dim() == 0) for f in factors))


def _stack_factors(factors: Sequence[torch.Tensor | None], like: torch.Tensor) -> torch.Tensor:
    """Per-tensor scalar factors as one vector (1 for ``None``), in ``like``'s dtype and device."""
    if all(f is None for f in factors):
        return torch.ones(len(factors), dtype=like.dtype, device=like.device)
    one = torch.ones((), dtype=like.dtype, device=like.device)
    return torch.stack([one if f is None else f.to(like.dtype) for f in factors])


@functools.lru_cache(maxsize=64)
def _numels(numels: tuple[int, ...], device: torch.device) -> torch.Tensor:
    return torch.tensor(numels, dtype=torch.long, device=device)


def _scalar_products(vs: list[torch.Tensor], scalars: list[torch.Tensor], divide: bool = False) -> list[torch.Tensor]:
    """``[v_i * s_i]`` (or ``v_i / s_i``) for 0-d ``s_i`` with a fixed number of kernels: concatenate,
    multiply by the factors repeated to each tensor's size, split. ``foreach`` has no fused kernel for
    per-tensor scalar *tensors* (it would launch one per tensor, or need the values on the host)."""
    numels = tuple(v.numel() for v in vs)
    flat = torch.cat([v.reshape(-1) for v in vs])
    f = torch.stack(list(scalars)).to(flat.dtype)
    f = torch.repeat_interleave(f, _numels(numels, flat.device), output_size=flat.numel())
    out = flat.div_(f) if divide else flat.mul_(f)
    return [t.view_as(v) for t, v in zip(out.split(numels), vs)]


def _flat_path(vs: Sequence[torch.Tensor], fs: Sequence[torch.Tensor]) -> bool:
    """Use :func:`_scalar_products`: per-tensor 0-d factors, many tensors of one dtype on an accelerator
    (on the CPU per-tensor kernels are as cheap and the concatenation would only add memory traffic)."""
    return (len(vs) > 1 and vs[0].device.type != "cpu" and all(f.dim() == 0 for f in fs)
            and all(v.dtype == vs[0].dtype and v.device == vs[0].device for v in vs))


def _mul(vs: Tensors, factors: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """``T v`` (one ``foreach`` call over the tensors that have a factor; identity for ``None``)."""
    idx = [i for i, f in enumerate(factors) if f is not None]
    if not idx:
        return list(vs)
    out = list(vs)
    fs = [factors[i] for i in idx]
    sub = [vs[i] for i in idx]
    if not all(torch.is_tensor(f) for f in fs):
        prods = [v * f for v, f in zip(sub, fs)]
    elif _flat_path(sub, fs):  # type: ignore[arg-type]
        prods = _scalar_products(sub, fs)  # type: ignore[arg-type]
    else:
        prods = torch._foreach_mul(sub, fs)  # type: ignore[arg-type]
    for i, t in zip(idx, prods):
        out[i] = t
    return out


def _inv(vs: Tensors, factors: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
    """``T^{-1} v`` (``T`` floored at a tiny value: a zero factor maps zero to zero; one ``foreach``
    division over the tensors that have a factor)."""
    idx = [i for i, f in enumerate(factors) if f is not None]
    out = list(vs)
    if not idx:
        return out
    fs = [factors[i] for i in idx]
    sub = [vs[i] for i in idx]
    if all(torch.is_tensor(f) for f in fs) and _flat_path(sub, fs):  # type: ignore[arg-type]
        quotients = _scalar_products(sub, torch._foreach_clamp_min(fs, _TINY), divide=True)  # type: ignore
    elif all(torch.is_tensor(f) for f in fs):
        quotients = torch._foreach_div(sub, torch._foreach_clamp_min(fs, _TINY))  # type: ignore
    else:
        quotients = [vs[i] / (f.clamp_min(_TINY) if torch.is_tensor(f) else f) for i, f in zip(idx, fs)]
    for i, t in zip(idx, quotients):
        out[i] = t
    return out


def _total_norm(vs: Tensors, p: float) -> torch.Tensor:
    """``||concat(vs)||_p`` as a 0-d tensor, at least float32 (per-tensor norms by ``torch._foreach_norm``)."""
    per = _acc(torch.stack(torch._foreach_norm(list(vs), p)))
    return torch.linalg.vector_norm(per, p)


def _foreach_scale(vs: list[torch.Tensor], factor: float | torch.Tensor) -> list[torch.Tensor]:
    """``[v * factor]`` with one fused kernel; ``factor`` a Python number or a 0-d tensor."""
    if torch.is_tensor(factor):
        factor = factor.to(vs[0].device)
        if any(v.dtype != vs[0].dtype for v in vs):
            return [v * factor.to(v.dtype) for v in vs]
        return list(torch._foreach_mul(vs, factor.to(vs[0].dtype)))
    return list(torch._foreach_mul(vs, factor))


__all__ = ["DISTRIBUTIONS", "EXCLUDE", "Geometry", "NORMALIZATIONS", "Region", "Scaling"]
