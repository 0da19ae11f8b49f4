"""Convolutions of data with a second derivative that skips the gradient of the data.

A convolution ``y = conv(x, W) + b`` whose input ``x`` needs no gradient (the data, as in a network's first
layer) has the weight gradient ``g_W = conv_wgrad(x, g_y)``, linear in ``g_y``, so a Hessian- (or
Gauss-Newton-) vector product needs only its vector-Jacobian product

    d<g_W, V_W>/d g_y = conv(x, V_W).

PyTorch's double backward of a convolution (``_convolution_double_backward``) also computes
``conv_transpose(g_y, V_W)``, the gradient of the input, whether or not anything needs it; for a small
CNN's first layer that unused transposed convolution was 40% of the product's time (measured, one thread,
``benchmarks/workloads.py``). Inside :func:`data_convolutions`, such convolutions run as :class:`_DataConv`,
whose backward is differentiable without it; other convolutions, and every product, are unchanged up to
rounding.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode

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


class _DataConvolutions(TorchFunctionMode):
    """Routes ``F.conv{1,2,3}d`` of a batched input without gradient and a weight with one through
    :class:`_DataConv`; everything else (string padding, unbatched input, frozen weight) runs as is."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None) -> Any:
        kwargs = kwargs or {}
        d = _CONVS.get(func)
        if d is not None:
            a = {**dict(zip(_ARGS, args)), **kwargs}
            x, weight, padding = a["input"], a["weight"], a.get("padding", 0)
            if (isinstance(x, torch.Tensor) and not x.requires_grad and x.dim() == d + 2
                    and weight.requires_grad and not isinstance(padding, str) and torch.is_grad_enabled()):
                conv = (d, _tuple(a.get("stride", 1), d), _tuple(padding, d), _tuple(a.get("dilation", 1), d),
                        int(a.get("groups", 1)))
                return _DataConv.apply(x, weight, a.get("bias"), conv)
        return func(*args, **kwargs)


def has_convolutions(model: nn.Module) -> bool:
    """Whether ``model`` holds a ``torch.nn`` convolution (only then is :func:`data_convolutions` worth its
    per-call dispatch)."""
    return any(isinstance(m, nn.modules.conv._ConvNd) for m in model.modules())


@contextlib.contextmanager
def data_convolutions(enabled: bool = True) -> Iterator[None]:
    """Within: convolutions of data differentiate twice without the unused input gradient (module docstring)."""
    if not enabled:
        yield
        return
    with _DataConvolutions():
        yield


__all__ = ["data_convolutions", "has_convolutions"]
