"""Loss surfaces on 1-D and 2-D grids: batched evaluation, resumable result files, rank sharding.

A grid point with coordinates ``c`` is ``w(c) = w0 + sum_j c_j d_j`` (formed in float64, then cast
to the objective's dtype: ``c = 0`` is the checkpoint bit for bit, an interpolation's ``c = 1`` its
end point). At each point every split's full-data (or fixed-subset) loss and accuracy are computed
by :meth:`~landscape.objective.Objective.evaluate_many`, ``chunk_size`` points per ``vmap``-ed
forward pass (``"auto"``: sized to memory and timed, see
:meth:`~landscape.objective.Objective.auto_chunk_size`); with 1, point after point in the module itself
(runs of up to :data:`POINT_RUN` points per call, shortened where one takes longer than ``save_interval``), a
first layer on the raw input served from products (:mod:`landscape.objective.pointwise`).

The result file (``.npz``, loadable with ``allow_pickle=False``) holds ``axis_0`` (and
``axis_1``), one array per metric (``train_loss``, ``train_acc``, ``test_loss``, ...; shape
``(len(axis_0), len(axis_1))``, i.e. ``[i, j]`` is the point ``(axis_0[i], axis_1[j])``, NaN where
not computed yet), ``done`` (bool, same shape) and ``meta`` (a JSON string: directions with seed,
normalization and SHA-256, axes, splits with a fingerprint of their data and their loss, BatchNorm policy,
dtype, checkpoint hash, ...). It is
rewritten atomically after finished chunks (at most every ``save_interval`` seconds, and always
at the end or on an exception; point by point in one process, also inside a run, whose finished points an
exception keeps). Run again with the same settings and only the missing chunks are
computed; the chunk layout (``meta["chunk_size"]``) is the file's, so a resumed run evaluates
exactly the chunks an uninterrupted one would have, and gives the same numbers. A file made with
other settings is never silently overwritten.

Under ``torchrun`` the chunks are dealt round-robin to the ranks (each evaluates its points on the
whole data), the results of every round are summed across ranks and rank 0 writes the file; all
ranks return the complete surface.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from landscape import distributed as D
from landscape.objective import pointwise
from landscape.landscapes.batchnorm import BN_POLICIES, recompute_statistics
from landscape.landscapes.directions import Directions

FORMAT = "landscape-surface"
FORMAT_VERSION = 1
UNVERIFIED = ("runtime", "complete", "chunk_size")
"""Metadata keys that may differ between a file and a resumed run."""
POINT_RUN = 64
"""Most points per call of a point-by-point surface (``chunk_size`` 1; fewer where their weight vectors would pass
64 MiB): the module is written point after point."""


def axis(lo: float, hi: float, points: int) -> np.ndarray:
    """``points`` evenly spaced values from ``lo`` to ``hi``; values within ``1e-9`` steps of an integer
    are snapped onto it, so a range containing 0 (or 1) hits it exactly when a grid point falls there."""
    points = int(points)
    if points < 1:
        raise ValueError(f"an axis needs at least 1 point, got {points}")
    if points == 1:
        return np.array([float(lo)])
    if not hi > lo:
        raise ValueError(f"an axis range needs lo < hi, got {lo} .. {hi}")
    a = np.linspace(float(lo), float(hi), points)
    r = np.round(a)
    snap = np.abs(a - r) <= 1e-9 * (hi - lo) / (points - 1)
    a[snap] = r[snap]
    return a


@dataclass
class Surface:
    """Values of every metric on a grid; see the module docstring for the layout."""

    axes: list[np.ndarray]
    values: dict[str, np.ndarray]
    done: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(len(a) for a in self.axes)

    @property
    def ndim(self) -> int:
        return len(self.axes)

    @property
    def complete(self) -> bool:
        return bool(self.done.all())

    @property
    def metrics(self) -> list[str]:
        return list(self.values)

    def __getitem__(self, metric: str) -> np.ndarray:
        if metric not in self.values:
            raise KeyError(f"the surface has no metric {metric!r}; it has {', '.join(self.values)}")
        return self.values[metric]

    def value_at(self, metric: str, *coords: float) -> float:
        """The value at the grid point with exactly these coordinates."""
        idx = []
        for a, c in zip(self.axes, coords):
            hit = np.flatnonzero(a == c)
            if not len(hit):
                raise KeyError(f"{c} is not a grid coordinate")
            idx.append(int(hit[0]))
        return float(self[metric][tuple(idx)])

    def save(self, path: str | os.PathLike) -> None:
        """Write atomically as ``.npz`` (no pickles)."""
        from landscape.io import atomic_write

        arrays = {f"axis_{i}": a for i, a in enumerate(self.axes)}
        arrays.update(self.values)
        arrays["done"] = self.done
        arrays["meta"] = np.array(json.dumps(self.meta, sort_keys=True))
        atomic_write(path, lambda f: np.savez(f, **arrays))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Surface":
        """Read a surface file; a one-line ValueError if it is not one."""
        try:
            with np.load(path, allow_pickle=False) as z:
                meta = json.loads(str(z["meta"]))
                axes = [np.array(z[f"axis_{i}"]) for i in range(len([k for k in z.files if k.startswith("axis_")]))]
                values = {k: np.array(z[k]) for k in z.files if k not in ("meta", "done") and not k.startswith("axis_")}
                done = np.array(z["done"])
        except FileNotFoundError:
            raise
        except Exception as e:
            raise ValueError(f"{path}: not a readable surface file ({type(e).__name__}: {e})") from e
        if meta.get("format") != FORMAT:
            raise ValueError(f"{path}: not a landscape surface file")
        return cls(axes, values, done, meta)


def _plain(obj: Any) -> Any:
    """``obj`` as it reads back from JSON (tuples become lists, numpy scalars numbers)."""
    from landscape.io import _json_default

    return json.loads(json.dumps(obj, default=_json_default))


def _verify(previous: Surface, settings: dict[str, Any], path: str | os.PathLike) -> None:
    from landscape.checkpoint import without_paths

    for key in sorted(set(settings) | set(previous.meta)):
        if key in UNVERIFIED:
            continue
        if without_paths(previous.meta.get(key)) != without_paths(settings.get(key)):
            raise ValueError(f"{path} was computed with other settings ({key} differs); pass --restart to "
                             f"recompute it or choose another output")


def _data_digest(obj: Any) -> str:
    """SHA-256 of the shapes, dtypes and up to 4096 evenly spaced values of every tensor of ``obj``'s data (in
    memory) or first batch (a stream): what tells a resumed file's data from other data of the same size."""
    from landscape.objective.batches import tensors
    from landscape.objective.sources import TensorSource

    source = obj.source
    h = hashlib.sha256()
    for t in tensors(source.data if isinstance(source, TensorSource) else source.first()):
        flat = t.detach().reshape(-1)
        h.update(f"{tuple(t.shape)} {t.dtype};".encode())
        h.update(flat[::max(1, flat.numel() // 4096)][:4096].to("cpu", torch.float64).numpy().tobytes())
    return h.hexdigest()


def compute_surface(
    objectives: Mapping[str, Any],
    directions: Directions,
    axes: Sequence[Sequence[float] | np.ndarray],
    *,
    bn: str = "frozen",
    bn_source: Any | None = None,
    chunk_size: int | str = "auto",
    path: str | os.PathLike | None = None,
    resume: bool = True,
    header: Mapping[str, Any] | None = None,
    progress: bool = False,
    on_chunk: Callable[[Surface], None] | None = None,
    save_interval: float = 1.0,
    end_statistics: Mapping[str, torch.Tensor] | None = None,
) -> Surface:
    """Loss and accuracy of every split in ``objectives`` (``{"train": Objective, "test": ...}``, all of
    the same model and parameter selection, built with ``shard=False`` under ``torchrun``) at every
    point of the grid ``axes`` (one per direction) around the objectives' ``w0``.

    ``bn``: ``frozen`` or ``recompute`` (statistics re-estimated per point on ``bn_source``, default the
    ``train`` objective; point by point). ``end_statistics``: the BatchNorm running statistics of an
    interpolation's end point (``{buffer name: tensor}``, one direction); under ``frozen`` each point's
    statistics are then ``(1 - t)`` the model's plus ``t`` these (point by point), so ``t = 0`` and ``t = 1`` are
    the two checkpoints. ``path``: the result file (see the module docstring); with
    ``resume`` an unfinished file of the same settings is continued. ``header``: extra metadata that
    must match on resume (checkpoint hash, data, subset, ...). ``on_chunk(surface)``: called after
    every round of chunks (tests use it to interrupt a run). The model is never modified.
    """
    if not objectives:
        raise ValueError("no split to evaluate")
    if bn not in BN_POLICIES:
        raise ValueError(f"bn must be one of {BN_POLICIES}, got {bn!r}")
    axes = [np.asarray(a, dtype=np.float64).reshape(-1) for a in axes]
    if len(axes) != directions.k or len(axes) not in (1, 2):
        raise ValueError(f"need one axis per direction (1 or 2), got {len(axes)} axes and {directions.k} directions")
    if any(len(a) == 0 for a in axes):
        raise ValueError("an axis is empty")
    first = next(iter(objectives.values()))
    for name, obj in objectives.items():
        if obj.names != first.names or obj.shapes != first.shapes:
            raise ValueError(f"objective {name!r} has other parameters than {next(iter(objectives))!r}")
    if directions.vectors.shape[1] != first.num_params:
        raise ValueError(f"directions have {directions.vectors.shape[1]} entries, the model's selected "
                         f"parameters {first.num_params}")
    if bn == "recompute":
        bn_source = bn_source if bn_source is not None else objectives.get("train")
        if bn_source is None:
            raise ValueError("bn='recompute' needs the training data: include the train split or pass bn_source")
    interpolated = bn == "frozen" and bool(end_statistics)
    if interpolated:
        if directions.k != 1:
            raise ValueError("end_statistics go with one direction (an interpolation)")
        start = first.state()
        for k, v in end_statistics.items():
            if k not in start or start[k].shape != v.shape:
                raise ValueError(f"end_statistics {k!r}: the model has no buffer of that name and shape")
        ends = {k: (start[k].double(), v.to(start[k].device, torch.float64), start[k].dtype)
                for k, v in sorted(end_statistics.items())}
        end_digest = hashlib.sha256(b"".join(b.cpu().numpy().tobytes() for _, b, _ in ends.values())).hexdigest()

    metric_names = [f"{s}_{m}" for s in objectives for m in ("loss", "acc")]
    shape = tuple(len(a) for a in axes)
    n_points = int(np.prod(shape))
    settings = _plain({
        "format": FORMAT, "format_version": FORMAT_VERSION, **(header or {}),
        "directions": {**directions.meta, "count": directions.k, "sha256": directions.digest()},
        "axes": [a.tolist() for a in axes],
        "splits": {name: {"samples": obj.num_samples, "batch_size": obj.batch_size, "data": _data_digest(obj),
                          "loss": obj.loss_spec.describe()} for name, obj in objectives.items()},
        "bn": bn, "dtype": str(first.dtype).replace("torch.", ""),
        **({"bn_end": {"sha256": end_digest}} if interpolated else {}),
        "parameters": {"count": first.num_params, "tensors": len(first.names)},
    })

    previous = None
    if path is not None and resume and D.is_main() and Path(path).exists():
        previous = Surface.load(path)
        _verify(previous, settings, path)
    if D.is_distributed():
        box = [previous]
        torch.distributed.broadcast_object_list(box, src=0)
        previous = box[0]
    if previous is not None:
        chunk = int(previous.meta["chunk_size"])
        surface = Surface(axes, {k: v.copy() for k, v in previous.values.items()}, previous.done.copy(), {})
    else:
        if bn == "recompute" or interpolated:
            chunk = 1
        elif chunk_size == "auto":
            chunk = first.auto_chunk_size(points=n_points)
        else:
            chunk = int(chunk_size)
        if chunk < 1:
            raise ValueError(f"chunk_size must be >= 1 or 'auto', got {chunk_size!r}")
        chunk = _broadcast_int(chunk, first.device)
        surface = Surface(axes, {k: np.full(shape, np.nan) for k in metric_names}, np.zeros(shape, dtype=bool), {})
    t_start = time.perf_counter()
    runtime = {"device": str(first.device), "world_size": D.world_size(), "seconds": 0.0, "points_computed": 0,
               "versions": _versions()}
    surface.meta = {**settings, "chunk_size": chunk, "runtime": runtime, "complete": surface.complete}

    grid = np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(n_points, len(axes))
    flat_done = surface.done.reshape(-1)
    chunks = [(i, min(i + chunk, n_points)) for i in range(0, n_points, chunk)]
    pending = [c for c in chunks if not flat_done[c[0]:c[1]].all()]
    by_point = chunk == 1 and bn == "frozen" and not interpolated
    # point by point: runs of pending points per call, their weights <= 64 MiB, shortened to take about
    # save_interval after a longer one; a single process keeps a run's finished points (saved every
    # save_interval, and on an exception) through pointwise.reporting_points
    longest = max(1, min(POINT_RUN, (64 << 20) // max(1, first.num_params * first.w0.element_size())))
    run_length = longest
    world, me = D.world_size(), D.rank()
    partial: tuple | None = None  # (lo, n, sums, out, col) of the run under way: n points of it finished

    def keep_partial() -> None:
        """Record the finished points of the run under way (all splits done there)."""
        nonlocal partial
        if partial is None:
            return
        lo, n, sums, out, col = partial
        partial = None
        s = sums()
        out[:n, col] = (s[:, 0] / s[:, 1]).cpu().numpy()  # as evaluate_many divides them
        if float(s[0, 3]) != 0:
            out[:n, col + 1] = (s[:, 2] / s[:, 3]).cpu().numpy()
        record(lo, out[:n])

    def reporting(lo: int, out: np.ndarray, col: int) -> Any:
        def hook(obj: Any, n: int, sums: Callable[[], torch.Tensor]) -> None:
            nonlocal partial
            partial = (lo, n, sums, out, col)
            if path is not None and time.perf_counter() - last_save >= save_interval:
                keep_partial()
                save()
        return pointwise.reporting_points(hook)
    # Points are formed in float64: on the device, or on the CPU where the device has no float64 (MPS).
    forming = first.device if D.accumulation_dtype(first.device) == torch.float64 else torch.device("cpu")
    base = first.w0.detach().to(forming, torch.float64)
    dirs = directions.vectors.to(forming)

    def evaluate(lo: int, hi: int) -> np.ndarray:
        W = grid_points(base, dirs, grid[lo:hi], first.dtype).to(first.device)
        out = np.full((hi - lo, len(metric_names)), np.nan)
        rows = range(hi - lo) if bn == "recompute" or interpolated else [None]
        for r in rows:
            sl = slice(None) if r is None else slice(r, r + 1)
            buffers = None
            if bn == "recompute":
                buffers = recompute_statistics(first, W[r], bn_source)
            elif r is not None:  # interpolated statistics, formed in float64 as the weights are
                t = float(grid[lo + r, 0])
                buffers = {k: ((1.0 - t) * a + t * b).to(dtype) for k, (a, b, dtype) in ends.items()}
            col = 0
            for obj in objectives.values():
                last = col == len(metric_names) - 2
                with reporting(lo, out, col) if by_point and world == 1 and last else contextlib.nullcontext():
                    res = obj.evaluate_many(W[sl], chunk_size=chunk if r is None else 1, buffers=buffers,
                                            plane=(base, dirs, grid[lo:hi][sl]))
                out[sl, col] = res["loss"]
                if res["acc"] is not None:
                    out[sl, col + 1] = res["acc"]
                col += 2
        return out

    def record(lo: int, rows: np.ndarray) -> None:
        """Metric rows of the points from ``lo`` on: stored, marked done and counted (once)."""
        hi = lo + len(rows)
        for col, name in enumerate(metric_names):
            surface.values[name].reshape(-1)[lo:hi] = rows[:, col]
        new = int((~flat_done[lo:hi]).sum())
        flat_done[lo:hi] = True
        runtime["points_computed"] += new
        advance(new)

    def rounds() -> Any:
        """Each round's chunks (one per rank); point runs as long as ``run_length`` is when they are dealt."""
        if not by_point:
            for r0 in range(0, len(pending), world):
                yield pending[r0:r0 + world]
            return
        queue = [lo for lo, _ in pending]
        while queue:
            runs = _runs(queue[:world * run_length], run_length)[:world]
            queue = queue[sum(hi - lo for lo, hi in runs):]
            yield runs
    last_save = time.perf_counter()
    unsaved = False

    def save(force: bool = False) -> None:
        nonlocal last_save, unsaved
        runtime["seconds"] = time.perf_counter() - t_start
        surface.meta["complete"] = surface.complete
        if path is not None and D.is_main() and (force or time.perf_counter() - last_save >= save_interval):
            surface.save(path)
            last_save, unsaved = time.perf_counter(), False

    from landscape.progress import progress_bar

    with progress_bar(f"surface {'x'.join(map(str, shape))}", n_points, progress) as advance:
        advance(int(flat_done.sum()))
        try:
            for round_chunks in rounds():
                box = torch.zeros(world, max(hi - lo for lo, hi in round_chunks), len(metric_names),
                                  dtype=torch.float64)
                if me < len(round_chunks):
                    lo, hi = round_chunks[me]
                    t0 = time.perf_counter()
                    box[me, :hi - lo] = torch.from_numpy(evaluate(lo, hi))
                    partial, took = None, time.perf_counter() - t0
                    if by_point and took > save_interval:
                        run_length = max(1, int(run_length * save_interval / took))
                    elif by_point and took < save_interval / 2:
                        run_length = min(longest, 2 * run_length)
                if by_point and world > 1:
                    run_length = _broadcast_int(run_length, first.device)  # every rank deals the same runs
                if world > 1:
                    box = D.all_reduce_sum(box)  # float64 on the CPU, moved where the backend takes it
                for k, (lo, hi) in enumerate(round_chunks):
                    record(lo, box[k, :hi - lo].numpy())
                unsaved = True
                save()
                if on_chunk is not None:
                    on_chunk(surface)
        finally:
            if partial is not None:  # interrupted inside a run: its finished points are kept
                keep_partial()
                unsaved = True
            if unsaved or previous is None or not surface.meta.get("complete"):
                save(force=True)
    return surface


def _runs(points: list[int], longest: int) -> list[tuple[int, int]]:
    """Sorted point indices as ``(lo, hi)`` runs of consecutive indices, each at most ``longest`` long."""
    runs: list[tuple[int, int]] = []
    for p in points:
        if runs and runs[-1][1] == p and p - runs[-1][0] < longest:
            runs[-1] = (runs[-1][0], p + 1)
        else:
            runs.append((p, p + 1))
    return runs


def grid_points(w0: torch.Tensor, directions: torch.Tensor, coords: np.ndarray, dtype: torch.dtype) -> torch.Tensor:
    """Rows ``w0 + sum_j coords[r, j] * directions[j]``, each formed in float64 (``w0`` and the directions
    as float64 tensors) and then cast to ``dtype``: all-zero coordinates give ``w0`` exactly."""
    W = torch.empty(len(coords), w0.numel(), dtype=dtype, device=w0.device)
    w0 = w0.to(torch.float64)
    for r, row in enumerate(np.asarray(coords, dtype=np.float64).reshape(len(coords), -1)):
        w = w0.clone()
        for c, d in zip(row, directions):
            w.add_(d.to(w), alpha=float(c))
        W[r] = w.to(dtype)
    return W


def _broadcast_int(value: int, device: torch.device) -> int:
    """Rank 0's ``value`` on every rank."""
    t = torch.tensor([float(value) if D.is_main() else 0.0], dtype=D.accumulation_dtype(device), device=device)
    return int(D.all_reduce_sum(t).item())


def _versions() -> dict[str, str]:
    from landscape.checkpoint import versions

    return versions()


def make_objectives(model: Any, data: Any, splits: Sequence[str], *, subset: int | None = None, seed: int = 0,
                    **kwargs: Any) -> dict[str, Any]:
    """``{split: Objective}`` for a surface: unsharded (under ``torchrun`` the grid is sharded instead),
    each on the whole split or its fixed seeded ``subset``."""
    from landscape.objective import Objective

    return {s: Objective.from_bundle(model, data, s, subset=subset, seed=seed, shard=False, **kwargs)
            for s in splits}


__all__ = ["FORMAT", "Surface", "axis", "compute_surface", "grid_points", "make_objectives"]
