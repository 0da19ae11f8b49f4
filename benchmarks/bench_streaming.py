"""HVP throughput of a streamed objective (a DataLoader) against the in-memory one, on several model families.

For each workload the same data is given as in-memory tensors and as a ``DataLoader`` (a map-style
``TensorDataset``, shuffled), streamed with the default memory cache (kept after the first pass when it fits)
and with ``cache_memory=0`` (read from the loader every pass); HVPs at the checkpoint (graph cache) and at a
moved point (no cache) are timed in interleaved rounds; the table gives the median ratio stream / in-memory
of HVPs per second (>= 1: the stream is as fast) and its range.

    python benchmarks/bench_streaming.py [--rounds 5] [--threads 1] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
import warnings

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from landscape.models import build_model
from landscape.objective import Objective


def workloads(quick: bool) -> dict[str, tuple[nn.Module, torch.Tensor, torch.Tensor, int]]:
    n = 256 if quick else 1024
    g = torch.Generator().manual_seed(0)
    out = {
        "mlp": (build_model("mlp", input_shape=[40], num_outputs=10, hidden=[100, 100]),
                torch.randn(n, 40, generator=g), torch.randint(0, 10, (n,), generator=g), 128),
        "cnn": (build_model("cnn", input_shape=[1, 16, 16], num_outputs=10),
                torch.randn(n // 2, 1, 16, 16, generator=g), torch.randint(0, 10, (n // 2,), generator=g), 64),
        "resnet20 (BN)": (build_model("resnet20", input_shape=[3, 16, 16], num_outputs=10),
                          torch.randn(n // 4, 3, 16, 16, generator=g), torch.randint(0, 10, (n // 4,), generator=g),
                          32),
    }
    return out


def rate(obj: Objective, w: torch.Tensor | None, v: torch.Tensor, reps: int) -> float:
    obj.hvp(v, w)  # warm-up: first pass, graph cache, mode choice
    t0 = time.perf_counter()
    for _ in range(reps):
        obj.hvp(v, w)
    return reps / (time.perf_counter() - t0)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--reps", type=int, default=5, help="HVPs per timing")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--json", default=None)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    warnings.filterwarnings("ignore")
    rows = []
    for name, (model, x, y, bs) in workloads(args.quick).items():
        model.eval()
        loader = DataLoader(TensorDataset(x, y), batch_size=bs, shuffle=True)
        makers = {"in-memory": lambda: Objective(model, x, y, batch_size=bs),
                  "stream (cached)": lambda: Objective(model, loader),
                  "stream (cache_memory=0)": lambda: Objective(model, loader, cache_memory=0)}
        v = torch.randn(Objective(model, x, y).num_params, generator=torch.Generator().manual_seed(1))
        for where in ("at w0 (graph cache)", "at w0 + 0.01 v"):
            times: dict[str, list[float]] = {k: [] for k in makers}
            for _ in range(args.rounds):
                for label, make in makers.items():
                    obj = make()
                    w = None if where.startswith("at w0 (") else obj.params() + 0.01 * v
                    times[label].append(rate(obj, w, v, args.reps))
            base = times["in-memory"]
            for label in makers:
                ratios = [a / b for a, b in zip(times[label], base)]
                rows.append({"workload": name, "point": where, "objective": label,
                             "hvp_per_s": statistics.median(times[label]), "ratio_median": statistics.median(ratios),
                             "ratio_min": min(ratios), "ratio_max": max(ratios)})
    print(f"{'workload':<14} {'point':<22} {'objective':<24} {'HVP/s':>8} {'ratio (min-max)':>20}")
    for r in rows:
        print(f"{r['workload']:<14} {r['point']:<22} {r['objective']:<24} {r['hvp_per_s']:8.2f} "
              f"{r['ratio_median']:6.2f} ({r['ratio_min']:.2f}-{r['ratio_max']:.2f})")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"rows": rows, "threads": args.threads, "rounds": args.rounds}, f, indent=1)


if __name__ == "__main__":
    main()
