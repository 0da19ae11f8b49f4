"""Curvature tracked during training: lambda_max, trace and gradient strength every N steps.

Every ``every`` optimizer steps (and at step 0 and the last step) :class:`CurvatureTracker` builds an
:class:`~landscape.objective.Objective` on a fixed seeded subset of the training data at the current
weights and appends one JSON row to ``STEM.curvature.jsonl`` beside the checkpoint:

* ``lambda_max`` (and ``eigenvalues``, the top ``top_k``) of the Hessian of the subset loss, by Lanczos
  (:func:`landscape.curvature.lanczos.lanczos`) started from the previous measurement's top eigenvector
  plus ``warm_mix`` times a fresh seeded random unit vector (so a new top direction is still found); a
  measurement whose curvature barely moved then converges in a few Hessian-vector products;
* ``loss``/``acc`` on the subset, the gradient norm and GA-SAM's gradient strength ``||g|| / sqrt(n)``,
  per module in ``layers`` (:func:`landscape.curvature.gradients.gradient_norms`; ``grad_batch=B``:
  ``E_b ||g_b||`` over mini-batches of ``B`` rows);
* optionally the Hutch++ trace (``trace_samples`` products, :func:`landscape.curvature.trace.hutchpp`)
  and the worst-case sharpness ``max_{||e|| <= rho} L(w + e) - L(w)`` at ``sharpness_rho``
  (``sharpness_steps`` projected-ascent gradients, :func:`landscape.sharpness.worst_case_sharpness`);
* ``lr`` and the stability threshold of the base optimizer at that lr (below), the products spent
  (``hvps``; ``lanczos_hvps`` of them for the eigenvalues; data ``passes``), the wall time (``seconds``)
  and the ``interval`` in force.

Stability thresholds (Cohen et al., 2021, and its appendix for momentum): gradient descent on a quadratic
with curvature ``lambda`` is stable iff ``lambda < 2 / lr``; heavy-ball momentum ``beta``:
``(2 + 2 beta) / lr``; Nesterov: ``(2 + 2 beta) / ((1 + 2 beta) lr)``. SGD's (coupled, L2) weight decay
``wd`` adds ``wd`` to every eigenvalue, so the threshold for the loss Hessian is lowered by ``wd``. AdamW
(preconditioned) has no threshold on the raw Hessian: ``threshold`` is then null. ``threshold_gd`` is
always ``2 / lr``.

The measurement leaves training untouched: the objective evaluates the model functionally in eval mode
(no BatchNorm statistic moves, dropout is off, parameters and ``.grad`` are not written) and the global
RNG states are forked around it, so a tracked run ends bit-identical to an untracked one. Rows are
appended and flushed one by one; after a kill the trainer keeps those up to the resume point, and the
tracker's own state (next step, warm-start vector, time totals) travels in the resume state, so a
resumed run neither loses nor duplicates rows.

Cost: ``budget=b`` bounds the tracker's share of wall time: after each measurement the interval becomes
``max(every, ceil(c (1 - b) / (b t)))`` for ``c`` the mean seconds per measurement and ``t`` the mean
seconds per training step so far (summed over DDP ranks, so every rank picks the same steps).
"""
from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from landscape import distributed as D
from landscape.objective import Objective, subset_indices

TRACK_VERSION = 1


@dataclass
class TrackConfig:
    """What to measure and how often (``landscape train --track KEY=VALUE ...``)."""

    every: int = 50  # steps between measurements (the smallest interval under a budget)
    budget: float | None = None  # most share of wall time the tracker may take (adapts the interval)
    subset: int = 512  # rows of the training data, a fixed seeded subset
    seed: int = 0  # the subset and the random start vectors
    top_k: int = 1  # Hessian eigenvalues per measurement
    tol: float = 1e-3  # Lanczos relative residual (the eigenvalue error is about its square)
    warm: bool = True  # start Lanczos from the previous top eigenvector(s)
    warm_mix: float = 0.1  # weight of the fresh random vector mixed into a warm start
    max_hvps: int = 200  # cap on Hessian-vector products per eigenvalue measurement
    trace_samples: int = 0  # Hutch++ products for the trace (0: no trace)
    sharpness_rho: float | None = None  # worst-case sharpness at this L2 radius (None: not measured)
    sharpness_steps: int = 5  # its projected-ascent steps (one gradient each)
    grad_batch: int | None = None  # None: full-subset gradient; B: E ||g_b|| over B-row batches (GA-SAM)
    layers: bool = True  # per-module gradient strengths
    batch_size: int = 512  # micro-batch of the measurement (memory only)
    dtype: str | None = None  # float32 / float64 (default: the model's)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):  # --track KEY=VALUE gives whatever the value parses as
            value, kind = getattr(self, f.name), str(f.type)
            if value is None and "None" in kind or kind == "bool" or kind.startswith("str"):
                continue
            if kind.startswith("int") and (isinstance(value, bool) or not isinstance(value, int)):
                raise ValueError(f"track {f.name} must be an integer, got {value!r}")
            if kind.startswith("float") and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise ValueError(f"track {f.name} must be a number, got {value!r}")
        if self.every < 1:
            raise ValueError(f"track every must be >= 1, got {self.every}")
        if self.budget is not None and not 0 < self.budget < 1:
            raise ValueError(f"track budget must be in (0, 1), got {self.budget}")
        if self.subset < 1 or self.top_k < 1 or self.batch_size < 1 or self.max_hvps < 2:
            raise ValueError("track subset, top_k, batch_size must be >= 1 and max_hvps >= 2")
        if self.trace_samples < 0 or (0 < self.trace_samples < 5):
            raise ValueError(f"track trace_samples must be 0 (off) or >= 5, got {self.trace_samples}")
        if self.sharpness_rho is not None and not (self.sharpness_rho > 0 and self.sharpness_steps >= 1):
            raise ValueError(f"track sharpness_rho must be > 0 and sharpness_steps >= 1, got {self.sharpness_rho}, "
                             f"{self.sharpness_steps}")
        if self.grad_batch is not None and self.grad_batch < 1:
            raise ValueError(f"track grad_batch must be >= 1, got {self.grad_batch}")
        if not 0 <= self.warm_mix:
            raise ValueError(f"track warm_mix must be >= 0, got {self.warm_mix}")
        if self.dtype not in (None, "float32", "float64"):
            raise ValueError(f"track dtype must be float32 or float64, got {self.dtype!r}")

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrackConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown --track option(s): {', '.join(unknown)}; known: {', '.join(sorted(names))}")
        return cls(**d)


def stability_threshold(lr: float, *, base: str = "sgd", momentum: float = 0.0, nesterov: bool = False,
                        weight_decay: float = 0.0) -> float | None:
    """The largest loss-Hessian eigenvalue at which the base optimizer is stable on a quadratic (module
    docstring); None for AdamW or ``lr <= 0``."""
    if base != "sgd" or lr <= 0:
        return None
    b = momentum
    edge = (2 + 2 * b) / ((1 + 2 * b) * lr) if nesterov and b > 0 else (2 + 2 * b) / lr
    return edge - weight_decay


def measure(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, task: str, config: TrackConfig,
            label_smoothing: float = 0.0, v0: torch.Tensor | None = None, seed: int = 0
            ) -> tuple[dict[str, Any], torch.Tensor | None]:
    """One measurement at the model's current weights on ``(x, y)``: ``(row, top eigenvectors (k, P))``;
    where the loss or the products are not finite (a diverging run) ``lambda_max`` is None and ``v0``
    comes back.

    ``v0``: the previous top eigenvectors (rows) for a warm start; a random unit vector drawn from
    ``seed`` is mixed in with weight ``config.warm_mix`` (alone, it is the cold start).
    """
    from landscape.curvature.gradients import gradient_norms
    from landscape.curvature.lanczos import lanczos
    from landscape.curvature.trace import hutchpp

    dtype = getattr(torch, config.dtype) if config.dtype else None
    obj = Objective(model, x, y, task=task, label_smoothing=label_smoothing, batch_size=config.batch_size,
                    dtype=dtype, hvp_mode="reverse")
    t0 = time.perf_counter()
    row: dict[str, Any] = dict(obj.evaluate())
    gn = gradient_norms(obj, batch_size=config.grad_batch, by="module")
    row.update(grad_norm=gn.norm, grad_strength=gn.strength)
    if config.grad_batch is not None:
        row["grad_batch"] = config.grad_batch
    if config.layers:
        row["layers"] = {name: g["strength"] for name, g in gn.groups.items()}
    gen = torch.Generator().manual_seed(seed)
    start = torch.randn(obj.num_params, generator=gen, dtype=torch.float64)
    start /= start.norm()
    warm = v0 is not None and v0.shape[-1] == obj.num_params
    if warm:
        prev = v0.detach().double().cpu().reshape(-1, obj.num_params).sum(0)
        start = prev / prev.norm() + config.warm_mix * start
    k = min(config.top_k, obj.num_params)
    vectors = v0
    if math.isfinite(row["loss"]) and math.isfinite(gn.norm):  # a diverging run: nothing to measure
        before = obj.counts["hessian"]
        try:
            eig = lanczos(obj.hessian, k=k, tol=config.tol, v0=start, seed=seed, max_matvecs=config.max_hvps,
                          ncv=min(obj.num_params, max(2 * k + 20, k + 2)), return_vectors=True)
        except np.linalg.LinAlgError:  # Hessian products overflowed
            eig = None
        if eig is not None and np.isfinite(eig.eigenvalues).all():
            row.update(lambda_max=float(eig.eigenvalues[0]), lanczos_hvps=obj.counts["hessian"] - before,
                       lanczos_converged=bool(eig.converged), warm=bool(warm))
            if k > 1:
                row["eigenvalues"] = [float(v) for v in eig.eigenvalues]
            vectors = eig.eigenvectors.to(torch.float64).cpu()
        if config.trace_samples:
            tr = hutchpp(obj.hessian, max_samples=config.trace_samples, sketch="lanczos", seed=seed + 1)
            row.update(trace=tr.trace, trace_stderr=tr.stderr)
        if config.sharpness_rho is not None:
            from landscape.sharpness import worst_case_sharpness

            sh = worst_case_sharpness(obj, config.sharpness_rho, steps=config.sharpness_steps, seed=seed + 2)
            row.update(sharpness=sh.sharpness, sharpness_rho=config.sharpness_rho)
    row.setdefault("lambda_max", None)
    obj.release_graphs()
    row.update(hvps=obj.counts["hessian"], passes=obj.counts["passes"], seconds=time.perf_counter() - t0)
    return {k: _finite(v) for k, v in row.items()}, vectors


class CurvatureTracker:
    """Measures the curvature every ``config.every`` steps and appends the rows to ``path``.

    ``optimizer``: keyword arguments of :func:`stability_threshold` (base, momentum, nesterov,
    weight_decay) for each row's ``threshold``. The trainer calls :meth:`begin`
    (fresh run or resume), :meth:`due` / :meth:`measure` after steps, :meth:`state_dict` when it saves a
    resume state, and :meth:`summary` at the end.
    """

    def __init__(self, config: TrackConfig, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, task: str,
                 path: str | Path, label_smoothing: float = 0.0, optimizer: dict[str, Any] | None = None) -> None:
        self.config, self.model, self.task, self.path = config, model, task, Path(path)
        self.label_smoothing = label_smoothing
        self.optimizer = dict(optimizer or {})
        idx = subset_indices(len(x), config.subset, config.seed)
        device = next(model.parameters()).device
        self.x, self.y = x[idx].to(device), y[idx].to(device)
        self.next_step, self.interval = 0, config.every
        self.vectors: torch.Tensor | None = None
        self.totals = {"rows": 0, "tracker_seconds": 0.0, "train_seconds": 0.0, "train_steps": 0, "hvps": 0,
                       "passes": 0}
        self._clock: float | None = None
        self._last_step, self._last_measured = 0, -1

    # -- bookkeeping ---------------------------------------------------------------------
    def begin(self, step: int, state: dict[str, Any] | None = None) -> None:
        """Start at ``step``: a fresh run (``state`` None, ``step`` 0) removes old rows; a resume restores
        the tracker's state and drops rows written after ``step`` (they are measured again)."""
        if state is not None:
            if state.get("version") != TRACK_VERSION or state.get("config") != self.config.to_dict():
                raise ValueError(f"{self.path}: the resume state was tracked with other --track options "
                                 f"({state.get('config')}); pass the same ones, or --restart")
            self.next_step, self.interval = int(state["next_step"]), int(state["interval"])
            self.vectors = state["vectors"]
            self.totals = dict(state["totals"])
            # the steps and seconds between the last measurement and the save are counted at the next one
            self.totals["train_seconds"] += float(state.get("pending_seconds", 0.0))
            self._last_measured = int(state.get("last_measured", -1))
        else:
            self.next_step = step
        if D.is_main():
            if state is None and step == 0:
                self.path.unlink(missing_ok=True)
            else:
                self._truncate(step)
        self._last_step = int(state.get("last_step", step)) if state is not None else step
        self._clock = time.perf_counter()

    def state_dict(self) -> dict[str, Any]:
        pending = time.perf_counter() - self._clock if self._clock is not None else 0.0
        return {"version": TRACK_VERSION, "config": self.config.to_dict(), "next_step": self.next_step,
                "interval": self.interval, "vectors": self.vectors, "totals": dict(self.totals),
                "last_step": self._last_step, "last_measured": self._last_measured, "pending_seconds": pending}

    def due(self, step: int, last: bool = False) -> bool:
        """Whether to measure after ``step`` (``last``: the final step, always measured once)."""
        return step >= self.next_step or (last and self._last_measured != step)

    def _truncate(self, step: int) -> None:
        if not self.path.exists():
            return
        from landscape.io import atomic_write_text

        keep = [line for line in self.path.read_text().splitlines()
                if line.strip() and _complete(line) and json.loads(line)["step"] <= step]
        atomic_write_text(self.path, "".join(line + "\n" for line in keep))

    # -- measuring -----------------------------------------------------------------------
    def measure(self, step: int, epoch: int, lr: float) -> dict[str, Any]:
        """Measure now (fork the RNG, leave the model as it was), append the row, schedule the next."""
        now = time.perf_counter()
        if self._clock is not None:
            self.totals["train_seconds"] += now - self._clock
            self.totals["train_steps"] += step - self._last_step
        dev = self.x.device
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            row, vectors = measure(self.model, self.x, self.y, task=self.task, config=self.config,
                                   label_smoothing=self.label_smoothing, seed=self.config.seed * 1_000_003 + step,
                                   v0=self.vectors if self.config.warm else None)
        self.vectors = vectors
        row = {"step": step, "epoch": epoch, "lr": lr, "threshold": stability_threshold(lr, **self.optimizer),
               "threshold_gd": 2 / lr if lr > 0 else None,
               "interval": self.interval, **row}
        if D.is_main():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "a") as f:
                f.write(json.dumps(row, sort_keys=True) + "\n")
        end = time.perf_counter()
        self.totals["rows"] += 1
        self.totals["tracker_seconds"] += end - now
        self.totals["hvps"] += row["hvps"]
        self.totals["passes"] += row["passes"]
        self._last_measured = step
        self._schedule(step)
        self._last_step, self._clock = step, time.perf_counter()
        return row

    def _schedule(self, step: int) -> None:
        b = self.config.budget
        if b is not None and self.totals["train_steps"] > 0:
            t = torch.tensor([self.totals["tracker_seconds"], float(self.totals["rows"]),
                              self.totals["train_seconds"], float(self.totals["train_steps"])],
                             dtype=torch.float64, device=self.x.device)
            c_sum, n, train, steps = D.all_reduce_sum(t).tolist()  # every rank takes the same interval
            per_measure, per_step = c_sum / n, train / steps
            need = per_measure * (1 - b) / (b * max(per_step, 1e-12))
            self.interval = max(self.config.every, math.ceil(need))
        self.next_step = step + self.interval

    def summary(self) -> dict[str, Any]:
        """Totals: rows, products, seconds, and the tracker's share of the wall time."""
        s = dict(self.totals)
        total = s["tracker_seconds"] + s["train_seconds"]
        s["share"] = s["tracker_seconds"] / total if total > 0 else 0.0
        s["budget"], s["interval"] = self.config.budget, self.interval
        return s


def describe(summary: dict[str, Any]) -> str:
    """One line: ``curvature tracking: 12 rows, 96 HVPs, 1.20 s = 8.1% of the wall time ...``."""
    text = (f"curvature tracking: {summary['rows']} rows, {summary['hvps']} Hessian-vector products, "
            f"{summary['tracker_seconds']:.2f} s = {100 * summary['share']:.1f}% of the wall time")
    if summary.get("budget") is not None:
        text += f" (budget {100 * summary['budget']:.0f}%, last interval {summary['interval']} steps)"
    return text


def _finite(v: Any) -> Any:
    """Non-finite floats (a diverging run) as None, so the rows stay standard JSON."""
    if isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, dict):
        return {k: _finite(x) for k, x in v.items()}
    return v


def read_rows(path: str | Path) -> list[dict[str, Any]]:
    """The complete rows of a curvature JSONL file (a torn last line after a kill is skipped)."""
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip() and _complete(line)]


def _complete(line: str) -> bool:
    try:
        json.loads(line)
    except json.JSONDecodeError:
        return False
    return True


__all__ = ["CurvatureTracker", "TrackConfig", "describe", "measure", "read_rows", "stability_threshold"]
