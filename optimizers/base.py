"""The wrapper every training optimizer is: a base torch optimizer driven by a closure.

``ClosureOptimizer.step(closure)`` = ``compute_gradients(closure)`` (a
subclass hook: plain ERM calls the closure once; the sharpness-aware family
perturbs, re-evaluates and leaves its update direction in ``p.grad``), then
:meth:`update_weights`: unscale (fp16), skip on inf/NaN, clip the *final*
gradient to ``max_grad_norm``, and step the base optimizer. The wrapper shares
``param_groups`` with the base, so an LR scheduler on the wrapper drives both.
"""
from __future__ import annotations

import inspect
import math
import sys
from typing import Any, Callable, Iterable

import torch
from torch.optim import Optimizer

BASES: dict[str, type[Optimizer]] = {"sgd": torch.optim.SGD, "adamw": torch.optim.AdamW}


def make_base(name: str, params: Any, **kwargs: Any) -> Optimizer:
    """``sgd`` (lr, momentum, dampening, nesterov, weight_decay) or ``adamw`` (lr, betas, eps, weight_decay)."""
    if name not in BASES:
        raise KeyError(f"unknown base optimizer {name!r}; known: {', '.join(BASES)}")
    kwargs.setdefault("foreach", True)
    return BASES[name](params, **kwargs)


def preset(cls: type, name: str, doc: str, **defaults: Any) -> type:
    """A subclass of ``cls`` that only changes keyword defaults (a named configuration, e.g. ASAM = SAM
    with ``T = |w| + eta``). Its signature shows the new defaults, so the registry and the CLI list them."""
    sig = inspect.signature(cls.__init__)
    unknown = sorted(set(defaults) - set(sig.parameters))
    if unknown:
        raise TypeError(f"{cls.__name__} has no keyword {', '.join(unknown)}")

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        cls.__init__(self, *args, **{**defaults, **kwargs})

    __init__.__signature__ = sig.replace(parameters=[  # type: ignore[attr-defined]
        q.replace(default=defaults[q.name]) if q.name in defaults else q for q in sig.parameters.values()])
    module = sys._getframe(1).f_globals.get("__name__", cls.__module__)
    return type(name, (cls,), {"__init__": __init__, "__doc__": doc, "__module__": module})


CLOSURE_KEYWORDS = ("sync", "update_bn")
"""What a method tells its closure per pass: ``sync`` (all-reduce this pass's gradient under DDP) and
``update_bn`` (``False`` on the perturbed passes: BatchNorm statistics move once per step)."""


class _Keywords:
    """A closure of the user's that takes none (or some) of :data:`CLOSURE_KEYWORDS`: called without the
    others; its attributes are the closure's own."""

    def __init__(self, closure: Callable[..., torch.Tensor], accepted: frozenset[str]) -> None:
        self.closure, self.accepted = closure, accepted

    def __call__(self, **kwargs: Any) -> torch.Tensor:
        return self.closure(**{k: v for k, v in kwargs.items() if k in self.accepted})

    def __getattr__(self, name: str) -> Any:
        return getattr(self.closure, name)


def keyword_closure(closure: Callable[..., torch.Tensor]) -> Callable[..., torch.Tensor]:
    """``closure`` itself if it takes ``sync`` and ``update_bn`` (or ``**kwargs``), else a wrapper that drops the
    keywords it does not take. Such a closure (``def closure(): opt.zero_grad(); loss = ...; loss.backward();
    return loss``) runs every pass with BatchNorm in its current mode, so its statistics move on the perturbed
    passes too, as in the reference SAM code; take ``update_bn`` and wrap the forward in
    ``optimizers.closure.frozen_bn_stats(model)`` when it is False (or use ``StepClosure``) to move them once."""
    try:
        params = inspect.signature(closure).parameters
    except (TypeError, ValueError):
        return closure
    if any(q.kind is inspect.Parameter.VAR_KEYWORD for q in params.values()):
        return closure
    accepted = frozenset(k for k in CLOSURE_KEYWORDS if k in params)
    return closure if len(accepted) == len(CLOSURE_KEYWORDS) else _Keywords(closure, accepted)


class ClosureOptimizer(Optimizer):
    """Base of every training optimizer; on its own it is empirical-risk minimization."""

    def __init__(
        self,
        params: Iterable[Any],
        *,
        base: str = "sgd",
        base_kwargs: dict[str, Any] | None = None,
        max_grad_norm: float | None = None,
        **defaults: Any,
    ) -> None:
        super().__init__(params, defaults)
        self.base_name = base
        self.base = make_base(base, self.param_groups, **(base_kwargs or {}))
        self.param_groups = self.base.param_groups
        # the base's defaults too (lr, momentum or betas): schedulers read them (OneCycleLR's cycle_momentum)
        self.defaults = {**self.base.defaults, **defaults}
        self.max_grad_norm = max_grad_norm
        self.scaler: torch.amp.GradScaler | None = None
        self._skipped = 0  # steps skipped, as read on the host
        self._skipped_pending: torch.Tensor | None = None  # fp16 skips not read yet (a device counter)
        self.last_skip: torch.Tensor | int = 0  # whether the last update was skipped (a device flag under fp16)
        self.epoch = 0  # set by the trainer (set_epoch) at the start of every epoch
        self._grad_norm: torch.Tensor | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """A new group with this method's defaults (``rho``, ...) and the base optimizer's (``lr``, ...)."""
        if not hasattr(self, "base"):  # Optimizer.__init__ adding the first groups
            super().add_param_group(param_group)
            return
        for key, value in self.defaults.items():
            param_group.setdefault(key, value)
        self.base.add_param_group(param_group)

    # -- the step -----------------------------------------------------------------------
    def compute_gradients(self, closure: Callable[..., torch.Tensor]) -> torch.Tensor:
        """Leave the update direction in ``p.grad``; return the loss at ``w``. ERM: one pass."""
        with torch.enable_grad():
            return closure()

    @torch.no_grad()
    def step(self, closure: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is None:
            raise RuntimeError(f"{type(self).__name__}.step needs a closure")
        closure = keyword_closure(closure)
        loss = self.compute_gradients(closure)
        self.update_weights()
        sync_buffers = getattr(closure, "sync_buffers", None)  # BatchNorm statistics: rank 0's on every replica
        if sync_buffers is not None:
            sync_buffers()
        return loss

    def all_reduce_grads(self, closure: Callable[..., torch.Tensor]) -> None:
        """Average the final gradient over data-parallel replicas, for methods whose passes ran with
        ``sync=False``: the closure's own ``all_reduce_grads`` (a :class:`~optimizers.closure.StepClosure`
        knows whether its model is DDP), else - a closure of the user's under an initialized process
        group - the mean over the default group. A no-op single-process."""
        reduce = getattr(closure, "all_reduce_grads", None)
        if reduce is not None:
            reduce()
            return
        from landscape import distributed as D

        if D.is_distributed():
            from optimizers.closure import all_reduce_mean

            all_reduce_mean([p.grad for p in self.params_with_grad()])

    def params_with_grad(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.grad is not None]

    def set_epoch(self, epoch: int) -> None:
        """Called by the trainer before each epoch (0-based); methods with a start epoch read ``self.epoch``."""
        self.epoch = int(epoch)

    def loss_scale(self) -> torch.Tensor | None:
        """The live fp16 loss scale (a 1-element tensor on the gradients' device), ``None`` without a scaler."""
        if self.scaler is None or not self.scaler.is_enabled():
            return None
        return self.scaler._scale

    @property
    def last_grad_norm(self) -> float | None:
        """Global L2 norm of the final gradient before clipping (only when clipping; read lazily)."""
        return None if self._grad_norm is None else float(self._grad_norm)

    @last_grad_norm.setter
    def last_grad_norm(self, value: float | torch.Tensor | None) -> None:
        self._grad_norm = None if value is None else torch.as_tensor(value)

    def scale_tensor(self, device: torch.device) -> torch.Tensor | None:
        """The fp16 loss scale as a 0-d tensor on ``device`` (created at the scaler's initial value before its
        first use), ``None`` without a scaler: divide by it without reading it on the host."""
        if self.scaler is None or not self.scaler.is_enabled():
            return None
        if self.scaler._scale is None:
            self.scaler._lazy_init_scale_growth_tracker(device)
        return self.scaler._scale.reshape(()).to(device)

    def unscale_(self) -> None:
        """Divide fp16-scaled gradients by the loss scale (once per step; no-op without a scaler)."""
        if self.scaler is not None:
            self.scaler.unscale_(self.base)

    @torch.no_grad()
    def apply_update(self) -> bool:
        """Clip the final gradient and step the base optimizer; ``False`` if the step was skipped (reading that
        costs a host sync under fp16: :meth:`step` uses :meth:`update_weights`, which returns nothing)."""
        skipped = self.skipped_steps
        self.update_weights()
        return self.skipped_steps == skipped

    @torch.no_grad()
    def update_weights(self) -> None:
        """Clip the final gradient and step the base optimizer, skipping on an inf/NaN gradient.

        With a scaler, an inf/NaN anywhere in the final gradient (the scaler's own check, its one host sync)
        skips the step, counted on the device; without one, a non-finite norm skips it only when clipping is on
        (the norm is computed anyway; checking it costs one host sync, which an unclipped fp32 step avoids).
        """
        self.unscale_()
        params = self.params_with_grad()
        finite = True
        if self.max_grad_norm is not None and params:
            self._grad_norm = torch.nn.utils.clip_grad_norm_(params, self.max_grad_norm, foreach=True)
            if self.scaler is None:
                finite = math.isfinite(float(self._grad_norm))
        if self.scaler is not None:
            before = self.scaler._scale.clone()  # set by the closure's scaler.scale(loss)
            self.scaler.step(self.base)
            self.scaler.update()
            skipped = (self.scaler._scale < before).reshape(()).long()  # the scaler backs off iff it skipped
            pending = self._skipped_pending
            self._skipped_pending = skipped if pending is None else pending + skipped
            self.last_skip = skipped
        elif finite:
            self.base.step()
            self.last_skip = 0
        else:
            self._skipped += 1
            self.last_skip = 1

    @property
    def skipped_steps(self) -> int:
        """Steps skipped for an inf/NaN gradient (fp16 skips are counted on the device and read here)."""
        if self._skipped_pending is not None:
            self._skipped += int(self._skipped_pending)
            self._skipped_pending = None
        return self._skipped

    @skipped_steps.setter
    def skipped_steps(self, value: int) -> None:
        self._skipped, self._skipped_pending = int(value), None

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.base.zero_grad(set_to_none=set_to_none)

    # -- state --------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        """Subclass hook: scalars/tensors beyond per-parameter state (rho, beta, moving averages)."""
        return {}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:  # type: ignore[override]
        return {"wrapper": super().state_dict(), "base": self.base.state_dict(),
                "extra": self.extra_state(), "skipped_steps": self.skipped_steps, "epoch": self.epoch}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:  # type: ignore[override]
        super().load_state_dict(state_dict["wrapper"])
        self.base.load_state_dict(state_dict["base"])
        self.param_groups = self.base.param_groups
        self.load_extra_state(state_dict.get("extra", {}))
        self.skipped_steps = int(state_dict.get("skipped_steps", 0))
        self.epoch = int(state_dict.get("epoch", 0))

    def metrics(self) -> dict[str, float]:
        """Scalars worth logging each step (e.g. LETS's rho); empty by default."""
        return {}

