"""The objective: model + loss + data as one function of a flat parameter vector.

:class:`Objective` fixes a model, a task loss and one data split and exposes
the full-data average loss ``L(w) = sum_b n_b * mean_loss_b(w) / sum_b n_b``
(``n_b`` from :func:`landscape.losses.target_count`, so a smaller last
micro-batch never biases it) as a function of a flat vector ``w`` of the
selected parameters, together with its gradient and Hessian-, Gauss-Newton-
and empirical-Fisher-vector products.

Policy, shared by every measure built on it:

* the model runs in **eval mode** (dropout off, BatchNorm uses its running
  statistics) through :func:`torch.func.functional_call`; the module's own
  parameters, buffers and ``training`` flags are never modified (only
  :meth:`Objective.at` writes into the module, and it restores bit-exactly);
* computations run in ``dtype`` (default: the model's) on ``device``; the
  data is moved there once;
* parameters outside the selection (and all buffers) are held fixed;
* nothing here draws random numbers: measures take explicit seeds;
* under ``torch.distributed`` every rank takes rows ``rank::world`` of the
  data and every sum is all-reduced, so all ranks hold identical results.

Vectors are flat tensors of length :attr:`Objective.num_params` (the order of
``named_parameters()``); a block of ``k`` vectors is a ``(k, P)`` tensor (rows).
"""
from __future__ import annotations

import contextlib
import copy
import re
import time
from collections import Counter
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch
import torch.nn as nn
from torch.func import functional_call, grad as func_grad, jvp, vmap

from landscape.curvature.operators import CurvatureOperator
from landscape.distributed import all_reduce_sum, rank, world_size
from landscape.losses import loss_fn, target_count

ParamSpec = None | str | Sequence[str] | Callable[[str, torch.Tensor], bool]
"""Which parameters form ``w``: ``None``/``"all"`` (every trainable one),
``"weights"`` (no biases, no normalization-layer parameters), a regular
expression searched in the parameter name, a list of exact names, or
``f(name, param) -> bool``."""

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)
KINDS = ("hessian", "ggn", "fisher")


def select_parameters(model: nn.Module, spec: ParamSpec = None) -> list[str]:
    """Names of the trainable parameters chosen by ``spec`` (see :data:`ParamSpec`)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if spec is None or spec == "all":
        chosen = [n for n, _ in named]
    elif spec == "weights":
        norm = {f"{m_name}.{p_name}" if m_name else p_name
                for m_name, m in model.named_modules() if isinstance(m, _NORM_LAYERS)
                for p_name, _ in m.named_parameters(recurse=False)}
        chosen = [n for n, _ in named if n not in norm and not n.endswith("bias")]
    elif callable(spec):
        chosen = [n for n, p in named if spec(n, p)]
    elif isinstance(spec, str):
        try:
            pattern = re.compile(spec)
        except re.error as e:
            raise ValueError(f"parameter filter {spec!r} is not a valid regular expression ({e})") from e
        chosen = [n for n, _ in named if pattern.search(n)]
    else:
        names = {n for n, _ in named}
        unknown = [s for s in spec if s not in names]
        if unknown:
            raise ValueError(f"unknown parameter(s) {unknown}; the model has {sorted(names)}")
        chosen = [n for n, _ in named if n in set(spec)]
    if not chosen:
        raise ValueError(f"parameter filter {spec!r} selects no trainable parameter")
    return chosen


def subset_indices(n: int, size: int | None, seed: int = 0) -> torch.Tensor:
    """Sorted indices of a fixed random subset of ``size`` of ``range(n)`` (all of them if ``size`` is None)."""
    if size is None or size >= n:
        return torch.arange(n)
    if size < 1:
        raise ValueError(f"subset size must be >= 1, got {size}")
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:size].sort().values


@contextlib.contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """Put every submodule in eval mode; restore each one's ``training`` flag on exit."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


class Objective:
    """Full-data loss of ``model`` on ``(x, y)`` as a function of a flat parameter vector.

    ``batch_size``: micro-batch size (memory only; results do not depend on it
    beyond float rounding). ``max_block``: most vectors pushed through one data
    pass by a block product. ``hvp_mode``: ``"reverse"`` (double backward),
    ``"forward"`` (``torch.func.jvp`` of ``torch.func.grad``) or ``"auto"``
    (time both on the first micro-batch, keep the faster; forward mode falls
    back to reverse on an op without a forward-mode rule).
    ``cache_graph``: Hessian products at the base point ``w0`` keep each
    micro-batch's gradient graph alive and only run its second backward (as
    PyHessian's single-batch mode does), about twice as fast; ``"auto"`` does so
    when the graphs, measured on the first micro-batch, fit ``graph_memory``
    bytes (default: a quarter of the free device memory / available RAM).
    :meth:`release_graphs` frees them.
    """

    def __init__(
        self,
        model: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        *,
        task: str = "classification",
        label_smoothing: float = 0.0,
        batch_size: int = 512,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        params: ParamSpec = None,
        hvp_mode: str = "auto",
        max_block: int = 16,
        cache_graph: bool | str = "auto",
        graph_memory: int | None = None,
        shard: bool = True,
    ) -> None:
        if batch_size < 1 or max_block < 1:
            raise ValueError("batch_size and max_block must be >= 1")
        if hvp_mode not in ("auto", "reverse", "forward"):
            raise ValueError(f"hvp_mode must be auto, reverse or forward, got {hvp_mode!r}")
        if len(x) != len(y):
            raise ValueError(f"{len(x)} inputs but {len(y)} targets")
        first = next(iter(model.parameters()), None)
        if first is None:
            raise ValueError("the model has no parameters")
        self.model = model
        self.task = task
        self.device = torch.device(device) if device is not None else first.device
        self.dtype = dtype if dtype is not None else first.dtype
        self.batch_size, self.max_block = int(batch_size), int(max_block)
        self.hvp_mode = hvp_mode
        self._mode_chosen: dict[bool, str] = {}
        if cache_graph not in (True, False, "auto"):
            raise ValueError(f"cache_graph must be True, False or 'auto', got {cache_graph!r}")
        self.cache_graph, self.graph_memory = cache_graph, graph_memory
        self._graphs: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._loss = loss_fn(task, label_smoothing)
        self._sample_loss = loss_fn(task, label_smoothing, reduction="none")

        self.names = select_parameters(model, params)
        named = dict(model.named_parameters())
        self.shapes = [tuple(named[n].shape) for n in self.names]
        self.sizes = [named[n].numel() for n in self.names]
        self.num_params = sum(self.sizes)
        self.w0 = self.flatten([named[n] for n in self.names])
        chosen = set(self.names)
        self._fixed = {n: self._cast(p) for n, p in named.items() if n not in chosen}
        self._fixed.update({n: self._cast(b) for n, b in model.named_buffers()})

        if shard and world_size() > 1:
            x, y = x[rank()::world_size()], y[rank()::world_size()]
        x = x.to(self.device, self.dtype) if x.is_floating_point() else x.to(self.device)
        y = y.to(self.device, self.dtype) if y.is_floating_point() else y.to(self.device)
        self._x, self._y = x, y
        self._batches = [(x[i:i + self.batch_size], y[i:i + self.batch_size])
                         for i in range(0, len(x), self.batch_size)]
        self._counts = [target_count(task, yb) for _, yb in self._batches]
        self._count_weights = [torch.tensor([float(n), 1.0], dtype=torch.float64, device=self.device)
                               for n in self._counts]
        totals = torch.tensor([float(len(x)), float(sum(self._counts)), float(len(x) == 0)], dtype=torch.float64)
        if shard:
            all_reduce_sum(totals)
        self.num_samples, self.total_count = int(totals[0]), int(totals[1])
        if totals[2] > 0:
            raise ValueError(f"{int(totals[2])} of {world_size()} processes hold no data rows; use more data")
        self._shard = shard
        self._auto_chunk: int | None = None
        self.counts: Counter[str] = Counter()
        """Work done so far: ``hessian``/``ggn``/``fisher`` (matrix-vector products against the
        full data, a block of k counts k), ``grad``, ``loss``, and ``passes`` (data passes)."""

    @classmethod
    def from_bundle(cls, model: nn.Module, data: Any, split: str = "train", *, subset: int | None = None,
                    seed: int = 0, **kwargs: Any) -> "Objective":
        """Objective on a :class:`~landscape.data.DataBundle` split (``subset``: fixed seeded subset)."""
        x, y = data.split(split)
        idx = subset_indices(len(x), subset, seed)
        if len(idx) < len(x):
            x, y = x[idx], y[idx]
        return cls(model, x, y, task=data.task, **kwargs)

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
        """Write ``w`` into the model's parameters for the block; restore them bit-exactly after."""
        named = dict(self.model.named_parameters())
        saved = {n: named[n].detach().clone() for n in self.names}
        try:
            with torch.no_grad():
                for n, t in self.unflatten(self._point(w)).items():
                    named[n].copy_(t)
            yield self.model
        finally:
            with torch.no_grad():
                for n, t in saved.items():
                    named[n].copy_(t)

    # ------------------------------------------------------------ functionals
    def _state(self, w: torch.Tensor) -> dict[str, torch.Tensor]:
        return {**self._fixed, **self.unflatten(w)}

    def state(self, w: torch.Tensor | None = None,
              buffers: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The full ``functional_call`` state at ``w``: fixed parameters, buffers (``buffers`` replace
        the model's), the selected parameters as views of ``w``. Tensors passed in are used as they are
        (a train-mode BatchNorm updates the given buffers in place)."""
        return {**self._fixed, **(buffers or {}), **self.unflatten(self._point(w))}

    @property
    def micro_batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """This rank's ``(x, y)`` micro-batches (on the objective's device and dtype)."""
        return list(self._batches)

    def _forward(self, w: torch.Tensor, xb: torch.Tensor,
                 buffers: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        state = self._state(w) if buffers is None else {**self._fixed, **buffers, **self.unflatten(w)}
        return functional_call(self.model, state, (xb,))

    def _batch_loss(self, w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return self._loss(self._forward(w, xb), yb)

    def reduce_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum ``t`` over the ranks that shard this objective's data (in place; identity otherwise)."""
        return all_reduce_sum(t) if self._shard else t

    def _sum_over_data(self, per_batch: Callable[[int, torch.Tensor, torch.Tensor], torch.Tensor],
                       weight: str = "targets") -> torch.Tensor:
        """``sum_b n_b * per_batch(b, x_b, y_b) / sum_b n_b`` over all ranks' micro-batches (one data pass).

        ``weight="targets"``: ``per_batch`` is a mean over the batch's targets;
        ``"none"``: it is already a sum over samples, divided by the sample count.
        """
        total: torch.Tensor | None = None
        with eval_mode(self.model):
            for i, ((xb, yb), n) in enumerate(zip(self._batches, self._counts)):
                r = per_batch(i, xb, yb)
                r = r * n if weight == "targets" else r
                total = r if total is None else total + r
        self.counts["passes"] += 1
        total = self.reduce_sum(total.contiguous())
        return total / (self.total_count if weight == "targets" else self.num_samples)

    def evaluate(self, w: torch.Tensor | None = None) -> dict[str, float | None]:
        """Full-data ``{"loss", "acc"}`` at ``w`` (default ``w0``); ``acc`` is None for regression."""
        return {k: float(v[0]) if v is not None else None for k, v in self.evaluate_many(self._point(w)[None]).items()}

    def loss(self, w: torch.Tensor | None = None) -> float:
        """``L(w)``, the full-data average loss."""
        return self.evaluate(w)["loss"]  # type: ignore[return-value]

    def evaluate_many(self, W: torch.Tensor, chunk_size: int | str = 16,
                      buffers: Mapping[str, torch.Tensor] | None = None) -> dict[str, np.ndarray | None]:
        """Loss and accuracy at each row of ``W`` (``(n, P)``), ``chunk_size`` points at a time through
        one ``vmap``-ed forward pass per micro-batch (``"auto"``: :meth:`auto_chunk_size`). ``buffers``
        replace the model's buffers (e.g. recomputed BatchNorm statistics). Returns numpy arrays of
        length ``n``."""
        W = self._block(W)
        if chunk_size == "auto":
            chunk_size = self.auto_chunk_size()
        if not isinstance(chunk_size, int) or chunk_size < 1:
            raise ValueError(f"chunk_size must be a positive integer or 'auto', got {chunk_size!r}")
        losses, correct = [], []
        with torch.no_grad(), eval_mode(self.model):
            for chunk in W.split(chunk_size):
                sums = self._chunk_sums(chunk, len(self._batches), buffers)
                self.reduce_sum(sums)
                self.counts["passes"] += 1
                losses.append(sums[:, 0] / self.total_count)
                correct.append(sums[:, 1] / self.total_count)
        self.counts["loss"] += len(W)
        return {"loss": torch.cat(losses).cpu().numpy(),
                "acc": None if self.task == "regression" else torch.cat(correct).cpu().numpy()}

    def _chunk_sums(self, chunk: torch.Tensor, num_batches: int,
                    buffers: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``(len(chunk), 2)`` float64 sums ``[n_b * mean loss_b, correct_b]`` over the first
        ``num_batches`` micro-batches of this rank."""
        sums = torch.zeros(len(chunk), 2, dtype=torch.float64, device=self.device)
        for (xb, yb), weight in zip(self._batches[:num_batches], self._count_weights[:num_batches]):
            sums.addcmul_(self._evaluate_chunk(chunk, xb, yb, buffers), weight)
        return sums

    def _evaluate_chunk(self, chunk: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                        buffers: Mapping[str, torch.Tensor] | None = None) -> torch.Tensor:
        """``(len(chunk), 2)`` float64 rows ``[mean loss, correct count]`` on one micro-batch."""
        regression = self.task == "regression"

        def point(w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            out = self._forward(w, xb, buffers)
            correct = torch.zeros((), dtype=out.dtype) if regression else (out.argmax(-1) == yb).sum().to(out.dtype)
            return torch.stack([self._loss(out, yb), correct])

        if len(chunk) == 1:
            return point(chunk[0], xb, yb)[None].double()
        return vmap(point, in_dims=(0, None, None))(chunk, xb, yb).double()

    def auto_chunk_size(self, max_chunk: int = 256, memory: int | None = None) -> int:
        """How many points :meth:`evaluate_many` should push through one ``vmap``-ed forward.

        The cap: the activations of one point on one micro-batch (all module outputs of a forward,
        an upper bound on what is alive at once) plus one weight vector, times the chunk, must fit
        ``memory`` bytes (default: a quarter of the free device memory / available RAM). Below it,
        chunks of 1, 4, 16, 64, 256 points are timed on the first micro-batch: after a warm-up, in
        interleaved rounds (so a change in machine load hits every size alike) until each has at least
        3 timings and 0.2 s have passed, or 20 rounds; a size more than 3 times as slow per point as the
        best leaves the race. The largest chunk within 10% of the fastest per point wins (larger chunks
        also save per-chunk work outside the forward pass). Batching pays off wherever per-call
        overhead dominates (GPUs, small models, small micro-batches, busy multi-threaded CPUs), while
        on a CPU a big chunk can be memory-bound and a grouped convolution under ``vmap`` slower than
        a loop. Decided once per objective (cached); every rank of a sharded objective gets rank 0's
        choice.
        """
        if self._auto_chunk is not None:
            return self._auto_chunk
        xb, _ = self._batches[0]
        per_point = self.num_params * self.w0.element_size() + _activation_bytes(self.model, self.state(), xb)
        budget = memory if memory is not None else _free_memory(self.device) // 4
        cap = int(max(1, min(max_chunk, budget // max(1, per_point))))
        racing = [c for c in (1, 4, 16, 64, 256) if c <= cap]
        times: dict[int, list[float]] = {c: [] for c in racing}
        start = time.perf_counter()
        with torch.no_grad(), eval_mode(self.model):
            for c in racing:
                self._chunk_sums(self.w0.expand(c, -1), 1)  # warm-up
            for round_ in range(20):
                for c in racing:
                    _sync(self.device)
                    t0 = time.perf_counter()
                    self._chunk_sums(self.w0.expand(c, -1), 1)
                    _sync(self.device)
                    times[c].append((time.perf_counter() - t0) / c)
                fastest = min(min(times[c]) for c in racing)
                racing = [c for c in racing if min(times[c]) <= 3.0 * fastest]
                if round_ >= 2 and time.perf_counter() - start > 0.2:
                    break
        per_point = {c: min(t) for c, t in times.items() if c in racing}
        fastest = min(per_point.values())
        best = max(c for c, t in per_point.items() if t <= 1.1 * fastest)
        keep = rank() == 0 or not self._shard  # a sharded objective takes rank 0's choice
        choice = torch.tensor([float(best) if keep else 0.0], dtype=torch.float64, device=self.device)
        self._auto_chunk = int(self.reduce_sum(choice).item())
        return self._auto_chunk

    def loss_and_grad(self, w: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
        """``(L(w), grad L(w))`` in one data pass."""
        w = self._point(w)

        def per_batch(i: int, xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
            leaf = w.detach().requires_grad_(True)
            with torch.enable_grad():
                loss = self._batch_loss(leaf, xb, yb)
                (g,) = torch.autograd.grad(loss, leaf, allow_unused=True, materialize_grads=True)
            return torch.cat([loss.detach()[None], g])

        out = self._sum_over_data(per_batch)
        self.counts["grad"] += 1
        return float(out[0]), out[1:]

    def grad(self, w: torch.Tensor | None = None) -> torch.Tensor:
        """``grad L(w)`` (flat)."""
        return self.loss_and_grad(w)[1]

    def group_gradients(self, group_size: int, w: torch.Tensor | None = None,
                        max_elements: int = 1 << 26) -> Iterator[torch.Tensor]:
        """Gradients of the mean loss of consecutive groups of ``group_size`` rows of this rank's data.

        Yields ``(c, P)`` blocks (``c`` groups, through one ``vmap`` of ``torch.func.grad``); a trailing
        group with fewer than ``group_size`` rows is skipped. ``group_size=1`` gives per-sample gradients.
        """
        w, x, y = self._point(w), self._x, self._y
        groups = len(x) // group_size
        per_chunk = max(1, min(groups, max_elements // max(1, self.num_params), self.batch_size // group_size or 1))
        g = func_grad(lambda w_, xg, yg: self._batch_loss(w_, xg, yg))
        with eval_mode(self.model):
            for start in range(0, groups, per_chunk):
                stop = min(groups, start + per_chunk)
                xs = x[start * group_size:stop * group_size].reshape(stop - start, group_size, *x.shape[1:])
                ys = y[start * group_size:stop * group_size].reshape(stop - start, group_size, *y.shape[1:])
                yield vmap(g, in_dims=(None, 0, 0))(w, xs, ys)
        self.counts["passes"] += 1

    def minibatches(self, size: int, *, limit: int | None = None, seed: int = 0) -> list["Objective"]:
        """This objective on disjoint mini-batches of ``size`` rows of this process's data (m-sharpness).

        The rows are shuffled by ``seed``; a trailing group smaller than ``size`` is dropped; at most
        ``limit`` batches are returned. Each is an independent :class:`Objective` (same model, loss,
        parameters, dtype and device; unsharded, its own ``counts``) over those rows only.
        """
        if size < 1:
            raise ValueError(f"mini-batch size must be >= 1, got {size}")
        n = len(self._x)
        if size > n:
            raise ValueError(f"mini-batch size {size} exceeds the {n} rows held here")
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).to(self._x.device)
        groups = n // size if limit is None else min(n // size, int(limit))
        return [self._rows(perm[i * size:(i + 1) * size]) for i in range(groups)]

    def _rows(self, index: torch.Tensor) -> "Objective":
        sub = copy.copy(self)
        sub._x, sub._y = self._x[index], self._y[index]
        sub._batches = [(sub._x[i:i + self.batch_size], sub._y[i:i + self.batch_size])
                        for i in range(0, len(sub._x), self.batch_size)]
        sub._counts = [target_count(self.task, yb) for _, yb in sub._batches]
        sub._count_weights = [torch.tensor([float(n), 1.0], dtype=torch.float64, device=self.device)
                              for n in sub._counts]
        sub.num_samples, sub.total_count = len(sub._x), int(sum(sub._counts))
        sub._shard = False
        sub._graphs, sub._mode_chosen = {}, dict(self._mode_chosen)
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
        out = torch.cat([self._matvec_pass(kind, w, chunk) for chunk in V.split(self.max_block)])
        self.counts[kind] += len(V)
        return out.reshape(v.shape).to(v.device, v.dtype if v.is_floating_point() else self.dtype)

    def _matvec_pass(self, kind: str, w: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        if kind == "fisher":
            return self._sum_over_data(lambda i, xb, yb: self._fvp_reverse(w, xb, yb, V), weight="none")
        if kind == "ggn":
            return self._sum_over_data(lambda i, xb, yb: self._gvp_reverse(w, xb, yb, V))
        return self._sum_over_data(lambda i, xb, yb: self._hvp_batch(i, w, xb, yb, V))

    def _hvp_batch(self, i: int, w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor,
                   V: torch.Tensor) -> torch.Tensor:
        if w is self.w0 and self.hvp_mode != "forward":
            graph = self._gradient_graph(i, xb, yb)
            if graph is not None:
                leaf, g = graph
                if not g.requires_grad:
                    return torch.zeros_like(V)
                return torch.stack([_grad(g, leaf, v, retain=True) for v in V])
        block = len(V) > 1
        mode = self.hvp_mode if self.hvp_mode != "auto" else self._mode_chosen.get(block)
        if mode is None:
            mode = self._mode_chosen[block] = self._autotune(w, xb, yb, V)
        if mode == "forward":
            try:
                return self._hvp_forward(w, xb, yb, V)
            except (RuntimeError, NotImplementedError):
                if self.hvp_mode == "forward":
                    raise
                self._mode_chosen[block] = "reverse"
        return self._hvp_reverse(w, xb, yb, V)

    def _autotune(self, w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, V: torch.Tensor) -> str:
        """Time both HVP modes (second of two calls) on one micro-batch; every rank picks the same."""
        times = torch.zeros(2, dtype=torch.float64)
        for i, f in enumerate((self._hvp_reverse, self._hvp_forward)):
            try:
                for _ in range(2):
                    _sync(self.device)
                    t0 = time.perf_counter()
                    f(w, xb, yb, V)
                    _sync(self.device)
                    times[i] = time.perf_counter() - t0
            except (RuntimeError, NotImplementedError):
                times[i] = float("inf")
        times = self.reduce_sum(times.to(self.device)).cpu()
        return "forward" if times[1] < times[0] else "reverse"

    def _gradient_graph(self, i: int, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(leaf, grad)`` of micro-batch ``i`` at ``w0`` with its graph kept, or None when not caching."""
        if self.cache_graph == "auto":  # decide once, from the first graph's size
            graph, nbytes = _saved_bytes(lambda: self._gradient_at_w0(xb, yb))
            budget = self.graph_memory if self.graph_memory is not None else _free_memory(self.device) // 4
            self.cache_graph = nbytes * len(self._batches) <= budget
            if self.cache_graph:
                self._graphs[i] = graph
        if not self.cache_graph:
            return None
        if i not in self._graphs:
            self._graphs[i] = self._gradient_at_w0(xb, yb)
        return self._graphs[i]

    def _gradient_at_w0(self, xb: torch.Tensor, yb: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        leaf = self.w0.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self._batch_loss(leaf, xb, yb), leaf, create_graph=True,
                                       allow_unused=True, materialize_grads=True)
        return leaf, g

    def release_graphs(self) -> None:
        """Free the cached gradient graphs (they are rebuilt on the next Hessian product if caching)."""
        self._graphs.clear()

    def _hvp_reverse(self, w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """Double backward: ``H v = d/dw (grad L(w) . v)``; one forward and first backward for the block."""
        leaf = w.detach().requires_grad_(True)
        with torch.enable_grad():
            (g,) = torch.autograd.grad(self._batch_loss(leaf, xb, yb), leaf, create_graph=True,
                                       allow_unused=True, materialize_grads=True)
            if not g.requires_grad:  # loss linear in w
                return torch.zeros_like(V)
            return torch.stack([_grad(g, leaf, v, retain=i < len(V) - 1) for i, v in enumerate(V)])

    def _hvp_forward(self, w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """Forward over reverse: ``H v = jvp(grad L, (w,), (v,))``, ``vmap``-ed over the block."""
        g = func_grad(lambda u: self._batch_loss(u, xb, yb))
        if len(V) == 1:
            return jvp(g, (w,), (V[0],))[1][None]
        return vmap(lambda v: jvp(g, (w,), (v,))[1])(V)

    def _gvp_reverse(self, w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``J^T H_out J v`` of the batch-mean loss: ``J v`` by the double-vjp trick, ``H_out`` by double
        backward through the loss, ``J^T`` by a vjp; the graph is built once for the block."""
        leaf = w.detach().requires_grad_(True)
        with torch.enable_grad():
            out = self._forward(leaf, xb)
            (g_out,) = torch.autograd.grad(self._loss(out, yb), out, create_graph=True)
            u = torch.zeros_like(out, requires_grad=True)
            (jtu,) = torch.autograd.grad(out, leaf, u, create_graph=True)
            rows = []
            for v in V:
                jv = _grad(jtu, u, v, retain=True)
                hjv = _grad(g_out, out, jv, retain=True) if g_out.requires_grad else torch.zeros_like(out)
                rows.append(_grad(out, leaf, hjv, retain=True))
            return torch.stack(rows)

    def _fvp_reverse(self, w: torch.Tensor, xb: torch.Tensor, yb: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
        """``sum_i g_i (g_i . v) = J_l^T (J_l v)`` with ``J_l`` the Jacobian of the per-sample losses."""
        leaf = w.detach().requires_grad_(True)
        with torch.enable_grad():
            losses = self._sample_loss(self._forward(leaf, xb), yb)
            u = torch.zeros_like(losses, requires_grad=True)
            (jtu,) = torch.autograd.grad(losses, leaf, u, create_graph=True)
            return torch.stack([_grad(losses, leaf, _grad(jtu, u, v, retain=True), retain=True) for v in V])

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


def _grad(out: torch.Tensor, inp: torch.Tensor, cotangent: torch.Tensor, retain: bool) -> torch.Tensor:
    (g,) = torch.autograd.grad(out, inp, cotangent, retain_graph=retain, allow_unused=True, materialize_grads=True)
    return g


def _saved_bytes(build: Callable[[], Any]) -> tuple[Any, int]:
    """``(build(), bytes of the tensors autograd saved meanwhile)``: what a kept graph holds."""
    total = 0

    def pack(t: torch.Tensor) -> torch.Tensor:
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = build()
    return out, total


def _activation_bytes(model: nn.Module, state: dict[str, torch.Tensor], xb: torch.Tensor) -> int:
    """Bytes of every tensor output of every submodule in one eval-mode forward of ``xb``."""
    total = 0

    def hook(module: nn.Module, inputs: Any, output: Any) -> None:
        nonlocal total
        outs = output if isinstance(output, (tuple, list)) else (output,)
        total += sum(o.numel() * o.element_size() for o in outs if isinstance(o, torch.Tensor))

    handles = [m.register_forward_hook(hook) for m in model.modules()]
    try:
        with torch.no_grad(), eval_mode(model):
            functional_call(model, state, (xb,))
    finally:
        for h in handles:
            h.remove()
    return total


def _free_memory(device: torch.device) -> int:
    """Free bytes on ``device`` (CUDA: free device memory; otherwise available RAM; 1 GiB if unknown)."""
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        import os

        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 30


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)

__all__ = ["KINDS", "Objective", "ParamSpec", "eval_mode", "select_parameters", "subset_indices"]
