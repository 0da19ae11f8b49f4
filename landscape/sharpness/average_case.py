"""Average-case (adaptive) sharpness: the mean loss increase under random perturbations in the ball.

    S^avg_rho(w) = E_a [ L(w + T_w a) ] - L(w),   a ~ D_rho

with ``D_rho`` one of :meth:`Geometry.sample`'s distributions: ``gaussian`` (``a ~ N(0, rho^2 I)``, the
PAC-Bayes-style noise; Keskar / Jiang et al.), ``uniform`` (uniform in ``{||a||_p <= rho}``) or ``boundary``
(a random direction with ``||a||_p = rho``). Estimated by Monte Carlo over ``samples`` seeded draws, pushed
through the model ``chunk_size`` points at a time (``evaluate_many``); the standard error is reported.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from landscape.geometry import Geometry, Region
from landscape.progress import progress_bar
from landscape.sharpness.common import Cost, mean_std, per_batch


@dataclass
class AverageSharpnessResult:
    """``sharpness``: ``mean_j L(w + e_j) - L(w)`` (mean over mini-batches in per-batch mode); ``stderr``: the
    Monte-Carlo standard error ``s / sqrt(n)``, ``s`` the sample standard deviation of the ``n`` perturbed losses
    (``n - 1`` in its denominator; full-data mode, ``n >= 2``); ``std``: spread of the perturbed losses
    (full-data, ``n`` in the denominator) or of the per-batch values; ``acc`` / ``perturbed_acc``: accuracy at
    ``w`` and its mean under the noise."""

    rho: float
    sharpness: float
    loss: float
    perturbed_loss: float
    std: float
    stderr: float | None
    samples: int
    distribution: str
    geometry: dict[str, Any]
    seed: int
    work: dict[str, int]
    acc: float | None = None
    perturbed_acc: float | None = None
    batch_size: int | None = None
    num_batches: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def draw_perturbations(region: Region, radius: float, count: int, distribution: str, seed: int,
                       chunk_size: int = 16):
    """Yield ``(k, P)`` blocks of ``count`` perturbations ``e_j = T a_j`` from one generator seeded by ``seed``
    (the same draws whatever ``chunk_size`` is)."""
    gen = torch.Generator().manual_seed(seed)
    done = 0
    while done < count:
        k = min(chunk_size, count - done)
        yield torch.stack([region.sample(radius, distribution, gen) for _ in range(k)])
        done += k


def _average(obj: Any, rho: float, geometry: Geometry, samples: int, distribution: str, seed: int,
             chunk_size: int, advance: Any) -> tuple[dict[str, float | None], np.ndarray, np.ndarray | None]:
    base = obj.evaluate()
    region = Region.of(geometry, obj)
    losses, accs = [], []
    for E in draw_perturbations(region, rho, samples, distribution, seed, chunk_size):
        r = obj.evaluate_many(obj.w0[None] + E, chunk_size=chunk_size)
        losses.append(r["loss"])
        if r["acc"] is not None:
            accs.append(r["acc"])
        if advance is not None:
            advance(len(E))
    return base, np.concatenate(losses), np.concatenate(accs) if accs else None


def average_sharpness(
    objective: Any,
    rho: float,
    *,
    geometry: Geometry | None = None,
    samples: int = 16,
    distribution: str = "gaussian",
    seed: int = 0,
    batch_size: int | None = None,
    max_batches: int | None = None,
    chunk_size: int = 16,
    progress: bool = False,
) -> AverageSharpnessResult:
    """``E_a[L(w + T a)] - L(w)`` over ``samples`` draws ``a ~ D_rho`` (``distribution``: ``gaussian``,
    ``uniform`` or ``boundary``), seeded by ``seed`` (reproducible; the same draws at every ``rho``).
    ``batch_size``: the per-batch mode, the same draws on each of at most ``max_batches`` mini-batches."""
    geometry = geometry or Geometry()
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    if rho <= 0:
        raise ValueError(f"rho must be > 0, got {rho}")
    settings = dict(rho=float(rho), samples=samples, distribution=distribution, geometry=geometry.to_dict(), seed=seed)
    work = Cost(objective)
    if batch_size is None:
        with progress_bar(f"average sharpness rho={rho:g}", samples, progress) as advance:
            base, losses, accs = _average(objective, rho, geometry, samples, distribution, seed, chunk_size, advance)
        stderr = float(losses.std(ddof=1)) / math.sqrt(samples) if samples > 1 else None
        return AverageSharpnessResult(
            sharpness=float(losses.mean()) - base["loss"], loss=base["loss"], perturbed_loss=float(losses.mean()),
            std=float(losses.std()), stderr=stderr, work=work.to_dict(),
            acc=base["acc"], perturbed_acc=None if accs is None else float(accs.mean()), **settings)

    rows: list[tuple[float, float]] = []

    def one(batch: Any) -> float:
        work.add(batch)
        base, losses, _ = _average(batch, rho, geometry, samples, distribution, seed, chunk_size, None)
        rows.append((base["loss"], float(losses.mean())))
        advance(1)
        return float(losses.mean()) - base["loss"]

    with progress_bar(f"{batch_size}-average sharpness rho={rho:g}", max_batches, progress) as advance:
        values, _ = per_batch(objective, batch_size, max_batches, seed, one)
    mean, std, n = mean_std(values, objective)
    return AverageSharpnessResult(
        sharpness=mean, loss=mean_std([r[0] for r in rows], objective)[0],
        perturbed_loss=mean_std([r[1] for r in rows], objective)[0], std=std, stderr=None, work=work.to_dict(),
        batch_size=batch_size, num_batches=n, **settings)


__all__ = ["AverageSharpnessResult", "average_sharpness", "draw_perturbations"]
