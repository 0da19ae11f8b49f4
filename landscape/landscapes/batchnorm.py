"""BatchNorm policy of a landscape.

* ``frozen`` (default): every grid point is evaluated in eval mode with the checkpoint's running
  statistics, so only the parameters move (points are batched through ``vmap``).
* ``recompute``: at every grid point the running statistics are re-estimated, as
  :func:`torch.optim.swa_utils.update_bn` does: reset, momentum ``None`` (a cumulative average
  over micro-batches), one forward pass over the training data with only the BatchNorm layers in
  train mode (dropout stays off); then the point is evaluated in eval mode with those statistics.
  Points are evaluated one at a time. The model itself is never modified: the statistics live in
  fresh tensors passed to ``functional_call``; momenta and train flags are restored.

Along an interpolation between two checkpoints, ``frozen`` moves the running statistics linearly with the
weights, from the first checkpoint's to the second's (:func:`running_statistics`, the ``end_statistics`` of
:func:`~landscape.landscapes.surface.compute_surface`), so both end points are the checkpoints themselves.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator, Mapping

import torch
import torch.nn as nn

BN_POLICIES = ("frozen", "recompute")


def batchnorm_modules(model: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    """``(name, module)`` of every BatchNorm layer that tracks running statistics."""
    return [(n, m) for n, m in model.named_modules()
            if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextlib.contextmanager
def _statistics_mode(model: nn.Module) -> Iterator[None]:
    """Everything in eval mode except the BatchNorm layers (train, momentum None); restored on exit."""
    flags = [(m, m.training) for m in model.modules()]
    bns = [m for _, m in batchnorm_modules(model)]
    momenta = [(m, m.momentum) for m in bns]
    try:
        model.eval()
        for m in bns:
            m.train()
            m.momentum = None
        yield
    finally:
        for m, momentum in momenta:
            m.momentum = momentum
        for m, flag in flags:
            m.training = flag


def running_statistics(model: nn.Module, state_dict: Mapping[str, torch.Tensor],
                       where: str = "") -> dict[str, torch.Tensor]:
    """The running means and variances of ``model``'s BatchNorm layers as ``state_dict`` (another checkpoint of
    the same model) holds them; empty without BatchNorm. A one-line ValueError if one is missing."""
    out = {}
    for name, _ in batchnorm_modules(model):
        for key in (f"{name}.running_mean", f"{name}.running_var") if name else ("running_mean", "running_var"):
            if key not in state_dict:
                raise ValueError(f"{where}has no BatchNorm statistics {key!r}; is it the same architecture?")
            out[key] = state_dict[key]
    return out


def recompute_statistics(obj: Any, w: torch.Tensor, source: Any) -> dict[str, torch.Tensor]:
    """Fresh BatchNorm buffers for the model at ``w`` (``obj``'s parameter vector), estimated on
    ``source``'s micro-batches (an :class:`~landscape.objective.Objective` on the training data, run through
    its loss protocol: any batch format).
    Returns ``{buffer name: tensor}`` to pass as ``buffers=`` to ``obj.evaluate_many``; empty when
    the model has no BatchNorm layer."""
    bns = batchnorm_modules(obj.model)
    if not bns:
        return {}
    buffers: dict[str, torch.Tensor] = {}
    for name, m in bns:
        prefix = f"{name}." if name else ""
        ref = obj.state()[f"{prefix}running_mean"]
        buffers[f"{prefix}running_mean"] = torch.zeros_like(ref)
        buffers[f"{prefix}running_var"] = torch.ones_like(ref)
        buffers[f"{prefix}num_batches_tracked"] = torch.zeros((), dtype=torch.long, device=ref.device)
    state = obj.state(w, buffers)  # holds the very buffer tensors: BatchNorm updates them in place
    with torch.no_grad(), _statistics_mode(obj.model):
        source.run_batches(state)
    return buffers


__all__ = ["BN_POLICIES", "batchnorm_modules", "recompute_statistics", "running_statistics"]
