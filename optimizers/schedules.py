"""Learning-rate schedules as multiplicative factors of the base lr, per optimizer step.

``factor(t)`` for step ``t`` (0-based) of ``total``, after ``warmup`` linear
warm-up steps from ``1/warmup`` to 1:

* ``constant``: 1
* ``cosine``:   min_factor + (1 - min_factor) (1 + cos(pi s)) / 2,  s = (t - warmup)/(total - warmup)
* ``step``:     gamma ** (number of milestones <= t)   (milestones as fractions of ``total``)
* ``linear``:   1 - (1 - min_factor) s
"""
from __future__ import annotations

import bisect
import math
from typing import Callable, Sequence

SCHEDULES = ("constant", "cosine", "step", "linear")


def lr_factor(
    name: str,
    total: int,
    *,
    warmup: int = 0,
    min_factor: float = 0.0,
    milestones: Sequence[float] = (0.5, 0.75),
    gamma: float = 0.1,
) -> Callable[[int], float]:
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; known: {', '.join(SCHEDULES)}")
    if total < 1:
        raise ValueError("a schedule needs at least one step")
    steps = sorted(int(round(m * total)) for m in milestones)

    def factor(t: int) -> float:
        if t < warmup:
            return (t + 1) / warmup
        s = min(1.0, (t - warmup) / max(1, total - warmup))
        if name == "cosine":
            return min_factor + (1 - min_factor) * 0.5 * (1 + math.cos(math.pi * s))
        if name == "linear":
            return 1 - (1 - min_factor) * s
        if name == "step":
            return gamma ** bisect.bisect_right(steps, t)
        return 1.0

    return factor
