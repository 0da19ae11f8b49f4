"""Operations whose double backward PyTorch computes wastefully or wrongly, rerouted while the objective builds
the graph that a Hessian-, Gauss-Newton- or Fisher-vector product differentiates.

* **Convolutions of data** (``"convolutions"``). A convolution ``y = conv(x, W) + b`` whose input ``x`` needs
  no gradient (the data, as in a network's first layer) has the weight gradient ``g_W = conv_wgrad(x, g_y)``,
  linear in ``g_y``, so a product needs only its vector-Jacobian product ``d<g_W, V_W>/d g_y = conv(x, V_W)``.
  PyTorch's double backward of a convolution also computes ``conv_transpose(g_y, V_W)``, the gradient of the
  input, whether or not anything needs it: for a small CNN's first layer 40% of a product's time (measured,
  one thread, ``benchmarks/workloads.py``). Such convolutions run as :class:`_DataConv`, whose backward is
  differentiable without it.
* **Weight normalization** (``"weight_norm"``: ``torch.nn.utils.parametrizations.weight_norm`` and the older
  hook). ``torch._weight_norm(v, g, dim)``'s double backward is wrong in PyTorch 2.13 for ``dim`` 0 and 1 (the
  Hessian of a loss through it comes out asymmetric, off by up to 60% of its largest entry, measured in
  float64 against finite differences of the gradient), and it has no forward-mode rule. Here it is the
  composite ``v * (g / norm_except_dim(v, 2, dim))``, the same function, which autograd differentiates
  exactly in both modes.

Everything else runs as is; products change only by rounding (convolutions) or become exact (weight norm).
"""
from __future__ import annotations

import contextlib
import sys
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.nn.utils import parametrize
from torch.overrides import TorchFunctionMode

REROUTES = ("convolutions", "weight_norm")
_CONVS = {F.conv1d: 1, F.conv2d: 2, F.conv3d: 3}
_FORWARD = {d: f for f, d in _CONVS.items()}
_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")


def _tuple(x: Any, d: int) -> tuple[int, ...]:
    return tuple(x) if isinstance(x, (tuple, list)) else (x,) * d


class _WeightGrad(torch.autograd.Function):
    """``g_W = conv_wgrad(x, g_y)`` for fixed ``x``; its vector-Jacobian product is ``conv(x, V_W)``."""

    @staticmethod
    def forward(g_y: torch.Tensor, x: torch.Tensor, weight_shape: torch.Size, conv: tuple) -> torch.Tensor:
        d, stride, padding, dilation, groups = conv
        shape_only = torch.empty(weight_shape, dtype=g_y.dtype, device=g_y.device)  # its values are not read
        return torch.ops.aten.convolution_backward(g_y, x, shape_only, None, stride, padding, dilation, False,
                                                   (0,) * d, groups, (False, True, False))[1]

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        ctx.save_for_backward(inputs[1])
        ctx.conv = inputs[3]

    @staticmethod
    def backward(ctx: Any, v_w: torch.Tensor) -> tuple:
        (x,) = ctx.saved_tensors
        d, stride, padding, dilation, groups = ctx.conv
        return _FORWARD[d](x, v_w, None, stride, padding, dilation, groups), None, None, None


class _DataConv(torch.autograd.Function):
    """``conv(x, W) + b`` for an ``x`` without gradient; the backward is :class:`_WeightGrad` and a sum."""

    @staticmethod
    def forward(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, conv: tuple) -> torch.Tensor:
        d, stride, padding, dilation, groups = conv
        return _FORWARD[d](x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple, output: torch.Tensor) -> None:
        x, weight, bias, ctx.conv = inputs
        ctx.save_for_backward(x)
        ctx.weight_shape = weight.shape

    @staticmethod
    def backward(ctx: Any, g_y: torch.Tensor) -> tuple:
        (x,) = ctx.saved_tensors
        g_w = _WeightGrad.apply(g_y, x, ctx.weight_shape, ctx.conv) if ctx.needs_input_grad[1] else None
        g_b = g_y.sum([0, *range(2, g_y.dim())]) if ctx.needs_input_grad[2] else None
        return None, g_w, g_b, None


def _data_conv(d: int, args: tuple, kwargs: dict) -> Any:
    """``_DataConv`` for a batched input without gradient and a weight with one (not for string padding);
    None otherwise."""
    a = {**dict(zip(_ARGS, args)), **kwargs}
    x, weight, padding = a["input"], a["weight"], a.get("padding", 0)
    if not (isinstance(x, torch.Tensor) and not x.requires_grad and x.dim() == d + 2 and weight.requires_grad
            and not isinstance(padding, str)):
        return None
    conv = (d, _tuple(a.get("stride", 1), d), _tuple(padding, d), _tuple(a.get("dilation", 1), d),
            int(a.get("groups", 1)))
    return _DataConv.apply(x, weight, a.get("bias"), conv)


class _Rerouted(TorchFunctionMode):
    """Routes the operations of ``which`` (module docstring) while gradients are recorded."""

    def __init__(self, which: frozenset[str]) -> None:
        super().__init__()
        self.which = which

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        if func is torch._weight_norm and "weight_norm" in self.which:
            return _weight_norm(*args, **kwargs)
        d = _CONVS.get(func)
        if d is not None and "convolutions" in self.which and torch.is_grad_enabled():
            out = _data_conv(d, args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def _weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``torch._weight_norm`` as its composite: ``v * (g / ||v||)``, the norm over every dimension but ``dim``."""
    return v * (g / torch.norm_except_dim(v, 2, dim))


def reroutes(model: nn.Module) -> frozenset[str]:
    """What ``model`` needs rerouted: ``"convolutions"`` if it holds a ``torch.nn`` convolution, ``"weight_norm"``
    if a module is weight-normalized (parametrization or the older hook). Empty for the rest, which then pay
    nothing for the per-call dispatch of :func:`rerouted`."""
    found = set()
    hook = getattr(sys.modules.get("torch.nn.utils.weight_norm"), "WeightNorm", ())
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            found.add("convolutions")
        if parametrize.is_parametrized(m) and any(
                isinstance(p, torch.nn.utils.parametrizations._WeightNorm)
                for plist in m.parametrizations.values() for p in plist):
            found.add("weight_norm")
        if hook and any(isinstance(h, hook) for h in m._forward_pre_hooks.values()):
            found.add("weight_norm")
    return frozenset(found)


@contextlib.contextmanager
def rerouted(which: frozenset[str] | set[str]) -> Iterator[None]:
    """Within: the operations named in ``which`` (a subset of :data:`REROUTES`) are rerouted."""
    if not which:
        yield
        return
    with _Rerouted(frozenset(which)):
        yield


__all__ = ["REROUTES", "rerouted", "reroutes"]
