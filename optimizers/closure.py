"""The step closure: forward + backward on the current batch.

The trainer builds one :class:`StepClosure`, sets the batch before every step
and calls ``optimizer.step(closure)``. Optimizers of the sharpness-aware
family call it several times per step; its flags let them

* ``sync=False``: skip the DDP gradient all-reduce (per-replica perturbation),
* ``update_bn=False``: leave BatchNorm running statistics untouched
  (they are updated once per step, by the first pass),

and gradient accumulation, autocast and loss scaling happen inside, so every
optimizer sees ``p.grad`` = the gradient of the mean loss over the whole batch.

Methods whose final gradient is a combination of several passes computed per
replica (GSAM's decomposition, GA-SAM's mean over K+1 points) run every pass
with ``sync=False`` and then call :meth:`StepClosure.all_reduce_grads` once:
one coalesced all-reduce of the final gradient (a no-op without DDP).

BatchNorm statistics under DDP: the pass that moves them runs on each replica's shard, so the replicas'
running statistics part after it. :meth:`StepClosure.sync_buffers` (called by
:meth:`optimizers.base.ClosureOptimizer.step` after every step) gives every replica rank 0's buffers: the
statistics plain DDP keeps (its ``broadcast_buffers`` hands rank 0's to every replica before each synced
forward, so rank 0's follow its own shard), for every method, also those whose passes all run under
``no_sync`` or on the eager module (GSAM, GA-SAM, GNR, LETS), and identical on every replica after each step.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Iterator

import torch
import torch.nn as nn

from landscape.losses import loss_fn as make_loss_fn
from landscape.losses import target_count
from landscape.objective.double_backward import rerouted, reroutes


@contextlib.contextmanager
def frozen_bn_stats(model: nn.Module) -> Iterator[None]:
    """Restore every BatchNorm running statistic (and its counter) on exit, bit-exactly
    (one fused copy per dtype each way, not one kernel per buffer)."""
    bufs = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
            for b in (m.running_mean, m.running_var, m.num_batches_tracked) if b is not None]
    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for b in bufs:
        groups.setdefault((b.dtype, b.device), []).append(b)
    saved = []
    with torch.no_grad():
        for group in groups.values():
            copies = [torch.empty_like(b) for b in group]
            torch._foreach_copy_(copies, group)
            saved.append((group, copies))
    try:
        yield
    finally:
        with torch.no_grad():
            for group, copies in saved:
                torch._foreach_copy_(group, copies)


@torch.no_grad()
def all_reduce_mean(tensors: list[torch.Tensor]) -> None:
    """In place: the mean over the default process group, one flat all-reduce per dtype."""
    import torch.distributed as dist
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    world = dist.get_world_size()
    for dtype in dict.fromkeys(t.dtype for t in tensors):
        group = [t for t in tensors if t.dtype == dtype]
        flat = _flatten_dense_tensors(group)
        dist.all_reduce(flat)
        flat.div_(world)
        torch._foreach_copy_(group, _unflatten_dense_tensors(flat, group))


class StepClosure:
    """``closure(sync=True, update_bn=True) -> loss``: zero grads, forward, backward.

    ``model`` is the module whose parameters the optimizer updates;
    ``forward_model`` is what runs the forward pass (the DDP wrapper, or a
    ``torch.compile``d module), by default ``model``.
    """

    def __init__(
        self,
        model: nn.Module,
        task: str,
        *,
        forward_model: nn.Module | None = None,
        label_smoothing: float = 0.0,
        accum_steps: int = 1,
        autocast_dtype: torch.dtype | None = None,
        device: torch.device | str = "cpu",
        scaler: "torch.amp.GradScaler | None" = None,
    ) -> None:
        if accum_steps < 1:
            raise ValueError("accum_steps must be >= 1")
        self.model = model
        self.forward_model = forward_model if forward_model is not None else model
        self.task = task
        self.loss_fn: Callable = make_loss_fn(task, label_smoothing)
        self.loss_sum_fn: Callable = make_loss_fn(task, label_smoothing, reduction="sum")
        self.per_sample_loss_fn: Callable = make_loss_fn(task, label_smoothing, reduction="none")
        self.accum_steps = accum_steps
        self.device = torch.device(device)
        self.autocast_dtype = autocast_dtype
        self.scaler = scaler
        self.x: torch.Tensor | None = None
        self.y: torch.Tensor | None = None
        self.calls = 0  # forward+backward passes since the last set_batch
        self.buffers_moved = False  # a pass updated BatchNorm statistics since the last sync_buffers
        self.unused: list[torch.Tensor] = []  # parameters the last gradient_and_hvp's loss did not reach
        self._exact_hvp = reroutes(model) & {"weight_norm"}  # PyTorch's weight-norm double backward is wrong

    @property
    def params(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def set_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        self.x = x.to(self.device, non_blocking=True)
        self.y = y.to(self.device, non_blocking=True)
        self.calls = 0

    def autocast(self) -> contextlib.AbstractContextManager:
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def distributed(self) -> bool:
        """Whether the forward model is data-parallel (DDP) over more than one process."""
        from landscape import distributed as D

        return hasattr(self.forward_model, "no_sync") and D.is_distributed()

    def all_reduce_grads(self) -> None:
        """Average ``p.grad`` over the DDP replicas with one coalesced all-reduce (per dtype);
        what DDP does inside a synced backward, for gradients assembled after ``sync=False`` passes."""
        if self.distributed:
            all_reduce_mean([p.grad for p in self.params if p.grad is not None])

    def sync_buffers(self) -> None:
        """Every replica takes rank 0's module buffers if a pass moved them (one broadcast per dtype; a no-op
        without DDP): the BatchNorm statistics of plain DDP, identical on every replica."""
        if self.buffers_moved and self.distributed:
            from landscape import distributed as D

            D.broadcast_buffers(self.model)
        self.buffers_moved = False

    def _no_sync(self, sync: bool) -> contextlib.AbstractContextManager:
        if not sync and hasattr(self.forward_model, "no_sync"):
            return self.forward_model.no_sync()
        return contextlib.nullcontext()

    def __call__(self, sync: bool = True, update_bn: bool = True) -> torch.Tensor:
        if self.x is None or self.y is None:
            raise RuntimeError("StepClosure called before set_batch")
        for p in self.params:
            p.grad = None
        self.calls += 1
        bn = contextlib.nullcontext() if update_bn else frozen_bn_stats(self.model)
        self.buffers_moved |= update_bn
        # one chunk without gradient accumulation: no split, weight or sum (their small ops were ~50 us of a
        # small model's step)
        chunks = [(self.x, self.y)] if self.accum_steps == 1 else list(
            zip(self.x.chunk(self.accum_steps), self.y.chunk(self.accum_steps)))
        total = target_count(self.task, self.y) if len(chunks) > 1 else None
        loss_sum: torch.Tensor | None = None
        with bn:
            for i, (xc, yc) in enumerate(chunks):
                last = i == len(chunks) - 1
                with self._no_sync(sync and last):
                    with self.autocast():
                        loss = self._share(self.forward_model, xc, yc, total)
                    (self.scaler.scale(loss) if self.scaler is not None else loss).backward()
                loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        assert loss_sum is not None
        return loss_sum

    def _share(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor,
               total: int | torch.Tensor | None) -> torch.Tensor:
        """A chunk's share of the batch's mean loss (float32): the mean itself for the whole batch (``total``
        None), else the chunk's sum over the batch's ``total`` targets (padded ones not counted)."""
        return (self.loss_fn(model(x), y) if total is None else self.loss_sum_fn(model(x), y) / total).float()

    @torch.no_grad()
    def per_sample_losses(self) -> torch.Tensor:
        """Loss of every sample of the current batch, without touching grads or BN stats."""
        assert self.x is not None and self.y is not None
        with frozen_bn_stats(self.model), self.autocast():
            return self.per_sample_loss_fn(self.model(self.x), self.y).float()

    # -- extra passes of the family (added for GNR, LETS, ESAM) ----------------------------
    def set_validation_batch(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """The validation batch ``V_t`` of this step (LETS); the trainer sets it when the optimizer
        declares ``validation_fraction`` (see :meth:`optimizers.trainer.Trainer`)."""
        self.x_val = x.to(self.device, non_blocking=True)
        self.y_val = y.to(self.device, non_blocking=True)

    @contextlib.contextmanager
    def using_batch(self, x: torch.Tensor, y: torch.Tensor) -> Iterator[None]:
        """Inside the block every pass (``closure()``, :meth:`per_sample_losses`,
        :meth:`gradient_and_hvp`) runs on ``(x, y)`` instead of the step's batch: ESAM's selected
        samples, LETS's validation batch. The step's batch is back on exit."""
        saved = (self.x, self.y)
        self.x, self.y = x.to(self.device, non_blocking=True), y.to(self.device, non_blocking=True)
        try:
            yield
        finally:
            self.x, self.y = saved

    def validation(self) -> contextlib.AbstractContextManager:
        """``with closure.validation(): closure(...)``: loss and gradient on the validation batch."""
        if getattr(self, "x_val", None) is None:
            raise RuntimeError("this optimizer needs a validation batch each step: call "
                               "closure.set_validation_batch(x, y) (the trainer does it)")
        return self.using_batch(self.x_val, self.y_val)

    def gradient_and_hvp(
        self,
        vectors: "list[torch.Tensor] | Callable[[list[torch.Tensor]], list[torch.Tensor]]",
        *,
        params: "list[torch.Tensor] | None" = None,
        update_bn: bool = True,
    ) -> tuple[torch.Tensor, list[torch.Tensor], list[torch.Tensor]]:
        """``(loss, g, H v)`` at the current weights: ``g = grad L_B(w)`` and the exact Hessian-vector
        product ``H v`` of the batch loss, by double backward (GNR).

        ``vectors`` is a list shaped like the parameters, or a function ``g -> v`` when the direction
        depends on this very batch's gradient (``g / ||g||``): with one micro-batch that costs one
        forward, one backward with graph and one double backward; with ``accum_steps > 1`` the whole
        gradient is needed first, so the micro-batches run twice. The pass runs the eager ``model``
        (DDP's reducer and ``torch.compile`` do not support double backward) and is per replica: the
        caller all-reduces what it builds from the results. Results are
        unscaled (fp16 loss scale divided out) and leave ``p.grad`` untouched; ``params`` (default: every
        trainable parameter of ``model``) are the tensors ``g``, ``v`` and ``H v`` live on.
        """
        if self.x is None or self.y is None:
            raise RuntimeError("StepClosure called before set_batch")
        params = list(params) if params is not None else self.params
        self.calls += 1
        chunks = list(zip(self.x.chunk(self.accum_steps), self.y.chunk(self.accum_steps)))
        total = target_count(self.task, self.y) if len(chunks) > 1 else None
        loss_sum = torch.zeros((), device=self.device, dtype=torch.float32)

        def grads_of(xc: torch.Tensor, yc: torch.Tensor, create_graph: bool):
            with self.autocast():
                loss = self._share(self.model, xc, yc, total)
            with torch.enable_grad():
                scaled = self.scaler.scale(loss) if self.scaler is not None else loss
                g = torch.autograd.grad(scaled, params, create_graph=create_graph, allow_unused=True)
            used.update(id(p) for p, t in zip(params, g) if t is not None)
            return loss.detach(), [torch.zeros_like(p) if t is None else t for p, t in zip(params, g)]

        def hvp_of(g: list[torch.Tensor], v: list[torch.Tensor]) -> list[torch.Tensor]:
            dot = sum((a * b.to(a.dtype)).sum() for a, b in zip(g, v) if a.requires_grad)
            if not torch.is_tensor(dot) or not dot.requires_grad:
                return [torch.zeros_like(p) for p in params]
            hv = torch.autograd.grad(dot, params, allow_unused=True)
            return [torch.zeros_like(p) if t is None else t.detach() for p, t in zip(params, hv)]

        def unscaled(ts: list[torch.Tensor]) -> list[torch.Tensor]:  # divided by what scale() multiplied by
            if self.scaler is None:
                return ts
            return list(torch._foreach_div(ts, self.scaler._scale.reshape(()).to(ts[0].device))) if ts else ts

        used: set[int] = set()
        g_sum = [torch.zeros_like(p) for p in params]
        hv_sum = [torch.zeros_like(p) for p in params]
        bn = contextlib.nullcontext() if update_bn else frozen_bn_stats(self.model)
        self.buffers_moved |= update_bn
        with torch.enable_grad(), bn, rerouted(self._exact_hvp):
            if callable(vectors) and len(chunks) > 1:
                for xc, yc in chunks:
                    loss, g = grads_of(xc, yc, create_graph=False)
                    loss_sum += loss
                    torch._foreach_add_(g_sum, g)
                v = vectors(unscaled(g_sum))
                with frozen_bn_stats(self.model):  # BN statistics move once per pass
                    for xc, yc in chunks:
                        _, g = grads_of(xc, yc, create_graph=True)
                        torch._foreach_add_(hv_sum, hvp_of(g, v))
            else:
                for xc, yc in chunks:
                    loss, g = grads_of(xc, yc, create_graph=True)
                    loss_sum += loss
                    if callable(vectors):
                        vectors = vectors(unscaled([t.detach() for t in g]))
                    torch._foreach_add_(g_sum, [t.detach() for t in g])
                    torch._foreach_add_(hv_sum, hvp_of(g, vectors))
        self.unused = [p for p in params if id(p) not in used]  # the loss did not reach them (their g is 0)
        return loss_sum, unscaled(g_sum), unscaled(hv_sum)
