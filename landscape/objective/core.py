"""The objective: model + loss + data as one function of a flat parameter vector.

:class:`Objective` fixes a model, a loss protocol (:mod:`landscape.objective.loss`) and one data source
(:mod:`landscape.objective.sources`) and exposes the full-data average loss

    L(w) = sum_b total_b(w) / sum_b count_b

(``total_b`` the sum of micro-batch ``b``'s losses over its ``count_b`` targets, so batch sizes and masks
never bias it) as a function of a flat vector ``w`` of the selected parameters, together with its gradient
and Hessian-, Gauss-Newton- and empirical-Fisher-vector products (:mod:`landscape.objective.products`).

Policy, shared by every measure built on it:

* the model runs in **eval mode** (dropout off, BatchNorm uses its running statistics) through
  :func:`torch.func.functional_call`; the module's own parameters, buffers and ``training`` flags are never
  modified (only :meth:`Objective.at` writes into the module, and it restores bit-exactly);
* computations run in ``dtype`` (default: the model's) on ``device``; floating data is cast to it;
* parameters outside the selection (and all buffers) are held fixed;
* nothing here draws random numbers from the caller's generators: a streamed source is read under a fixed
  seed, measures take explicit seeds;
* under ``torch.distributed`` every rank reads its shard of the data and every sum is all-reduced, so all
  ranks hold identical results.

Vectors are flat tensors of length :attr:`Objective.num_params` (the order of ``named_parameters()``); a block
of ``k`` vectors is a ``(k, P)`` tensor (rows).
"""
from __future__ import annotations

import contextlib
import copy
import sys
import time
import warnings
from collections import Counter
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call, grad as func_grad, vmap
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from landscape.curvature.operators import CurvatureOperator
from landscape.distributed import all_reduce_sum, free_memory, rank, world_size
from landscape.objective import pointwise, products
from landscape.objective.batches import group_rows, num_rows, row_dims, take_rows
from landscape.objective.double_backward import reroutes, rerouted
from landscape.objective.loss import (Loss, LossError, LossValue, TaskLoss, as_loss, check_value, default_split,
                                      naming_batch)
from landscape.objective.parameters import ParamSpec, eval_mode, select_parameters
from landscape.objective.sources import DataError, StreamSource, TensorSource, is_in_memory, subset_indices

KINDS = ("hessian", "ggn", "fisher")
BATCHED_MAX_ELEMENTS_PER_NODE = 4096
"""Kept graphs whose nodes save at most this many elements each, on average, get vmap-ed block products (see
``Objective._second_backward``)."""
GRAPH_GROUP_BYTES = 64 << 20
"""On a CPU, kept gradient graphs merge micro-batches while a merged graph stays below this
(``Objective._prepare_graphs``)."""


class _Bound(nn.Module):
    """``forward(fn, *args) = fn(model, *args)``: runs any loss protocol under ``functional_call``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, fn: Callable[..., Any], *args: Any) -> Any:
        return fn(self.model, *args)


class _OutputBytes(TorchDispatchMode):
    """Sums the bytes of the new storages the dispatched operators create. An output aliasing an input, or at
    the address of a storage already counted (a view), adds nothing. Counted storages are held until the mode
    exits, so no address is freed and reused within it: the total does not depend on the allocator (it did, by
    up to 20%, and flipped the merged batches of point evaluations between runs, and their last bits)."""

    def __init__(self) -> None:
        super().__init__()
        self.total, self._seen, self._held = 0, set(), []

    def __exit__(self, *exc: Any) -> Any:
        self._held.clear()
        return super().__exit__(*exc)

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage().data_ptr() for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and (ptr := t.untyped_storage().data_ptr()) not in inputs \
                    and ptr not in self._seen:
                self._seen.add(ptr)
                self._held.append(t.untyped_storage())
                self.total += t.untyped_storage().nbytes()
        return out


class Objective:
    """Full-data loss of ``model`` on ``data`` as a function of a flat parameter vector.

    ``data``: in-memory tensors (``Objective(model, x, y)``, a tuple or dict of tensors with one row count)
    or any re-iterable of batches (a ``DataLoader``, also over an ``IterableDataset``; a list of batches),
    streamed one micro-batch at a time (:class:`~landscape.objective.sources.StreamSource`).
    ``loss``: a task name (``classification``, ``regression``, ``language_model``; default ``task``), a
    mean-reduced ``criterion(output, target)``, or ``loss_fn(model, batch) -> (sum, count[, correct])``
    (:func:`~landscape.objective.loss.as_loss`).

    ``batch_size``: micro-batch size of in-memory data (memory only; results do not depend on it beyond float
    rounding); a stream's batches are the loader's. ``max_block``: most vectors pushed through one data pass
    by a block product. ``hvp_mode``: ``"reverse"`` (double backward), ``"forward"`` (``torch.func.jvp`` of
    ``torch.func.grad``) or ``"auto"`` (reverse: no timing trial, so repeated runs give the same bits; it
    was the faster for one vector on every workload of ``benchmarks/workloads.py``, 1.1-2.6x, and within
    noise for blocks). ``cache_graph``: Hessian products at the base point ``w0`` keep micro-batches'
    gradient graphs alive and only run their second backward (as PyHessian's single-batch mode does), about
    twice as fast; ``"auto"`` keeps them if the first micro-batch's measured graph times the number of
    micro-batches fits ``graph_memory`` bytes (default: a quarter of the free device memory / available RAM)
    and otherwise keeps none (a stream of unknown length: graphs are kept while their total fits). In-memory
    data whose graphs fit twice over keeps graphs of merged micro-batches, up to ``GRAPH_GROUP_BYTES`` a graph on
    a CPU (a faster product; :meth:`_prepare_graphs`).
    ``cache_memory``: a stream that fits this many bytes (default: an eighth of the free memory) is kept
    after its first pass. ``memory``: ``"low"`` keeps no gradient graph and no stream (one micro-batch's
    graph alive at a time, as PyHessian) and asks measures for compact workspaces (:attr:`low_memory`);
    ``"auto"`` becomes low where the graphs do not fit ``graph_memory``. ``seed``: the seed every pass over a
    stream runs under.
    ``max_rows``: read only the first rows of a stream (in-memory data: use a subset of the tensors).
    """

    def __init__(
        self,
        model: nn.Module,
        data: Any = None,
        target: torch.Tensor | None = None,
        *,
        loss: Any = None,
        task: str | None = None,
        label_smoothing: float = 0.0,
        batch_size: int = 512,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        params: ParamSpec = None,
        hvp_mode: str = "auto",
        max_block: int = 16,
        cache_graph: bool | str = "auto",
        graph_memory: int | None = None,
        cache_memory: int | None = None,
        memory: str = "auto",
        shard: bool = True,
        seed: int = 0,
        max_rows: int | None = None,
    ) -> None:
        if batch_size < 1 or max_block < 1:
            raise ValueError("batch_size and max_block must be >= 1")
        if hvp_mode not in ("auto", "reverse", "forward"):
            raise ValueError(f"hvp_mode must be auto, reverse or forward, got {hvp_mode!r}")
        if cache_graph not in (True, False, "auto"):
            raise ValueError(f"cache_graph must be True, False or 'auto', got {cache_graph!r}")
        if memory not in ("auto", "low"):
            raise ValueError(f"memory must be 'auto' or 'low', got {memory!r}")
        if memory == "low":
            cache_graph, cache_memory = False, 0
        if _is_compiled(model):  # compiled graphs have no double backward: the original module
            model = model._orig_mod
        first = next(iter(model.parameters()), None)
        if first is None:
            raise ValueError("the model has no parameters")
        self.model = model
        self.loss_spec: Loss = as_loss(loss, task=task, label_smoothing=label_smoothing)
        self.task = self.loss_spec.task if isinstance(self.loss_spec, TaskLoss) else None
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype if dtype is not None else first.dtype
        self.batch_size, self.max_block = int(batch_size), int(max_block)
        self.hvp_mode = hvp_mode
        self._mode_chosen: dict[bool | str, str] = {}  # HVP mode per block kind; "cached": loop or batched
        self.cache_graph, self.graph_memory, self.memory = cache_graph, graph_memory, memory
        self._graphs: dict[int, tuple[torch.Tensor, torch.Tensor, Any]] = {}
        self._graph_bytes = 0
        self._group_rows: int | None = None  # rows per kept graph of merged micro-batches (:meth:`_prepare_graphs`)

        self.names = select_parameters(model, params)
        named = dict(model.named_parameters())
        self.shapes = [tuple(named[n].shape) for n in self.names]
        self.sizes = [named[n].numel() for n in self.names]
        self.num_params = sum(self.sizes)
        self.w0 = self.flatten([named[n] for n in self.names])
        chosen = set(self.names)
        self._fixed = {n: self._cast(p) for n, p in named.items() if n not in chosen}
        # copies: a forward that updates a buffer in place must not reach the model's own
        self._fixed.update({n: _own(self._cast(b), b) for n, b in model.named_buffers()})
        self._bound = _Bound(model)
        # plain tensor attributes (old-style weight_norm / spectral_norm keep the computed weight as one): a call
        # at another point, or a vmap-ed one, leaves its own tensor there; each call puts the original back
        self._attributes = [(m, k, v) for m in model.modules() for k, v in vars(m).items()
                            if isinstance(v, torch.Tensor)]
        self._reroutes = reroutes(model)  # operations whose double backward PyTorch gets wasteful or wrong
        self._stat_dtype = torch.float32 if self.device.type == "mps" else torch.float64

        self._shard = shard
        self.source = self._make_source(data, target, shard=shard, seed=seed, cache_memory=cache_memory,
                                        max_rows=max_rows)
        self._stats: tuple[int, float] | None = None
        if isinstance(self.source, TensorSource) and isinstance(self.loss_spec, TaskLoss):
            self._stats = self._tensor_stats()
        elif self.sharded:  # every rank must hold a batch, or the collective calls of a pass would not pair up
            empty = torch.tensor([float(not self.source.has_batch())], dtype=self._stat_dtype, device=self.device)
            if self.reduce_sum(empty)[0] > 0:
                raise DataError(f"{int(empty[0])} of {world_size()} processes get no batch of the stream; give it "
                                "at least as many batches as processes")
        # the first pass checks every batch's value from a user's loss: a non-finite one is the loss function's
        # fault where the weights are finite (a built-in loss is NaN only through the model: a diverged run)
        self._validated = False
        self._check_loss = not isinstance(self.loss_spec, TaskLoss) and all(
            bool(torch.isfinite(t).all()) for t in (self.w0, *self._fixed.values()) if t.is_floating_point())
        self._vmap_points = True
        self._auto_chunk: int | None = None
        self._chunk_cap: int | None = None  # set when a chunk ran out of memory
        self.counts: Counter[str] = Counter()
        """Work done so far: ``hessian``/``ggn``/``fisher`` (matrix-vector products against the
        full data, a block of k counts k), ``grad``, ``loss``, and ``passes`` (data passes)."""

    def _make_source(self, data: Any, target: torch.Tensor | None, *, shard: bool, seed: int,
                     cache_memory: int | None, max_rows: int | None) -> TensorSource | StreamSource:
        if isinstance(data, (TensorSource, StreamSource)):
            return data
        if target is not None:
            if len(data) != len(target):
                raise ValueError(f"{len(data)} inputs but {len(target)} targets")
            data = (data, target)
        if data is None:
            raise ValueError("an objective needs data: tensors (x, y), a dict of tensors or a DataLoader")
        if is_in_memory(data):
            if max_rows is not None:
                raise ValueError("max_rows reads the head of a stream; take a subset of in-memory tensors instead")
            return TensorSource(data, self.batch_size, self.device, self.dtype, shard=shard)
        if not isinstance(data, Iterable):
            raise DataError(f"data must be tensors or an iterable of batches, got {type(data).__name__}")
        if cache_memory is None:
            cache_memory = _free_memory(self.device) // 8
        return StreamSource(data, self.device, self.dtype, seed=seed, shard=shard, cache_memory=cache_memory,
                            max_rows=max_rows)

    def _tensor_stats(self) -> tuple[int, float]:
        """Rows and targets of in-memory data under a task loss, without running the model."""
        from landscape.losses import target_count

        loss = self.loss_spec
        assert isinstance(loss, TaskLoss)
        count = float(sum(float(target_count(loss.task, default_split(b, loss.task)[1]))
                          for _, b in self.source.batches()))
        return self._reduce_stats(self.source.rows, count)

    def _reduce_stats(self, rows: int, count: float) -> tuple[int, float]:
        t = torch.tensor([float(rows), float(count), float(rows == 0)], dtype=self._stat_dtype, device=self.device)
        self.reduce_sum(t)
        if t[2] > 0:
            raise ValueError(f"{int(t[2])} of {world_size()} processes hold no data rows; use more data")
        return int(t[0]), float(t[1])

    @classmethod
    def from_bundle(cls, model: nn.Module, data: Any, split: str = "train", *, subset: int | None = None,
                    seed: int = 0, **kwargs: Any) -> "Objective":
        """Objective on one split of a :class:`~landscape.data.DataBundle` (``subset``: a fixed seeded subset
        of its rows) or of a :class:`~landscape.data.StreamData` (``subset``: the first rows of the stream).
        ``loss`` defaults to the bundle's task."""
        part = data.split(split)
        kwargs.setdefault("loss", None)
        if kwargs["loss"] is None:
            kwargs["loss"] = getattr(data, "task", None)
        if getattr(data, "streaming", False):
            return cls(model, part, seed=seed, max_rows=subset, **kwargs)
        x, y = part
        idx = subset_indices(len(x), subset, seed)
        if len(idx) < len(x):
            x, y = x[idx], y[idx]
        return cls(model, x, y, seed=seed, **kwargs)

    # ----------------------------------------------------------------- vectors
    def _cast(self, t: torch.Tensor) -> torch.Tensor:
        t = t.detach()
        return t.to(self.device, self.dtype) if t.is_floating_point() else t.to(self.device)

    def flatten(self, tensors: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> torch.Tensor:
        """One flat vector (this objective's dtype and device) from per-parameter tensors."""
        if isinstance(tensors, Mapping):
            tensors = [tensors[n] for n in self.names]
        return torch.cat([self._cast(t).reshape(-1) for t in tensors])

    def unflatten(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{name: view}`` of a flat vector (no copy)."""
        return {n: t.view(s) for n, t, s in zip(self.names, w.split(self.sizes), self.shapes)}

    def params(self) -> torch.Tensor:
        """A copy of the base point ``w0`` (the model's selected parameters)."""
        return self.w0.clone()

    def _point(self, w: torch.Tensor | None) -> torch.Tensor:
        if w is None:
            return self.w0
        if w.shape != (self.num_params,):
            raise ValueError(f"parameter vector must have shape ({self.num_params},), got {tuple(w.shape)}")
        return w.detach().to(self.device, self.dtype)

    def _block(self, v: torch.Tensor) -> torch.Tensor:
        V = v.reshape(1, -1) if v.dim() == 1 else v
        if V.dim() != 2 or V.shape[1] != self.num_params:
            raise ValueError(f"vectors must have shape ({self.num_params},) or (k, {self.num_params}), "
                             f"got {tuple(v.shape)}")
        return V.detach().to(self.device, self.dtype)

    @contextlib.contextmanager
    def at(self, w: torch.Tensor) -> Iterator[nn.Module]:
        """Write ``w`` into the model's parameters for the block; restore them (and the buffers) bit-exactly
        after."""
        with pointwise.Written(self) as written:
            written.write(self._point(w))
            yield self.model

    # ------------------------------------------------------------ functionals
    def state(self, w: torch.Tensor | None = None,
              buffers: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The full ``functional_call`` state at ``w``: fixed parameters, buffers (``buffers`` replace
        the model's), the selected parameters as views of ``w``. Tensors passed in are used as they are
        (a train-mode BatchNorm updates the given buffers in place)."""
        return self._state(self._point(w), buffers)

    def _state(self, w: torch.Tensor, buffers: Mapping[str, torch.Tensor] | None) -> dict[str, torch.Tensor]:
        return {**self._fixed, **(buffers or {}), **self.unflatten(w)}

    def call(self, fn: Callable[..., Any], w: torch.Tensor, *args: Any,
             buffers: Mapping[str, torch.Tensor] | None = None, state: Mapping[str, torch.Tensor] | None = None) -> Any:
        """``fn(model, *args)`` with the model's parameters at ``w`` (a functional call: the module is not
        touched; differentiable in ``w``); ``state`` replaces the whole state."""
        if state is None:
            state = self._state(w, buffers)  # w as given: a leaf with requires_grad stays one
        try:
            # attention without its fast path; embeddings rerouted (in-place renorms, sparse gradients)
            with products.exact_attention(), rerouted(self._reroutes & {"embeddings"}):
                return functional_call(self._bound, {f"model.{k}": v for k, v in state.items()}, (fn, *args))
        finally:
            self.restore_attributes()

    def restore_attributes(self) -> None:
        """Put back the module attributes that are plain tensors, as they were when the objective was made."""
        for m, k, v in self._attributes:
            if m.__dict__.get(k) is not v:
                m.__dict__[k] = v

    def value(self, w: torch.Tensor, batch: Any, index: int = 0,
              buffers: Mapping[str, torch.Tensor] | None = None) -> LossValue:
        """The loss protocol's :class:`~landscape.objective.loss.LossValue` of ``batch`` at ``w``; during the
        first pass every batch's value from a user's loss (criterion, ``loss_fn``) is checked: a one-line error
        naming the batch (not where the model's own weights are not finite)."""
        with naming_batch(index, self.loss_spec, self._validated):
            v = self.call(self.loss_spec.value, w, batch, buffers=buffers)
        if not self._validated and self._check_loss:
            check_value(v, index, self.loss_spec)
        return v

    def run_batches(self, state: Mapping[str, torch.Tensor]) -> None:
        """Run the model (through the loss) on every micro-batch with ``state``, results discarded: what
        re-estimates BatchNorm statistics (the caller sets the modes)."""
        for _, batch in self.source.batches():
            self.call(self.loss_spec.value, self.w0, batch, state=state)

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks that shard this objective's data (in place; identity otherwise)."""
        return all_reduce_sum(t) if self._shard else t

    @property
    def sharded(self) -> bool:
        """Whether this objective holds only its rank's part of the data."""
        return self._shard and world_size() > 1

    def _batches(self, use_graphs: bool = False) -> Iterator[tuple[int, Any]]:
        """``(index, batch)`` of one pass; ``batch`` is None where only a cached graph is needed."""
        if use_graphs and self._group_rows is not None:  # graphs of merged micro-batches
            source, size = self.source, self._group_rows
            for i, start in enumerate(range(0, source.rows, size)):
                yield i, None if i in self._graphs else take_rows(source.data, slice(start, start + size), source.rows)
            return
        if use_graphs and self._graphs and len(self._graphs) == self.source.num_batches:
            yield from ((i, None) for i in sorted(self._graphs))  # every graph cached: no need to read data
            return
        yield from self.source.batches()

    def _pass(self, per_batch: Callable[[int, Any], tuple[torch.Tensor, Any]], weight: str = "count",
              use_graphs: bool = False) -> torch.Tensor:
        """``sum_b r_b / sum_b n_b`` over all ranks' micro-batches (one data pass), where ``per_batch(i,
        batch) -> (r_b, n_b)``: ``n_b`` the loss's count of targets (``weight="count"``), or the batch's rows
        (``"rows"``, the empirical Fisher), which then say nothing of the total count."""
        total: torch.Tensor | None = None
        count, rows = 0.0, 0
        with eval_mode(self.model):
            for i, batch in self._batches(use_graphs):
                r, n = per_batch(i, batch)
                total = r if total is None else total + r
                count = count + n
                rows += 0 if batch is None else num_rows(batch)  # None: a cached graph, no data read
        if total is None:
            raise DataError("the data source gave no batch")
        self.counts["passes"] += 1
        self._validated = True
        if self._stats is None and weight == "count" and rows:
            self._stats = self._reduce_stats(rows, float(count))
        denominator = self._count_total(count)
        total = self.reduce_sum(total.contiguous())
        return total / denominator

    def _count_total(self, count: Any) -> torch.Tensor:
        c = count.detach().to(self.device, self._stat_dtype) if isinstance(count, torch.Tensor) else torch.tensor(
            float(count), dtype=self._stat_dtype, device=self.device)
        return self.reduce_sum(c.reshape(1))[0].to(self.dtype)

    @property
    def num_samples(self) -> int:
        """Rows of the data (all ranks); a stream is read once to count them."""
        return self._statistics()[0]

    @property
    def total_count(self) -> float:
        """Targets the mean loss averages over (all ranks): rows, tokens, unmasked labels."""
        return self._statistics()[1]

    def _statistics(self) -> tuple[int, float]:
        if self._stats is None:
            self.evaluate()
        assert self._stats is not None
        return self._stats

    def evaluate(self, w: torch.Tensor | None = None) -> dict[str, float | None]:
        """Full-data ``{"loss", "acc"}`` at ``w`` (default ``w0``); ``acc`` is None where the loss gives no
        top-1 predictions (regression, most ``loss_fn``)."""
        return {k: float(v[0]) if v is not None else None for k, v in self.evaluate_many(self._point(w)[None]).items()}

    def loss(self, w: torch.Tensor | None = None) -> float:
        """``L(w)``, the full-data average loss."""
        return self.evaluate(w)["loss"]  # type: ignore[return-value]

    def evaluate_many(self, W: torch.Tensor, chunk_size: int | str = 16,
                      buffers: Mapping[str, torch.Tensor] | None = None,
                      plane: tuple[Any, ...] | None = None) -> dict[str, np.ndarray | None]:
        """Loss and accuracy at each row of ``W`` (``(n, P)``) in one data pass, ``chunk_size`` points at a
        time through one ``vmap``-ed forward per micro-batch (``"auto"``: :meth:`auto_chunk_size`; a model
        ``vmap`` cannot batch goes point by point). One point at a time is written into the module itself
        (:mod:`~landscape.objective.pointwise`, restored bit-exactly) where the model is already in this
        objective's dtype and device and ``buffers`` is None. ``buffers`` replace the model's buffers (e.g.
        recomputed BatchNorm statistics). ``plane=(base, directions, coords)``: the rows are ``base + coords @
        directions`` formed as :func:`~landscape.landscapes.surface.grid_points` does; one point at a time,
        a first Linear/Conv layer on the raw input is then evaluated as ``W0 x + sum_j c_j (D_j x)`` from
        products kept per micro-batch. Returns numpy arrays of length ``n``."""
        W = self._block(W)
        if chunk_size == "auto":
            chunk_size = self.auto_chunk_size()
        if not isinstance(chunk_size, int) or isinstance(chunk_size, bool) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or 'auto', got {chunk_size!r}")
        sums = torch.zeros(len(W), 4, dtype=self._stat_dtype, device=self.device)
        rows = 0
        with torch.no_grad(), eval_mode(self.model):
            if min(chunk_size, len(W)) == 1 and buffers is None and pointwise.supported(self):
                sums, rows = pointwise.evaluate_points(self, W, self._row, plane, _free_memory(self.device) // 8)
            else:
                for i, batch in self.source.batches():
                    for chunk, out in zip(W.split(chunk_size), sums.split(chunk_size)):
                        out += self._evaluate_fitting(chunk, batch, i, buffers)
                    rows += num_rows(batch)
        self.counts["passes"] += 1
        self.counts["loss"] += len(W)
        self._validated = True
        if self._stats is None:
            self._stats = self._reduce_stats(rows, float(sums[0, 1]))
        self.reduce_sum(sums)
        acc = None if float(sums[0, 3]) == 0 else (sums[:, 2] / sums[:, 3]).cpu().numpy()
        return {"loss": (sums[:, 0] / sums[:, 1]).cpu().numpy(), "acc": acc}

    def _evaluate_fitting(self, chunk: torch.Tensor, batch: Any, index: int,
                          buffers: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """:meth:`_evaluate_chunk`, halving a chunk that runs out of device memory (down to one point, which
        then raises); the smaller size is kept for the rest of this objective's evaluations."""
        if self._chunk_cap is not None and len(chunk) > self._chunk_cap:
            return torch.cat([self._evaluate_fitting(c, batch, index, buffers) for c in chunk.split(self._chunk_cap)])
        try:
            return self._evaluate_chunk(chunk, batch, index, buffers)
        except torch.OutOfMemoryError:
            if len(chunk) == 1:
                raise
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            self._chunk_cap = (len(chunk) + 1) // 2
            warnings.warn(f"out of memory with {len(chunk)} points per pass: {self._chunk_cap} from now on",
                          stacklevel=4)
            return self._evaluate_fitting(chunk, batch, index, buffers)

    def _evaluate_chunk(self, chunk: torch.Tensor, batch: Any, index: int,
                        buffers: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``(len(chunk), 4)`` rows ``[total, count, correct, predictions]`` of one micro-batch."""
        row = self._row
        if len(chunk) > 1 and self._vmap_points:
            try:
                return vmap(lambda w: row(self.call(self.loss_spec.value, w, batch, buffers=buffers)))(chunk)
            except LossError:
                raise
            except Exception as e:  # noqa: BLE001 - a model vmap cannot batch: point by point from now on
                self._vmap_points = False
                warnings.warn(f"evaluating points one at a time: vmap cannot batch this model ({type(e).__name__})",
                              stacklevel=3)
        return torch.stack([row(self.value(w, batch, index, buffers)) for w in chunk])

    def _row(self, v: LossValue) -> torch.Tensor:
        """``[total, count, correct, predictions]`` of one batch's value."""
        return torch.stack([self._scalar(v.total), self._scalar(v.count), self._scalar(v.correct),
                            self._scalar(v.predictions)])

    def _scalar(self, x: Any) -> torch.Tensor:
        if x is None:
            return torch.zeros((), dtype=self._stat_dtype, device=self.device)
        if isinstance(x, torch.Tensor):
            return x.detach().reshape(()).to(self._stat_dtype)
        return torch.tensor(float(x), dtype=self._stat_dtype, device=self.device)

    def auto_chunk_size(self, max_chunk: int = 256, memory: int | None = None, points: int | None = None) -> int:
        """How many points :meth:`evaluate_many` should push through one ``vmap``-ed forward.

        The cap: the activations of one point on one micro-batch (the storages a forward's operators
        create, :meth:`_activation_bytes`) plus one weight vector, times the chunk, must fit
        ``memory`` bytes (default: a quarter of the free device memory / available RAM). Below it, one point
        at a time (written into the module where that path applies, timed on the whole data) races chunks of
        4, 16, 64, 256 points timed in turn on the first micro-batch (a warm-up, then the best of 2, scaled to
        the whole data): a larger chunk is taken only while it is at least 10% faster per point than the best
        so far, and the race stops at the first that is not. ``points``: the evaluations the choice is for
        (a surface's grid); the race then stops before its time would pass 3% of their estimated time. So a
        model that ``vmap`` batches well (MLPs, small micro-batches, GPUs) climbs to large chunks, while one
        it slows down (a convolution under ``vmap`` becomes a grouped convolution, slower on a CPU) stops
        after 4. Decided once per objective (cached); every rank of a sharded objective gets rank 0's
        choice; 1 for a model ``vmap`` cannot batch.
        """
        if self._auto_chunk is not None:
            return self._auto_chunk
        start = time.perf_counter()
        batch = self.source.first()
        per_point = self.num_params * self.w0.element_size() + self._activation_bytes(batch)
        budget = memory if memory is not None else _free_memory(self.device) // 4
        cap = int(max(1, min(max_chunk, budget // max(1, per_point))))
        share = num_rows(batch) / max(1, self.source.rows or num_rows(batch))  # the first batch's part of the data

        def per_point_time(c: int) -> float:
            """Seconds per point on the whole data (estimated from the first batch for a chunk)."""
            W = self.w0.expand(c, -1)
            whole = c == 1 and pointwise.supported(self)
            best = float("inf")
            for rep in range(3):
                _sync(self.device)
                t0 = time.perf_counter()
                if whole:
                    pointwise.evaluate_points(self, W, self._row)
                else:
                    self._evaluate_chunk(W, batch, 0)
                _sync(self.device)
                seconds = (time.perf_counter() - t0) / (1 if whole else c * share)
                best = min(best, seconds) if rep else best  # the first call is a warm-up
            return best

        with torch.no_grad(), eval_mode(self.model):
            best, fastest = 1, per_point_time(1)
            allowed = float("inf") if points is None else 0.03 * points * fastest  # 3%: a chunk's first call
            # (vmap's warm-up) costs more than the estimate below, and the whole tuning must stay under 5%
            for c in (4, 16, 64, 256):
                if c > cap or not self._vmap_points:
                    break
                if time.perf_counter() - start + 3 * c * fastest * share > allowed:
                    break
                try:
                    t = per_point_time(c)
                except torch.OutOfMemoryError:  # the activations estimate was short: stop at the last that fit
                    if self.device.type == "cuda":
                        torch.cuda.empty_cache()
                    break
                if t > 0.9 * fastest:
                    break
                best, fastest = c, t
        keep = rank() == 0 or not self._shard  # a sharded objective takes rank 0's choice
        choice = torch.tensor([float(best) if keep else 0.0], dtype=self._stat_dtype, device=self.device)
        self._auto_chunk = int(self.reduce_sum(choice).item())
        return self._auto_chunk

    def _activation_bytes(self, batch: Any) -> int:
        """Bytes of the storages the operators create in one eval-mode forward of ``batch``: its activations,
        including intermediates no module returns (attention scores; module outputs alone missed them)."""
        with _OutputBytes() as counter, torch.no_grad(), eval_mode(self.model):
            self.call(self.loss_spec.value, self.w0, batch)
        return counter.total

    def loss_and_grad(self, w: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """``(L(w), grad L(w))`` in one data pass."""
        w = self._point(w)

        def per_batch(i: int, batch: Any) -> tuple[torch.Tensor, Any]:
            leaf = w.detach().requires_grad_(True)
            with torch.enable_grad():
                v = self.value(leaf, batch, i)
                g = products.gradient(v.total, leaf)
            return torch.cat([v.total.detach().reshape(1).to(g.dtype), g]), v.count

        out = self._pass(per_batch)
        self.counts["grad"] += 1
        return float(out[0]), out[1:]

    def grad(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """``grad L(w)`` (flat)."""
        return self.loss_and_grad(w)[1]

    def group_gradients(self, group_size: int, w: torch.Tensor | None = None,
                        max_elements: int = 1 << 26) -> Iterator[torch.Tensor]:
        """Gradients of the mean loss of consecutive groups of ``group_size`` rows of this rank's data.

        Yields ``(c, P)`` blocks (``c`` groups, through one ``vmap`` of ``torch.func.grad``; group by group
        for a model ``vmap`` cannot batch); a trailing group with fewer than ``group_size`` rows is skipped.
        ``group_size=1`` gives per-sample gradients.
        """
        w = self._point(w)
        per_chunk = max(1, min(max_elements // max(1, self.num_params), self.batch_size // group_size or 1))

        def mean_loss(w_: torch.Tensor, group: Any) -> torch.Tensor:
            v = self.call(self.loss_spec.value, w_, group)
            return v.total / v.count

        g = func_grad(mean_loss)
        with eval_mode(self.model):
            for block, k in self.source.blocks(group_size, per_chunk):
                if self._vmap_points:
                    try:
                        grouped = group_rows(block, k, group_size)
                        yield vmap(g, in_dims=(None, row_dims(grouped)))(w, grouped)
                        continue
                    except LossError:
                        raise
                    except Exception:  # noqa: BLE001 - vmap cannot batch this model: group by group
                        self._vmap_points = False
                n = num_rows(block)
                yield torch.stack([g(w, take_rows(block, slice(j * group_size, (j + 1) * group_size), n))
                                   for j in range(k)])
        self.counts["passes"] += 1

    def minibatches(self, size: int, *, limit: int | None = None, seed: int = 0) -> list["Objective"]:
        """This objective on disjoint mini-batches of ``size`` rows of this process's data (m-sharpness).

        In-memory rows are shuffled by ``seed``; a stream's mini-batches are consecutive rows in its (seeded)
        order. A trailing group smaller than ``size`` is dropped; at most ``limit`` batches are returned.
        Each is an independent, unsharded :class:`Objective` (same model, loss, parameters, dtype and
        device; its own ``counts``) over those rows only.
        """
        if size < 1:
            raise ValueError(f"mini-batch size must be >= 1, got {size}")
        src = self.source
        if isinstance(src, TensorSource):
            if size > src.rows:
                raise ValueError(f"mini-batch size {size} exceeds the {src.rows} rows held here")
            perm = torch.randperm(src.rows, generator=torch.Generator().manual_seed(seed))
            groups = src.rows // size if limit is None else min(src.rows // size, int(limit))
            return [self._derived(src.with_rows(perm[i * size:(i + 1) * size])) for i in range(groups)]
        out = [self._derived(TensorSource(rows, self.batch_size, self.device, None, shard=False))
               for rows, _ in src.blocks(size, 1, limit)]
        if not out:
            raise ValueError(f"mini-batch size {size} exceeds the rows held here")
        return out

    def _derived(self, source: TensorSource) -> "Objective":
        sub = copy.copy(self)
        sub.source, sub._shard = source, False
        sub._graphs, sub._graph_bytes, sub._group_rows = {}, 0, None
        sub._mode_chosen = dict(self._mode_chosen)
        sub._stats = sub._tensor_stats() if isinstance(self.loss_spec, TaskLoss) else None
        sub._validated = self._validated
        sub.counts = Counter()
        return sub

    # ------------------------------------------------------- curvature products
    def hvp(self, v: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """Hessian-vector product ``H(w) v`` of the full-data loss; ``v`` is ``(P,)`` or a ``(k, P)`` block."""
        return self.mvp("hessian", v, w)

    def gvp(self, v: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """Generalized Gauss-Newton product ``G v = (1/N) sum_i J_i^T (d^2 l / d out^2) J_i v``."""
        return self.mvp("ggn", v, w)

    def fvp(self, v: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """Empirical-Fisher product ``F v = (1/N) sum_i g_i (g_i . v)`` with ``g_i`` the per-sample
        gradient and ``N`` the number of samples (rows), without forming any ``g_i``."""
        return self.mvp("fisher", v, w)

    def mvp(self, kind: str, v: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
        """``M v`` for ``M`` the ``kind`` (``hessian``, ``ggn``, ``fisher``) at ``w``; ``v``'s shape and
        dtype come back. Blocks larger than ``max_block`` take several data passes."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        w = self._point(w)
        V = self._block(v)
        parts = [self._matvec_pass(kind, w, chunk) for chunk in V.split(self.max_block)]
        out = parts[0] if len(parts) == 1 else torch.cat(parts)
        self.counts[kind] += len(V)
        return out.reshape(v.shape).to(v.device, v.dtype if v.is_floating_point() else self.dtype)

    def _matvec_pass(self, kind: str, w: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        if kind == "fisher":
            return self._pass(lambda i, b: products.fisher(self, w, b, V), weight="rows")
        if kind == "ggn":
            return self._pass(lambda i, b: products.ggn(self, w, b, V))
        cached = w is self.w0 and self.hvp_mode != "forward" and self.cache_graph is not False
        if cached:
            self._prepare_graphs()
        return self._pass(lambda i, b: self._hvp_batch(i, w, b, V), use_graphs=cached)

    def _hvp_batch(self, i: int, w: torch.Tensor, batch: Any, V: torch.Tensor) -> tuple[torch.Tensor, Any]:
        if w is self.w0 and self.hvp_mode != "forward":
            graph = self._gradient_graph(i, batch)
            if graph is not None:
                leaf, g, count = graph
                if not g.requires_grad:
                    return torch.zeros_like(V), count
                return self._second_backward(g, leaf, V), count
        if self.hvp_mode == "forward":
            return products.hvp_forward(self, w, batch, V)
        return products.hvp_reverse(self, w, batch, V, index=i)

    def _second_backward(self, g: torch.Tensor, leaf: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``H V`` from a kept gradient graph: one backward per vector, or one ``vmap``-ed backward for the
        whole block (``is_grads_batched``); both give ``H V`` to rounding. Batched where the graph is made of
        small operations, whose per-call overhead a ``vmap`` shares: at most ``BATCHED_MAX_ELEMENTS_PER_NODE``
        saved elements per node on average (the first kept graph), and where ``max_block`` times that
        graph fits the memory budget of kept graphs (``graph_memory``, default a quarter of the free memory);
        looped otherwise, and wherever ``vmap`` cannot batch the backward. The rule reads the graph, never a
        timing, so the numbers are reproducible where memory is not tight (a timed choice made a resumed study
        differ from an uninterrupted one in the last bits).
        Measured (one thread, CPU time of an 8-vector block, loop / batched, on one graph of all rows of the
        workloads of ``benchmarks/workloads.py``, machine shared; saved elements per node): small LSTM 1.40
        (1.6k), small MLP 1.47 (3.6k); small CNN 0.91 (7.3k), small GPT-2 0.84 (8.9k), small ResNet-BN 0.90 (10k),
        small ViT 0.68 (12k), large LSTM 0.76 (8.8k), large MLP 0.76 (20k), large CNN 0.86 (57k); large ResNet-BN
        1.18 (40k) is the one the rule gets wrong."""
        if len(V) > 1 and self._mode_chosen.get("cached") != "loop":
            if "cached" not in self._mode_chosen:
                nbytes, nodes = products.graph_stats(g)
                per_node = nbytes / max(1, nodes) / self.dtype.itemsize  # saved elements per node
                fits = nbytes * self.max_block <= self._graph_budget()  # vmap holds a block of every intermediate
                self._mode_chosen["cached"] = "batched" if per_node <= BATCHED_MAX_ELEMENTS_PER_NODE and fits \
                    else "loop"
            if self._mode_chosen["cached"] == "batched":
                try:
                    return products.batched_grad(g, leaf, V)
                except (RuntimeError, NotImplementedError):
                    self._mode_chosen["cached"] = "loop"
        return products.grad_of_rows(g, leaf, V)

    def _gradient_graph(self, i: int, batch: Any) -> tuple[torch.Tensor, torch.Tensor, Any] | None:
        """``(leaf, grad, count)`` of micro-batch ``i`` at ``w0`` with its graph kept, or None when it is not
        (to be) cached. ``"auto"`` keeps graphs while their measured total fits the budget."""
        if i in self._graphs:
            return self._graphs[i]
        if self.cache_graph is False or batch is None:
            return None
        graph = products.gradient_graph(self, batch, i)
        if self.cache_graph == "auto" or self.graph_memory is not None:
            nbytes = products.graph_bytes(graph[1])
            budget = self._graph_budget()
            projected = nbytes * (self.source.num_batches or 1) if self.cache_graph == "auto" else nbytes
            if self._graph_bytes + (nbytes if self._graphs else projected) > budget:  # used for this product only
                if not self._graphs:
                    self.cache_graph = False
                return graph
            self._graph_bytes += nbytes
            self.cache_graph = True
        self._graphs[i] = graph
        return graph

    def _graph_budget(self) -> int:
        return self.graph_memory if self.graph_memory is not None else _free_memory(self.device) // 4

    def _prepare_graphs(self) -> None:
        """Before the first kept-graph product over in-memory data of several micro-batches: decide from the first
        micro-batch's graph whether graphs are kept (:meth:`_gradient_graph`) and, if they are, twice their
        projected total fits the budget (the graphs and one product's intermediates) and the loss is additive
        over rows (:attr:`~landscape.objective.loss.Loss.additive`: merged micro-batches' total is then their
        totals' sum), keep graphs of merged micro-batches: as many as keep a graph within
        :data:`GRAPH_GROUP_BYTES` on a CPU (all of them elsewhere). A product is then one second backward over
        larger tensors per group instead of one per micro-batch: the single-vector product took 0.6-0.75x the
        time on the six small workloads of ``benchmarks/workloads.py`` (two micro-batches of 0.6-4.5 MiB graphs
        each), 0.57-0.77x on the large LSTM, MLP, CNN and ResNet (1.6-15 MiB each, four merged), but 1.1-1.25x on
        the large ViT and GPT-2 (60 and 91 MiB: too large to merge on a CPU); one thread. A model or loss that
        fails on merged rows keeps the micro-batches."""
        if self._group_rows is not None or self._graphs or self.cache_graph is False or \
                not isinstance(self.source, TensorSource):
            return
        batches = self.source.num_batches or 1
        measured = self.cache_graph == "auto" or self.graph_memory is not None
        with eval_mode(self.model):
            kept = self._gradient_graph(0, self.source.first())  # measured: kept if every micro-batch's would fit
            if self.cache_graph is not True or batches <= 1 or not self.loss_spec.additive:
                return  # (a per-batch mean of anything but rows is defined micro-batch by micro-batch)
            nbytes = self._graph_bytes if measured else products.graph_bytes(kept[1])
            if measured and 2 * nbytes * batches > self._graph_budget():
                return
            limit = GRAPH_GROUP_BYTES if self.device.type == "cpu" else self._graph_budget() // 2
            group = min(batches, max(1, int(limit // max(nbytes, 1))))
            if group <= 1:
                return
            rows = group * self.source.batch_size
            try:
                graph = products.gradient_graph(self, take_rows(self.source.data, slice(0, rows), self.source.rows), 0)
            except Exception:  # noqa: BLE001 -- the micro-batches' products raise whatever is the data's fault
                return
        self._graphs, self._group_rows = {0: graph}, rows
        self._graph_bytes = products.graph_bytes(graph[1]) if measured else 0

    @property
    def low_memory(self) -> bool:
        """Whether measures should keep compact workspaces (e.g. a float32 Krylov basis of few vectors):
        ``memory="low"``, or no gradient graph is kept because they would not fit ``graph_memory`` (decided
        here for in-memory data from the first micro-batch's graph, kept, if no product has yet; a stream's is
        known after its first Hessian product)."""
        if self.memory == "low" or self.cache_graph is False:
            return True
        if self.cache_graph == "auto" and not self._graphs and isinstance(self.source, TensorSource):
            self._prepare_graphs()  # the graph products reuse (eval mode, as in a pass)
        return self.cache_graph is False

    def release_graphs(self) -> None:
        """Free the cached gradient graphs (they are rebuilt on the next Hessian product if caching)."""
        self._graphs.clear()
        self._graph_bytes = 0

    # ------------------------------------------------------------- operators
    @property
    def hessian(self) -> CurvatureOperator:
        """The Hessian at ``w0`` as a linear operator."""
        return CurvatureOperator(self, "hessian")

    @property
    def ggn(self) -> CurvatureOperator:
        """The generalized Gauss-Newton matrix at ``w0`` as a linear operator."""
        return CurvatureOperator(self, "ggn")

    @property
    def fisher(self) -> CurvatureOperator:
        """The empirical Fisher at ``w0`` as a linear operator."""
        return CurvatureOperator(self, "fisher")

    def operator(self, kind: str, w: torch.Tensor | None = None) -> CurvatureOperator:
        """The ``kind`` (``hessian``, ``ggn``, ``fisher``) at ``w`` (default ``w0``) as a linear operator."""
        return CurvatureOperator(self, kind, w)


def _own(t: torch.Tensor, original: torch.Tensor) -> torch.Tensor:
    """``t``, copied if it shares ``original``'s storage."""
    return t.clone() if t.untyped_storage().data_ptr() == original.untyped_storage().data_ptr() else t


def _is_compiled(model: nn.Module) -> bool:
    """Whether ``model`` is a ``torch.compile`` wrapper, whose compiled graphs have no double backward; its
    original module (same parameters) is used instead. (No wrapper exists unless dynamo was imported, whose
    import takes about a second.)"""
    dynamo = sys.modules.get("torch._dynamo.eval_frame")
    return dynamo is not None and isinstance(model, dynamo.OptimizedModule)


def _free_memory(device: torch.device) -> int:
    """Free bytes on ``device`` (:func:`landscape.distributed.free_memory`: CUDA counts PyTorch's cached memory)."""
    return free_memory(device)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


__all__ = ["KINDS", "Objective", "ParamSpec", "eval_mode", "select_parameters", "subset_indices"]
