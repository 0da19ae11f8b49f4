"""Operations whose double backward PyTorch computes wastefully or wrongly, rerouted while the objective builds
the graph that a Hessian-, Gauss-Newton- or Fisher-vector product differentiates.

* **Convolutions of data** (``"convolutions"``). A convolution ``y = conv(x, W) + b`` whose input ``x`` needs
  no gradient (the data, as in a network's first layer) has the weight gradient ``g_W = conv_wgrad(x, g_y)``,
  linear in ``g_y``, so a product needs only its vector-Jacobian product ``d<g_W, V_W>/d g_y = conv(x, V_W)``.
  PyTorch's double backward of a convolution also computes ``conv_transpose(g_y, V_W)``, the gradient of the
  input, whether or not anything needs it (for a small CNN's first layer the profiler put that at 40% of a
  product's time; skipping it made the product 20% faster, one thread, ``benchmarks/workloads.py``). Such
  convolutions run as :class:`_DataConv`, whose backward is differentiable without it.
* **Weight normalization** (``"weight_norm"``: ``torch.nn.utils.parametrizations.weight_norm`` and the older
  hook). ``torch._weight_norm(v, g, dim)``'s double backward is wrong in PyTorch 2.13 for ``dim`` 0 and 1 (the
  Hessian of a loss through it comes out asymmetric, off by up to 60% of its largest entry, measured in
  float64 against finite differences of the gradient), and it has no forward-mode rule. Here it is the
  composite ``v * (g / norm_except_dim(v, 2, dim))``, the same function, which autograd differentiates
  exactly in both modes.
* **Recurrent layers** (``"recurrent"``: ``torch.nn.LSTM``, ``GRU``, ``RNN`` on dense input). PyTorch runs
  an LSTM through oneDNN on CPU (``mkldnn_rnn_layer``: no forward-mode rule, and its double backward took
  1.3-1.45x the time of plain ops on a 2-layer LSTM language model, measured), and every one of them through
  cuDNN on GPU (no double backward at all). Here they are unrolled over time with plain ops
  (:func:`unrolled_recurrent`): the same function, every product mode on every device. Packed sequences run
  as is.
* **Embeddings** (``"embeddings"``: ``nn.Embedding`` and ``nn.EmbeddingBag``). ``sparse=True`` gives a sparse
  gradient that no product can differentiate, ``max_norm`` renormalizes the weight's rows in place during the
  forward (an in-place write to the point being differentiated), and ``embedding_bag`` has no double backward.
  Here: a dense lookup of the rows scaled by ``min(1, max_norm / ||row||)`` (the same values, and the function
  of the weight that the forward computes), and a bag as the sum (``index_add``), mean or maximum
  (``scatter_reduce``) of looked-up rows, weighted by ``per_sample_weights``, padding rows left out.

Everything else runs as is; products change only by rounding (convolutions, recurrent layers) or become exact (weight
norm).
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

REROUTES = ("convolutions", "weight_norm", "recurrent", "embeddings")
_RECURRENT = {torch._VF.lstm: "lstm", torch._VF.gru: "gru", torch._VF.rnn_tanh: "rnn_tanh",
              torch._VF.rnn_relu: "rnn_relu"}
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
        kind = _RECURRENT.get(func)
        if (kind is not None and "recurrent" in self.which and len(args) == 9 and not kwargs
                and isinstance(args[2], list)):  # dense input
            return unrolled_recurrent(kind, *args)
        if func in _EMBEDDINGS and "embeddings" in self.which:
            return _EMBEDDINGS[func](*args, **kwargs)
        d = _CONVS.get(func)
        if d is not None and "convolutions" in self.which and torch.is_grad_enabled():
            out = _data_conv(d, args, kwargs)
            if out is not None:
                return out
        return func(*args, **kwargs)


def _step(kind: str, gx: torch.Tensor, h: torch.Tensor, c: torch.Tensor | None, w_hh: torch.Tensor,
          b_hh: torch.Tensor | None, w_hr: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One time step of PyTorch's cells from the input part ``gx`` (gate order as PyTorch's): LSTM ``i, f, g, o``
    (``gx = W_ih x_t + b_ih + b_hh``): ``c' = s(f) c + s(i) tanh(g)``, ``h' = s(o) tanh(c')`` (then ``W_hr h'``);
    GRU ``r, z, n`` (``gx = W_ih x_t + b_ih``): ``n = tanh(x_n + r (W_hn h + b_hn))``, ``h' = (1 - z) n + z h``;
    RNN ``h' = tanh|relu(gx + W_hh h)`` (``gx = W_ih x_t + b_ih + b_hh``)."""
    gh = F.linear(h, w_hh, b_hh)
    if kind == "lstm":
        i, f, g, o = (gx + gh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        h = torch.sigmoid(o) * torch.tanh(c)
        return (h if w_hr is None else F.linear(h, w_hr)), c
    if kind == "gru":
        x_r, x_z, x_n = gx.chunk(3, 1)
        h_r, h_z, h_n = gh.chunk(3, 1)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        return (1 - z) * torch.tanh(x_n + r * h_n) + z * h, None
    return (torch.tanh(gx + gh) if kind == "rnn_tanh" else torch.relu(gx + gh)), None


def unrolled_recurrent(kind: str, x: torch.Tensor, hx: Any, params: list[torch.Tensor], has_biases: bool,
                       num_layers: int, dropout: float, train: bool, bidirectional: bool, batch_first: bool) -> tuple:
    """``torch._VF.<kind>`` (``lstm``, ``gru``, ``rnn_tanh``, ``rnn_relu``; dense input, the same arguments)
    unrolled over time with :func:`_step`, per layer and direction, with ``F.dropout(p=dropout)`` between layers
    in training; returns ``(output, h_n)``, and ``c_n`` for an LSTM. The input projection of all steps is one
    ``linear`` (LSTM and RNN: with both biases, ``b_ih + b_hh``, so a step adds none) split by ``unbind`` (whose
    backward is one ``stack``, not a zero tensor per step)."""
    dirs = 2 if bidirectional else 1
    per = len(params) // (num_layers * dirs)  # w_ih, w_hh[, b_ih, b_hh][, w_hr (LSTM projection)]
    h0, c0 = hx if kind == "lstm" else (hx, None)
    out = x.transpose(0, 1) if batch_first else x  # (T, N, features)
    h_n, c_n = [], []
    for layer in range(num_layers):
        outs = []
        for d in range(dirs):
            k = layer * dirs + d
            p = params[k * per:(k + 1) * per]
            b_ih, b_hh = (p[2], p[3]) if has_biases else (None, None)
            if b_hh is not None and kind != "gru":  # GRU: b_hn sits inside r * (W_hn h + b_hn)
                b_ih, b_hh = b_ih + b_hh, None
            w_hr = p[-1] if kind == "lstm" and per in (3, 5) else None
            steps = F.linear(out, p[0], b_ih).unbind(0)
            h, c = h0[k], None if c0 is None else c0[k]
            hs: list[torch.Tensor] = [h] * len(steps)
            for t in (range(len(steps)) if d == 0 else reversed(range(len(steps)))):
                h, c = _step(kind, steps[t], h, c, p[1], b_hh, w_hr)
                hs[t] = h
            outs.append(torch.stack(hs))
            h_n.append(h)
            c_n.append(c)
        out = torch.cat(outs, -1) if dirs == 2 else outs[0]
        if train and dropout > 0 and layer < num_layers - 1:
            out = F.dropout(out, dropout, True)
    out = out.transpose(0, 1) if batch_first else out
    return (out, torch.stack(h_n), torch.stack(c_n)) if kind == "lstm" else (out, torch.stack(h_n))


def _weight_norm(v: torch.Tensor, g: torch.Tensor, dim: int = 0) -> torch.Tensor:
    """``torch._weight_norm`` as its composite: ``v * (g / ||v||)``, the norm over every dimension but ``dim``."""
    return v * (g / torch.norm_except_dim(v, 2, dim))


def _renormed(weight: torch.Tensor, max_norm: float | None, norm_type: float) -> torch.Tensor:
    """The rows of ``weight`` scaled to norm at most ``max_norm`` (``embedding_renorm_``'s values, out of place)."""
    if max_norm is None:
        return weight
    norms = torch.linalg.vector_norm(weight, norm_type, dim=1, keepdim=True)
    return weight * torch.where(norms > max_norm, max_norm / (norms + 1e-7), torch.ones_like(norms))


def _embedding(input: torch.Tensor, weight: torch.Tensor, padding_idx: int | None = None,
               max_norm: float | None = None, norm_type: float = 2.0, scale_grad_by_freq: bool = False,
               sparse: bool = False) -> torch.Tensor:
    """``F.embedding`` as a dense lookup of the renormed rows (module docstring)."""
    return F.embedding(input, _renormed(weight, max_norm, norm_type), padding_idx, None, norm_type,
                       scale_grad_by_freq, False)


def _embedding_bag(input: torch.Tensor, weight: torch.Tensor, offsets: torch.Tensor | None = None,
                   max_norm: float | None = None, norm_type: float = 2, scale_grad_by_freq: bool = False,
                   mode: str = "mean", sparse: bool = False, per_sample_weights: torch.Tensor | None = None,
                   include_last_offset: bool = False, padding_idx: int | None = None) -> torch.Tensor:
    """``F.embedding_bag`` from differentiable pieces (module docstring); an empty bag gives zeros."""
    if input.dim() == 2:
        bags, length = input.shape
        bag = torch.arange(bags, device=input.device).repeat_interleave(length)
        idx = input.reshape(-1)
        if per_sample_weights is not None:
            per_sample_weights = per_sample_weights.reshape(-1)
    else:
        starts = offsets[:-1] if include_last_offset else offsets
        bags = len(starts)
        ends = torch.cat([starts[1:], starts.new_tensor([len(input)])]) if not include_last_offset else offsets[1:]
        bag = torch.arange(bags, device=input.device).repeat_interleave(ends - starts)
        idx = input[: len(bag)]
    if padding_idx is not None and padding_idx < 0:
        padding_idx += weight.shape[0]
    rows = F.embedding(idx, _renormed(weight, max_norm, norm_type))
    keep = (idx != padding_idx) if padding_idx is not None else torch.ones_like(idx, dtype=torch.bool)
    if per_sample_weights is not None:
        rows = rows * per_sample_weights[: len(bag), None]
    if mode == "max":
        rows = rows.masked_fill(~keep[:, None], float("-inf"))
        out = rows.new_full((bags, weight.shape[1]), float("-inf")).scatter_reduce(
            0, bag[:, None].expand_as(rows), rows, "amax", include_self=True)
        return out.masked_fill(torch.isinf(out), 0.0)
    rows = rows * keep[:, None].to(rows.dtype)
    out = rows.new_zeros(bags, weight.shape[1]).index_add(0, bag, rows)
    if mode == "mean":
        count = rows.new_zeros(bags).index_add(0, bag, keep.to(rows.dtype))
        out = out / count.clamp_min(1)[:, None]
    return out


_EMBEDDINGS = {F.embedding: _embedding, F.embedding_bag: _embedding_bag}


def reroutes(model: nn.Module) -> frozenset[str]:
    """What ``model`` needs rerouted: ``"convolutions"`` if it holds a ``torch.nn`` convolution, ``"weight_norm"``
    if a module is weight-normalized (parametrization or the older hook), ``"recurrent"`` if it holds an
    ``nn.LSTM``, ``nn.GRU`` or ``nn.RNN``, ``"embeddings"`` if an ``nn.EmbeddingBag`` or an ``nn.Embedding`` with
    ``sparse`` or ``max_norm``. Empty for the rest, which then pay nothing for the per-call dispatch
    of :func:`rerouted`."""
    found = set()
    hook = getattr(sys.modules.get("torch.nn.utils.weight_norm"), "WeightNorm", ())
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            found.add("convolutions")
        if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)):
            found.add("recurrent")
        if isinstance(m, nn.EmbeddingBag) or (isinstance(m, nn.Embedding) and (m.sparse or m.max_norm is not None)):
            found.add("embeddings")
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


__all__ = ["REROUTES", "rerouted", "reroutes", "unrolled_recurrent"]
