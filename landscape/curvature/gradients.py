"""Gradient norms, globally and per parameter tensor or layer (GA-SAM, Fig. 5 and Prop. 3).

``batch_size=None``: norms of the full-data gradient ``g = grad L(w)``.
``batch_size=B``: GA-SAM's expectation over mini-batches,
``E_b ||g_b||`` with ``g_b`` the gradient of the mean loss of ``B`` consecutive
rows (``B=1``: per-sample gradients, ``G = E_z ||grad l(w; z)||``); a trailing
group of fewer than ``B`` rows is left out. Every norm comes with its
"gradient strength" ``norm / sqrt(n)`` (``n`` = parameters in the group),
GA-SAM's ``G_(i) = E ||g_(i)|| / sqrt(n_(i))``.

Groups (``by``): ``tensor`` (each named parameter), ``module`` (the parameters of
one module together: ``net.0.weight`` + ``net.0.bias`` -> ``net.0``), ``layer``
(as ``module``, but the stacked layers of a PyTorch RNN apart: ``lstm.weight_ih_l1``
+ ``lstm.bias_hh_l1`` -> ``lstm.l1``), or any function of the parameter name.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

import torch

from landscape.distributed import accumulation_dtype
from landscape.objective import Objective


@dataclass
class GradientNorms:
    """``norm`` / ``strength`` of the whole gradient and ``groups[name] = {"norm", "strength", "numel"}``."""

    norm: float
    strength: float
    groups: dict[str, dict[str, float]]
    batch_size: int | None
    num_batches: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"norm": self.norm, "strength": self.strength, "batch_size": self.batch_size,
                "num_batches": self.num_batches, "groups": self.groups}


GROUPINGS = ("tensor", "module", "layer")
_RNN_LAYER = re.compile(r"^(?:weight|bias)_(?:ih|hh|hr)_l(\d+)(_reverse)?$")


def parameter_group(name: str, by: str | Callable[[str], str]) -> str:
    """The group of parameter ``name`` under ``by`` (module docstring)."""
    if callable(by):
        return str(by(name))
    if by not in GROUPINGS:
        raise ValueError(f"by must be one of {GROUPINGS} or a function, got {by!r}")
    if by == "tensor":
        return name
    module, _, leaf = name.rpartition(".")
    m = _RNN_LAYER.match(leaf) if by == "layer" else None
    if m:
        layer = f"l{m.group(1)}{m.group(2) or ''}"
        return f"{module}.{layer}" if module else layer
    return module or name


def gradient_norms(objective: Objective, *, batch_size: int | None = None,
                   by: str | Callable[[str], str] = "tensor", w: torch.Tensor | None = None) -> GradientNorms:
    """Gradient norms at ``w`` (default the base point) per group ``by`` (module docstring); groups keep
    the order of their first parameter."""
    names = [parameter_group(n, by) for n in objective.names]
    groups = list(dict.fromkeys(names))
    acc = accumulation_dtype(objective.device)  # float64, float32 on MPS
    member = torch.zeros(len(names), len(groups) + 1, dtype=acc, device=objective.device)
    for i, n in enumerate(names):
        member[i, groups.index(n)] = 1.0
    member[:, -1] = 1.0  # last column: the whole vector
    numel = torch.tensor(objective.sizes, dtype=acc, device=objective.device) @ member

    def group_norms(G: torch.Tensor) -> torch.Tensor:  # (c, P) -> (c, groups + 1)
        sq = torch.stack([t.to(acc).pow(2).sum(1) for t in G.split(objective.sizes, dim=1)], dim=1)
        return (sq @ member).sqrt()

    if batch_size is None:
        norms, count = group_norms(objective.grad(w)[None])[0], None
    else:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        sums = torch.zeros(len(groups) + 2, dtype=acc, device=objective.device)
        for G in objective.group_gradients(batch_size, w):
            sums[:-1] += group_norms(G).sum(0)
            sums[-1] += len(G)
        objective.reduce_sum(sums)
        count = int(sums[-1])
        if count == 0:
            raise ValueError(f"no complete mini-batch of {batch_size} rows in {objective.num_samples} samples")
        norms = sums[:-1] / count
    strength = norms / numel.sqrt()
    return GradientNorms(
        norm=float(norms[-1]), strength=float(strength[-1]), batch_size=batch_size, num_batches=count,
        groups={g: {"norm": float(norms[i]), "strength": float(strength[i]), "numel": int(numel[i])}
                for i, g in enumerate(groups)})


__all__ = ["GROUPINGS", "GradientNorms", "gradient_norms", "parameter_group"]
