"""Which parameters an objective moves, and the model mode it evaluates in."""
from __future__ import annotations

import contextlib
import re
from typing import Callable, Iterator, Sequence

import torch
import torch.nn as nn

ParamSpec = None | str | Sequence[str] | Callable[[str, torch.Tensor], bool]
"""Which parameters form ``w``: ``None``/``"all"`` (every trainable one),
``"weights"`` (no biases, no normalization-layer parameters), a regular
expression searched in the parameter name, a list of exact names, or
``f(name, param) -> bool``."""

_NORM_LAYERS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm, nn.LocalResponseNorm)


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
