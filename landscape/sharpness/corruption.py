"""Parameter-corruption robustness (GA-SAM Sec. 5.3 and Table 4; Zhang et al. 2021).

For corruptions ``a`` in ``S = {a : ||T^{-1} a||_p <= eps}`` (p = 2 or inf, ``T`` optional) and each ``eps``:

* random corruption: ``a = T u`` with ``u`` a Gaussian direction rescaled to ``||u||_p = eps`` (the ball's
  boundary), ``draws`` seeded draws, mean and standard deviation of loss and accuracy;
* adversarial corruption, the multi-step attack: ``a_k = Pi_S(a_{k-1} + u_k)``,
  ``u_k = argmax_{||T^{-1} u||_p <= eta} u . grad L(w + a_{k-1})`` (GA-SAM eqs. 15-18), keeping the corruption
  with the largest loss on the attacked objective. The step sizes are Auto-PGD's by default (the shared
  :func:`~landscape.sharpness.common.projected_ascent`, which converges as the steps grow); GA-SAM's own
  fixed ``eta = 1.5 eps / K`` is ``schedule="constant"``. Each adversarial row carries the attack's
  ``trace``, ``converged`` flag and ``start``.

Reported: ``L(w + a)`` and accuracy, and their changes against the clean model (``loss_increase``,
``acc_drop = acc(w) - acc(w + a)``), on the attacked objective and on any further ``evaluate_on`` ones
(e.g. the test split, as in GA-SAM's table).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from landscape.geometry import Geometry, Region
from landscape.progress import progress_bar
from landscape.sharpness.common import MEMORY, Cost, default_step_size
from landscape.sharpness.worst_case import maximize


@dataclass
class CorruptionResult:
    """``clean[split] = {loss, acc}``; ``rows``: one per (p, eps, kind) with, per split, ``loss``, ``acc``,
    ``loss_increase``, ``acc_drop`` (and ``loss_std`` / ``acc_std`` over the random draws)."""

    clean: dict[str, dict[str, float | None]]
    rows: list[dict[str, Any]]
    normalization: str
    eta: float
    exclude: str
    draws: int
    steps: int
    restarts: int
    schedule: str
    step_size: float
    seed: int
    work: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def _summary(r: Mapping[str, Any], clean: Mapping[str, float | None]) -> dict[str, float | None]:
    loss = np.asarray(r["loss"], dtype=np.float64)
    out: dict[str, float | None] = {"loss": float(loss.mean()), "loss_increase": float(loss.mean()) - clean["loss"]}
    if len(loss) > 1:
        out["loss_std"] = float(loss.std())
    if r.get("acc") is None or clean["acc"] is None:
        out["acc"] = out["acc_drop"] = None
    else:
        acc = np.asarray(r["acc"], dtype=np.float64)
        out["acc"], out["acc_drop"] = float(acc.mean()), clean["acc"] - float(acc.mean())
        if len(acc) > 1:
            out["acc_std"] = float(acc.std())
    return out


def corruption_robustness(
    objective: Any,
    eps: Mapping[str, Sequence[float]] | Sequence[float],
    *,
    normalization: str = "none",
    eta: float = 0.0,
    exclude: str = "none",
    draws: int = 5,
    steps: int = 20,
    restarts: int = 0,
    schedule: str = "apgd",
    step_size: float | None = None,
    seed: int = 0,
    evaluate_on: Mapping[str, Any] | None = None,
    name: str = "objective",
    memory: int = MEMORY,
    progress: bool = False,
) -> CorruptionResult:
    """Loss / accuracy under random and adversarial corruptions of each radius in ``eps``:
    ``{"2": [...], "inf": [...]}`` (a plain list means L2). ``draws``: random corruptions per radius (0: none);
    ``steps``: attack steps (0: no adversarial corruption), ``restarts`` extra random-start attacks;
    ``schedule`` / ``step_size`` / ``memory``: the ascent's (:func:`~landscape.sharpness.common.projected_ascent`).
    ``evaluate_on``: further objectives (same parameters) to report on, by name; ``name`` labels ``objective``."""
    if not isinstance(eps, Mapping):
        eps = {"2": list(eps)}
    unknown = set(eps) - {"2", "inf"}
    if unknown:
        raise ValueError(f"corruption norms must be '2' or 'inf', got {sorted(unknown)}")
    frac = default_step_size(steps, schedule) if step_size is None else float(step_size)
    targets = {name: objective, **dict(evaluate_on or {})}
    work = Cost(*targets.values())
    clean = {k: o.evaluate() for k, o in targets.items()}
    w0 = objective.w0
    rows: list[dict[str, Any]] = []
    total = sum(len(v) for v in eps.values())
    with progress_bar("corruption", total, progress) as advance:
        for p_name, radii in eps.items():
            geometry = Geometry(p=math.inf if p_name == "inf" else 2.0, normalization=normalization, eta=eta,
                                exclude=exclude)
            region = Region.of(geometry, objective)
            for i, radius in enumerate(radii):
                if radius <= 0:
                    raise ValueError(f"corruption radii must be > 0, got {radius}")
                base = {"p": p_name, "eps": float(radius)}
                if draws > 0:
                    gen = torch.Generator().manual_seed(seed + i)
                    A = torch.stack([region.sample(radius, "boundary", gen) for _ in range(draws)])
                    row = {**base, "kind": "random"}
                    for k, o in targets.items():
                        row[k] = _summary(o.evaluate_many(w0[None] + A), clean[k])
                    rows.append(row)
                if steps > 0:
                    loss0, r, norm = maximize(objective, radius, geometry, seed=seed + i, steps=steps,
                                              restarts=restarts, schedule=schedule, step_size=frac, memory=memory)
                    a = r.perturbation
                    row = {**base, "kind": "adversarial", "corruption_norm": norm, "converged": r.converged,
                           "relative_change": r.relative_change, "start": r.start,
                           "trace": [[v - loss0 for v in run] for run in r.trace]}
                    for k, o in targets.items():
                        r = o.evaluate(w0 + a)
                        row[k] = _summary({"loss": [r["loss"]], "acc": None if r["acc"] is None else [r["acc"]]},
                                          clean[k])
                    rows.append(row)
                advance(1)
    return CorruptionResult(clean=clean, rows=rows, normalization=normalization, eta=eta, exclude=exclude,
                            draws=draws, steps=steps, restarts=restarts, schedule=schedule, step_size=frac,
                            seed=seed, work=work.to_dict())


__all__ = ["CorruptionResult", "corruption_robustness"]
