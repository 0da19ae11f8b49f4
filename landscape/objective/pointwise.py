"""Point-by-point evaluation in the module itself: the fast path of
:meth:`~landscape.objective.Objective.evaluate_many` for one point per forward.

* :class:`Written` writes each point's weights into the model's own parameter tensors (``torch.no_grad``,
  in place) and calls the module directly, skipping ``functional_call``'s per-call name swap and tied-weight
  bookkeeping; tied parameters are one tensor, so both uses see the point. On exit the parameters are
  restored bit-exactly; buffers are never written.
* :class:`FirstLayers`: when the points lie on a plane ``w(c) = w0 + sum_j c_j d_j`` (a surface), a plain
  ``nn.Linear``/``nn.Conv{1,2,3}d`` applied to the raw input (a view of a batch tensor, unmodified) is linear
  in its weights:

      f(x; W0 + sum_j c_j D_j) + b(c) = [f(x; W0) + b0] + sum_j c_j [f(x; D_j) + db_j],

  so its ``k + 1`` bracketed products are computed once per micro-batch and every point costs one ``(k+1)``-term
  combination instead of the layer. Whether the structure holds is checked on every call (the module's type,
  no hooks, its input aliasing a kept batch tensor of unchanged version); anything else runs the real layer
  with the written weights, which is always exact.
"""
from __future__ import annotations

import contextlib
from contextvars import ContextVar
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.objective.batches import num_rows, take_rows, tensors
from landscape.objective.products import exact_attention
from landscape.objective.loss import LossValue, check_value, naming_batch
from landscape.objective.sources import TensorSource

LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
CPU_BATCH_BYTES = 4 << 20
"""On a CPU, in-memory micro-batches are merged while one merged batch's activations stay below this (a cache's
scale): fewer, larger calls per point. Measured at 1 thread, 11x11 surfaces: 1.2-1.5x faster on the small
workloads of ``benchmarks/workloads.py``; a CNN with 4 MB per micro-batch was 4% slower merged, so it stays."""


_POINT_HOOK: ContextVar[Callable[..., None] | None] = ContextVar("landscape_point_hook", default=None)


@contextlib.contextmanager
def reporting_points(hook: Callable[[Any, int, Callable[[], torch.Tensor]], None]) -> Iterator[None]:
    """Within: :func:`evaluate_points` on in-memory data calls ``hook(obj, n, sums)`` after each finished point,
    ``n`` the points of the call finished so far and ``sums()`` their ``(n, 4)`` sums (as the call would return
    them), so a caller can keep finished points of a call that is interrupted or long."""
    token = _POINT_HOOK.set(hook)
    try:
        yield
    finally:
        _POINT_HOOK.reset(token)


def supported(obj: Any) -> bool:
    """Whether ``obj``'s points can be written into its model: every parameter and floating buffer already
    on the objective's device in its dtype (``functional_call`` would cast them), selected tensors distinct."""
    model = obj.model
    for t in (*model.parameters(), *model.buffers()):
        if t.device != obj.device or (t.is_floating_point() and t.dtype != obj.dtype):
            return False
    named = dict(model.named_parameters())
    return len({named[n].data_ptr() for n in obj.names}) == len(obj.names)


class Written:
    """Context manager: ``write(w)`` puts flat vector ``w`` into the selected parameters in place; the
    original values come back bit-exactly on exit, and so do the module's buffers (a forward that updates one
    in place). Written through ``.data``, so the autograd version counters do not move (a graph the caller built
    before still backpropagates, through the same values)."""

    def __init__(self, obj: Any) -> None:
        named = dict(obj.model.named_parameters())
        self.params = [named[n].data for n in obj.names]
        self.buffers = [b.data for b in obj.model.buffers()]
        self.obj = obj

    def __enter__(self) -> "Written":
        self.saved = [t.clone() for t in self.params + self.buffers]
        self.attention = exact_attention()
        self.attention.__enter__()
        return self

    def write(self, w: torch.Tensor) -> None:
        torch._foreach_copy_(self.params, [t.view_as(p) for t, p in zip(w.split(self.obj.sizes), self.params)])

    def __exit__(self, *exc: Any) -> None:
        torch._foreach_copy_(self.params + self.buffers, self.saved)
        self.attention.__exit__(*exc)
        self.obj.restore_attributes()


def _bias_free(m: nn.Module, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    return F.linear(x, weight) if isinstance(m, nn.Linear) else m._conv_forward(x, weight, None)


class FirstLayers:
    """Serves the layers applied to raw inputs from per-batch products (module docstring).

    ``directions``: ``(k, P)`` (float64), ``base``: the float64 ``w0`` the points are formed around. Use as a
    context manager around the evaluation; per batch set :attr:`batch` (its tensors), per point :attr:`coef`
    (``[1, c_1, ..., c_k]``).
    Products are kept (across calls, keyed by the batch tensors) while they fit ``budget`` bytes."""

    def __init__(self, obj: Any, directions: torch.Tensor, base: torch.Tensor, budget: int) -> None:
        self.obj, self.budget, self.bytes = obj, budget, 0
        self.directions, self.base = directions, base
        offsets = dict(zip(obj.names, np.cumsum([0, *obj.sizes[:-1]]).tolist()))
        by_tensor = {id(p): n for n, p in obj.model.named_parameters()}
        self.layers: list[tuple[nn.Module, slice, slice | None]] = []
        hooked = nn.modules.module._global_forward_hooks or nn.modules.module._global_forward_pre_hooks
        for m in obj.model.modules():
            w = m._parameters.get("weight") if type(m) in LAYERS else None
            if w is None or hooked or m._forward_hooks or m._forward_pre_hooks or "forward" in m.__dict__:
                continue
            name = by_tensor.get(id(w))
            if name not in offsets:
                continue  # a fixed weight: nothing to save per point beyond the layer itself
            ws = slice(offsets[name], offsets[name] + w.numel())
            b = m._parameters.get("bias")
            bname = by_tensor.get(id(b)) if b is not None else None
            bs = slice(offsets[bname], offsets[bname] + b.numel()) if bname in offsets else None
            self.layers.append((m, ws, bs))
        self.products: dict[tuple, tuple[torch.Tensor, int, torch.Tensor]] = {}
        self.batch: list[torch.Tensor] = []
        self.coef: torch.Tensor | None = None
        self.served = 0

    def __bool__(self) -> bool:
        return bool(self.layers)

    @contextlib.contextmanager
    def serving(self) -> Iterator["FirstLayers"]:
        try:
            for m, ws, bs in self.layers:
                m.forward = self._forward(m, ws, bs)
            yield self
        finally:
            for m, _, _ in self.layers:
                m.__dict__.pop("forward", None)

    def check(self, w: torch.Tensor, coords: np.ndarray) -> None:
        """A ValueError unless ``w``'s served slices are exactly ``base + sum_j coords_j d_j`` as
        :func:`~landscape.landscapes.surface.grid_points` forms them."""
        for _, ws, bs in self.layers:
            for s in (ws, bs):
                if s is None:
                    continue
                formed = self.base[s].clone()
                for c, d in zip(coords, self.directions):
                    formed.add_(d[s].to(formed), alpha=float(c))
                if not torch.allclose(formed.to(w.dtype).to(w.device), w[s], rtol=0, atol=0, equal_nan=True):
                    raise ValueError("the points are not base + coords @ directions (plane= of evaluate_many)")

    def prune(self) -> None:
        """Stop serving the layers that got no products (their input is not raw data)."""
        used = {key[0] for key, got in self.products.items() if got[1] is not None}
        for m, _, _ in self.layers:
            if id(m) not in used:
                m.__dict__.pop("forward", None)
        self.layers = [layer for layer in self.layers if id(layer[0]) in used]

    def _forward(self, m: nn.Module, ws: slice, bs: slice | None) -> Any:
        real = type(m).forward.__get__(m)

        def forward(*args: Any, **kwargs: Any) -> Any:  # called as the layer is: positionally or input=x
            x = args[0] if args else kwargs.get("input")
            if self.coef is None or len(args) + len(kwargs) != 1 or type(x) is not torch.Tensor:
                return real(*args, **kwargs)
            # a kept entry's input lies in a live batch tensor's memory, so the same address is a view of it
            got = self.products.get((id(m), x.data_ptr(), x.shape, x.stride(), x.dtype))
            if got is None:
                got = self._products(m, ws, bs, x)
            version, Y, shape = got
            if Y is None or x._version != version:  # no products, or the input was written into since
                return real(x)
            self.served += 1
            return (self.coef @ Y).view(shape)
        return forward

    def _products(self, m: nn.Module, ws: slice, bs: slice | None, x: torch.Tensor) -> tuple:
        """``(version, Y, shape)``: ``Y`` the products ``[f(x; W0) + b0, f(x; D_1) + db_1, ...]`` flattened to
        rows, kept for ``x`` when it is a view of a batch tensor and they fit the budget; else ``Y`` is None."""
        ptr = x.untyped_storage().data_ptr()
        key = (id(m), x.data_ptr(), x.shape, x.stride(), x.dtype)
        if not any(t.untyped_storage().data_ptr() == ptr for t in self.batch):
            return (x._version, None, None)  # not raw data (and not kept: its address may be reused)
        dtype, device = self.obj.dtype, self.obj.device
        shape = m.weight.shape
        W = torch.stack([self.base[ws], *(d[ws] for d in self.directions)]).to(device, dtype)
        b = m.bias.detach() if bs is None and m.bias is not None else None
        B = torch.stack([self.base[bs], *(d[bs] for d in self.directions)]).to(device, dtype) if bs else None
        Y = torch.stack([_bias_free(m, x, Wj.view(shape)) for Wj in W])
        # where the output channels sit: last for a Linear, after the batch dimension (if any) for a conv
        at = Y.dim() - 1 if isinstance(m, nn.Linear) else 1 + (x.dim() == m.weight.dim())
        per_channel = [-1] + [1] * (Y.dim() - 1 - at)
        if B is not None:
            Y += B.view(len(B), *[1] * (at - 1), *per_channel)
        elif b is not None:
            Y[0] += b.view(*per_channel)
        size = Y.numel() * Y.element_size()
        fits = self.bytes + size <= self.budget
        self.bytes += size if fits else 0
        got = (x._version, Y.flatten(1) if fits else None, Y.shape[1:])
        self.products[key] = got
        return got


def _value(obj: Any, batch: Any, index: int) -> LossValue:
    """The loss protocol's value of ``batch`` through the module itself (as ``Objective.value``)."""
    with naming_batch(index, obj.loss_spec, obj._validated):
        v = obj.loss_spec.value(obj.model, batch)
    if not obj._validated and obj._check_loss:
        check_value(v, index, obj.loss_spec)
    return v


def _merged(obj: Any, budget: int) -> list[tuple[int, Any]]:
    """The micro-batches to evaluate a point on: in-memory tensors in merged batches of whole micro-batches
    whose activations (measured once per objective) fit :data:`CPU_BATCH_BYTES` on a CPU or ``budget``
    elsewhere, where the loss is additive over rows; a stream's batches as they are."""
    source = obj.source
    if not isinstance(source, TensorSource) or not source.rows:
        return list(source.batches())
    rows = getattr(obj, "_point_batch", None)
    if rows is None:
        first = source.first()
        per_row = obj._activation_bytes(first) / max(1, num_rows(first))
        limit = CPU_BATCH_BYTES if obj.device.type == "cpu" else budget
        rows = obj._point_batch = source.batch_size * max(1, int(limit // max(per_row * source.batch_size, 1.0)))
    if rows <= source.batch_size or not obj.loss_spec.additive:  # a per-batch mean of anything but rows: as defined
        return list(source.batches())
    return list(enumerate(take_rows(source.data, slice(i, i + rows), source.rows) for i in range(0, source.rows, rows)))


def _sums(obj: Any, values: list[LossValue], n: int) -> torch.Tensor:
    """``(n, 4)`` float64 sums ``[total, count, correct, predictions]`` of ``n`` points' batch values (each
    point's consecutive in ``values``)."""
    out = []
    for name in ("total", "count", "correct", "predictions"):
        xs = [getattr(v, name) for v in values]
        if all(isinstance(x, torch.Tensor) for x in xs):
            col = torch.stack([x.detach().reshape(()) for x in xs]).to(obj._stat_dtype)
        elif any(isinstance(x, torch.Tensor) for x in xs):
            col = torch.stack([obj._scalar(x) for x in xs])
        else:
            col = torch.tensor([0.0 if x is None else float(x) for x in xs], dtype=obj._stat_dtype)
        out.append(col.to(obj.device).view(n, -1).sum(1))
    return torch.stack(out, 1)


def evaluate_points(obj: Any, W: torch.Tensor, row: Any, plane: tuple | None = None,
                    budget: int = 1 << 28) -> tuple[torch.Tensor, int]:
    """``(sums, rows)``: ``(n, 4)`` sums ``[total, count, correct, predictions]`` over this rank's data at each
    row of ``W`` (every point written into the module, :class:`Written`) and the rows read per point.
    In-memory data runs point after point (one write per point); a stream runs batch after batch (a write per
    batch and point). ``plane=(base, directions, coords)`` (``W[r] = base + coords[r] @ directions``): first
    layers are served from products (:class:`FirstLayers`, in-memory data only). ``row(value)``: a batch's
    ``LossValue`` as a 4-row. Call under ``torch.no_grad`` with the model in eval mode."""
    sums = torch.zeros(len(W), 4, dtype=obj._stat_dtype, device=obj.device)
    source = obj.source
    in_memory = not source.streaming or source.cached
    first = None
    if in_memory and plane is not None:
        base, directions, coords = plane
        cache = getattr(obj, "_first_layers", None)
        if cache is None or cache.directions is not directions or not torch.equal(cache.base, base):
            cache = FirstLayers(obj, directions, base, budget)
        obj._first_layers = first = cache if cache else None
    rows = 0
    with Written(obj) as written, (first.serving() if first else contextlib.nullcontext()):
        if in_memory:
            batches = _merged(obj, budget)
            rows = sum(num_rows(b) for _, b in batches)
            raws = [tensors(b) for _, b in batches]
            if first:
                first.check(W[0], coords[0])
                first.check(W[-1], coords[-1])
                coefs = torch.tensor(np.concatenate([np.ones((len(W), 1)), coords], 1), dtype=obj.dtype,
                                     device=obj.device)
            values: list[LossValue] = []
            hook = _POINT_HOOK.get()
            for r, w in enumerate(W):
                written.write(w)
                if first:
                    first.coef = coefs[r]
                for (i, batch), raw in zip(batches, raws):
                    if first:
                        first.batch = raw
                    values.append(_value(obj, batch, i))
                if first and r == 0:
                    first.prune()
                if hook is not None:
                    hook(obj, r + 1, lambda n=r + 1: _sums(obj, values[:n * len(batches)], n))
            sums = _sums(obj, values, len(W))
        else:
            for i, batch in source.batches():
                rows += num_rows(batch)
                for r, w in enumerate(W):
                    written.write(w)
                    sums[r] += row(_value(obj, batch, i))
    if first:
        first.batch, first.coef = [], None
    return sums, rows


__all__ = ["FirstLayers", "LAYERS", "Written", "evaluate_points", "reporting_points", "supported"]
