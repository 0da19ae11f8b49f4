"""Which parameters an objective moves, and the model mode it evaluates in."""
from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

ParamSpec = None | str | Sequence[str] | Callable[[str, torch.Tensor], bool]
"""Which parameters form ``w``: ``None``/``"all"`` (every trainable one),
``"weights"`` (no biases, no normalization-layer parameters: PyTorch's norms and any module whose class name
contains ``Norm`` with only 1-D parameters, such as HuggingFace's ``LlamaRMSNorm``), a regular
expression searched in the parameter name, a list of exact names, or
``f(name, param) -> bool``."""

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm, nn.RMSNorm)


def is_norm_layer(m: nn.Module) -> bool:
    """A normalization layer: one of PyTorch's, or a module named ``*Norm*`` whose own parameters are all 1-D
    (per-feature scales and shifts)."""
    own = list(m.parameters(recurse=False))
    return isinstance(m, _NORM_LAYERS) or (
        "norm" in type(m).__name__.lower() and bool(own) and all(p.dim() == 1 for p in own))


def select_parameters(model: nn.Module, spec: ParamSpec = None) -> list[str]:
    """Names of the trainable parameters chosen by ``spec`` (see :data:`ParamSpec`)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    if spec is None or spec == "all":
        chosen = [n for n, _ in named]
    elif spec == "weights":
        norm = {f"{m_name}.{p_name}" if m_name else p_name
                for m_name, m in model.named_modules() if is_norm_layer(m)
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
            raise ValueError(f"unknown parameter(s) {unknown}{_tied_hint(model, unknown)}; the model has "
                             f"{sorted(names)}")
        chosen = [n for n, _ in named if n in set(spec)]
    if not chosen:
        aliases = [n for n, _ in model.named_parameters(remove_duplicate=False)
                   if isinstance(spec, str) and spec != "weights" and re.search(spec, n)]
        raise ValueError(f"parameter filter {spec!r} selects no trainable parameter{_tied_hint(model, aliases)}")
    return chosen


def _tied_hint(model: nn.Module, names: Sequence[str]) -> str:
    """``" (x is y, tied: ...)"`` for names that are second names of a tied parameter."""
    first = {id(p): n for n, p in reversed(list(model.named_parameters(remove_duplicate=False)))}
    tied = [f"{n} is {first[id(p)]}" for n, p in model.named_parameters(remove_duplicate=False)
            if n in names and first[id(p)] != n]
    return f" ({', '.join(tied)}: a tied parameter goes by its first name)" if tied else ""


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


__all__ = ["ParamSpec", "eval_mode", "select_parameters"]
