"""Curvature-vector products of one micro-batch, for :class:`~landscape.objective.Objective`.

Each function takes the objective (for its functional call and loss protocol), a point ``w``, a batch and a
``(k, P)`` block ``V``, and returns ``(sum over the batch of the product rows, count)``; the objective adds
the batches up and divides by the total count (rows for the Fisher):

* Hessian, reverse mode:  ``H v = d/dw (grad total(w) . v)`` (double backward; one forward and first backward
  for the whole block);
* Hessian, forward mode:  ``H v = jvp(grad total, (w,), (v,))``, ``vmap``-ed over the block;
* GGN:  ``J^T H_out J v`` with ``J v`` by the double-vjp trick, ``H_out`` by double backward through the
  loss of the output, ``J^T`` by a vjp;
* empirical Fisher:  ``sum_i g_i (g_i . v) = J_l^T (J_l v)`` with ``J_l`` the Jacobian of the per-sample
  losses, without forming any ``g_i``.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch.func import grad as func_grad, jvp, vmap

from landscape.objective.double_backward import rerouted


@contextlib.contextmanager
def second_order() -> Iterator[None]:
    """``scaled_dot_product_attention`` on its math kernel: the fused ones (flash, memory-efficient) have no
    second derivative (nor forward-mode rule), so transformers would fail every curvature product."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.MATH]):
        yield


@contextlib.contextmanager
def exact_attention() -> Iterator[None]:
    """PyTorch's fast path of ``nn.MultiheadAttention`` / ``nn.TransformerEncoder`` off: without gradients it runs
    on nested tensors that zero the padded positions' outputs, a different function from the one autograd
    differentiates (so a loss, its gradient and a surface's centre would disagree)."""
    was = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        torch.backends.mha.set_fastpath_enabled(was)


def grad_of(out: torch.Tensor, inp: torch.Tensor, cotangent: torch.Tensor, retain: bool) -> torch.Tensor:
    """The vector-Jacobian product ``cotangent^T d out / d inp``."""
    (g,) = torch.autograd.grad(out, inp, cotangent, retain_graph=retain, allow_unused=True, materialize_grads=True)
    return g


def grad_of_rows(out: torch.Tensor, inp: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """The vector-Jacobian products ``V_k^T d out / d inp`` of a block, one backward per row; the graph is
    kept."""
    return torch.stack([grad_of(out, inp, v, retain=True) for v in V])


def batched_grad(out: torch.Tensor, inp: torch.Tensor, V: torch.Tensor) -> torch.Tensor:
    """The vector-Jacobian products ``V_k^T d out / d inp`` of a block, in one ``vmap``-ed backward
    (``is_grads_batched``); the graph is kept."""
    (g,) = torch.autograd.grad(out, inp, V, retain_graph=True, is_grads_batched=True, allow_unused=True,
                               materialize_grads=True)
    return g


def gradient_graph(obj: Any, batch: Any, index: int = 0, w: torch.Tensor | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """``(leaf, grad total(leaf), count)`` at ``w`` (default ``w0``) with the gradient's graph kept."""
    leaf = (obj.w0 if w is None else w).detach().requires_grad_(True)
    with torch.enable_grad(), second_order(), rerouted(obj._reroutes):
        v = obj.value(leaf, batch, index)
        g = gradient(v.total, leaf, create_graph=True)
    return leaf, g, v.count


def gradient(total: torch.Tensor, leaf: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
    """``d total / d leaf``; zero where ``total`` does not depend on ``leaf`` (parameters the loss never uses)."""
    if not total.requires_grad:
        return torch.zeros_like(leaf)
    (g,) = torch.autograd.grad(total, leaf, create_graph=create_graph, allow_unused=True, materialize_grads=True)
    return g


def graph_stats(out: torch.Tensor) -> tuple[int, int]:
    """``(bytes, nodes)`` of the autograd graph behind ``out``: the bytes of the tensors its nodes saved (each
    storage once; what keeping the graph costs) and the number of nodes. Read from the nodes' ``_saved_*``
    attributes (saved-tensor hooks would make every saved output a reference cycle that is never freed)."""
    if out.grad_fn is None:
        return 0, 0
    seen_nodes, storages, total = set(), set(), 0
    stack = [out.grad_fn]
    while stack:
        node = stack.pop()
        if node is None or node in seen_nodes:
            continue
        seen_nodes.add(node)
        for name in dir(node):
            if not name.startswith("_saved_"):
                continue
            try:
                value = getattr(node, name)
            except RuntimeError:  # freed buffers
                continue
            for t in value if isinstance(value, (tuple, list)) else (value,):
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in storages:
                    storages.add(t.untyped_storage().data_ptr())
                    total += t.untyped_storage().nbytes()
        stack.extend(fn for fn, _ in node.next_functions)
    return total, len(seen_nodes)


def graph_bytes(out: torch.Tensor) -> int:
    """Bytes of the tensors saved in the autograd graph behind ``out`` (:func:`graph_stats`)."""
    return graph_stats(out)[0]


def hvp_reverse(obj: Any, w: torch.Tensor, batch: Any, V: torch.Tensor, index: int = 0) -> tuple[torch.Tensor, Any]:
    """Double backward (module docstring)."""
    leaf, g, count = gradient_graph(obj, batch, index, w)
    if not g.requires_grad:  # loss linear in w
        return torch.zeros_like(V), count
    with torch.enable_grad():
        return torch.stack([grad_of(g, leaf, v, retain=i < len(V) - 1) for i, v in enumerate(V)]), count


def hvp_forward(obj: Any, w: torch.Tensor, batch: Any, V: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """Forward over reverse (module docstring)."""
    def total(u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        v = obj.call(obj.loss_spec.value, u, batch)
        return v.total, obj._scalar(v.count)

    g = func_grad(total, has_aux=True)
    with second_order(), rerouted(obj._reroutes - {"convolutions"}):  # a custom Function has no forward mode
        if len(V) == 1:
            _, hv, count = jvp(g, (w,), (V[0],), has_aux=True)
            return hv[None], count
        hv, counts = vmap(lambda v: jvp(g, (w,), (v,), has_aux=True)[1:])(V)
    return hv, counts[0]


def ggn(obj: Any, w: torch.Tensor, batch: Any, V: torch.Tensor) -> tuple[torch.Tensor, Any]:
    """``J^T H_out J`` (module docstring); the graph is built once for the block."""
    leaf = w.detach().requires_grad_(True)
    with torch.enable_grad(), second_order(), rerouted(obj._reroutes):
        out = obj.call(obj.loss_spec.output, leaf, batch)
        total, count = obj.loss_spec.output_total(out, batch)
        if not out.requires_grad:  # the output does not depend on the chosen parameters: J = 0
            return torch.zeros_like(V), count
        (g_out,) = torch.autograd.grad(total, out, create_graph=True)
        u = torch.zeros_like(out, requires_grad=True)
        (jtu,) = torch.autograd.grad(out, leaf, u, create_graph=True)
        rows = []
        for v in V:
            jv = grad_of(jtu, u, v, retain=True)
            hjv = grad_of(g_out, out, jv, retain=True) if g_out.requires_grad else torch.zeros_like(out)
            rows.append(grad_of(out, leaf, hjv, retain=True))
        return torch.stack(rows), count


def fisher(obj: Any, w: torch.Tensor, batch: Any, V: torch.Tensor) -> tuple[torch.Tensor, int]:
    """``J_l^T (J_l v)`` summed over the batch's samples (module docstring); the count is the samples."""
    leaf = w.detach().requires_grad_(True)
    with torch.enable_grad(), second_order(), rerouted(obj._reroutes):
        losses = obj.call(obj.loss_spec.per_sample, leaf, batch)
        if not losses.requires_grad:
            return torch.zeros_like(V), len(losses)
        u = torch.zeros_like(losses, requires_grad=True)
        (jtu,) = torch.autograd.grad(losses, leaf, u, create_graph=True)
        return torch.stack([grad_of(losses, leaf, grad_of(jtu, u, v, retain=True), retain=True) for v in V]), \
            len(losses)


__all__ = ["batched_grad", "exact_attention", "fisher", "ggn", "grad_of", "grad_of_rows", "gradient", "gradient_graph",
           "graph_bytes", "graph_stats", "hvp_forward", "hvp_reverse", "second_order"]
