"""2-D loss surfaces on every workload of the matrix: ``compute_surface`` at its defaults against a plain loop.

    python benchmarks/bench_surface_matrix.py [--workloads mlp,cnn/large] [--grids 21 31 51] [--repeats 3]

The plain loop is what loss-landscape tools do: for each grid point, copy ``w0 + a d1 + b d2`` into the
module's parameters (``torch.no_grad``), run the module over the whole data in micro-batches, accumulate the
loss and the top-1 hits on the device, read them once per point. Ours is
:func:`~landscape.landscapes.surface.compute_surface` on a fresh :class:`~landscape.objective.Objective`
(defaults: ``chunk_size="auto"``, tuning included in its time). Both use the workload's data, micro-batch size,
criterion and the same filter-normalized random directions, 1 thread. The two run interleaved, ``--repeats``
rounds, and each keeps its median. Times are the process's CPU seconds (``time.process_time``: on a machine
shared with other jobs, wall time mostly measures the others; the wall-time ratio is kept in the JSON).
Printed per workload and grid: both times, the ratio (plain / ours, > 1: ours faster) and its range over the
rounds, the share of our time spent tuning, the chosen chunk, the evaluation path (``module+L1``: the first
layer served from products), the largest |difference| of the loss against the plain loop and the load.
Writes ``<out>/bench_surface_matrix.json``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workloads import load, parse  # noqa: E402
from landscape.io import atomic_write_json  # noqa: E402
from landscape.landscapes.directions import random_directions  # noqa: E402
from landscape.landscapes.surface import axis, compute_surface  # noqa: E402
from landscape.objective import Objective  # noqa: E402


def plain_loop(w, names, dirs: torch.Tensor, axes) -> np.ndarray:
    """Loss at every grid point, the module's weights set point by point (restored at the end)."""
    named = dict(w.model.named_parameters())
    params = [named[n] for n in names]
    base = [p.detach().clone() for p in params]
    sizes = [p.numel() for p in params]
    d = [[t.view_as(p) for t, p in zip(v.float().split(sizes), params)] for v in dirs]
    batches = [(w.x[i:i + w.batch_size], w.y[i:i + w.batch_size]) for i in range(0, len(w.x), w.batch_size)]
    out = np.empty((len(axes[0]), len(axes[1])))
    try:
        with torch.no_grad():
            for i, a in enumerate(axes[0]):
                for j, b in enumerate(axes[1]):
                    for p, p0, d1, d2 in zip(params, base, d[0], d[1]):
                        p.copy_(p0 + float(a) * d1 + float(b) * d2)
                    total = torch.zeros((), dtype=torch.float64)
                    hits = torch.zeros((), dtype=torch.float64)
                    for xb, yb in batches:
                        logits = w.model(xb)
                        total += w.criterion(logits, yb) * len(yb)
                        hits += (logits.argmax(-1) == yb).sum()
                    out[i, j] = float(total) / len(w.x)
    finally:
        with torch.no_grad():
            for p, p0 in zip(params, base):
                p.copy_(p0)
    return out


def ours(w, dirs, axes) -> tuple[np.ndarray, float, dict]:
    """``compute_surface`` at its defaults on a fresh objective; also the seconds spent in the chunk race."""
    obj = Objective(w.model, w.x, w.y, loss=w.criterion, batch_size=w.batch_size)
    tuned = {"seconds": 0.0}
    race = obj.auto_chunk_size

    def timed(*a, **k):
        t0 = time.process_time()
        try:
            return race(*a, **k)
        finally:
            tuned["seconds"] += time.process_time() - t0

    obj.auto_chunk_size = timed
    s = compute_surface({"train": obj}, dirs, axes)
    first = getattr(obj, "_first_layers", None)
    path = "vmap" if s.meta["chunk_size"] > 1 else "module+L1" if first is not None and first.served else "module"
    return s["train_loss"], tuned["seconds"], {"chunk": s.meta["chunk_size"], "path": path}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="all", help="e.g. mlp,cnn/large [default: all]")
    p.add_argument("--grids", type=int, nargs="+", default=[21, 31, 51])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", type=Path, default=Path("runs/bench_surface_matrix"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    rows = []
    print(f"{'workload':16s} {'grid':>5s} {'plain s':>8s} {'ours s':>8s} {'ratio':>6s} {'range':>11s} "
          f"{'tuning':>7s} {'chunk':>5s} {'path':>10s} {'max|dL|':>8s} {'load':>5s}")
    for fam, size in parse(args.workloads):
        w = load(fam, size)
        probe = Objective(w.model, w.x, w.y, loss=w.criterion, batch_size=w.batch_size)
        dirs = random_directions(probe, 2, seed=0)
        for n in args.grids:
            axes = [axis(-1, 1, n)] * 2
            t_plain, t_ours, shares, walls = [], [], [], []
            for _ in range(args.repeats):
                t0, c0 = time.perf_counter(), time.process_time()
                ref = plain_loop(w, probe.names, dirs.vectors, axes)
                t_plain.append(time.process_time() - c0)
                wall = time.perf_counter() - t0
                t0, c0 = time.perf_counter(), time.process_time()
                got, tune, info = ours(w, dirs, axes)
                t_ours.append(time.process_time() - c0)
                walls.append(wall / (time.perf_counter() - t0))
                shares.append(tune / t_ours[-1])
            ratios = [a / b for a, b in zip(t_plain, t_ours)]
            row = {"workload": w.name, "params": w.num_params, "grid": n, "plain_s": statistics.median(t_plain),
                   "ours_s": statistics.median(t_ours), "ratio": statistics.median(t_plain) / statistics.median(
                       t_ours), "ratio_range": [min(ratios), max(ratios)], "wall_ratio": statistics.median(walls),
                   "tuning_share": max(shares), "max_abs_diff": float(np.abs(got - ref).max()),
                   "load": os.getloadavg()[0], **info}
            rows.append(row)
            print(f"{w.name:16s} {n:5d} {row['plain_s']:8.3f} {row['ours_s']:8.3f} {row['ratio']:6.2f} "
                  f"{min(ratios):5.2f}-{max(ratios):<5.2f} {row['tuning_share']:7.1%} {row['chunk']:5d} "
                  f"{row['path']:>10s} {row['max_abs_diff']:8.1e} {row['load']:5.2f}", flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(args.out / "bench_surface_matrix.json", {"threads": args.threads, "rows": rows})


if __name__ == "__main__":
    main()
