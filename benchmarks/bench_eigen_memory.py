"""Peak extra memory of top-k Hessian eigenvalues: ours (default and ``memory="low"``) against PyHessian.

    python benchmarks/bench_eigen_memory.py [--workloads all] [--k 5] [--out runs/bench_eigen_memory]

Method: every (workload, contender) runs in a fresh subprocess (one thread, ``MALLOC_MMAP_THRESHOLD_=65536`` so
that glibc returns freed tensors to the system instead of keeping them in its heap, the same for every
contender). The child builds the workload's model untrained and loads the trained weights the parent saved,
runs the contender once (a warm-up: imports and first-call initialisation are one-time costs, not the run's),
collects garbage, resets the kernel's peak-RSS mark (``echo 5 > /proc/self/clear_refs``: ``VmHWM`` restarts
from the current RSS) and reads ``VmRSS``. After the contender's second, identical top-k run it reads
``VmHWM``: the peak extra memory is ``VmHWM - VmRSS`` (every byte the run touched at its peak: graphs, Krylov
basis, temporaries, allocator slack). ``tracemalloc`` does not see torch's allocations, and ``ru_maxrss``
cannot be reset after the warm-up, hence ``clear_refs``. Linux only.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workloads import load, parse  # noqa: E402

CONTENDERS = ("ours", "ours-low", "pyhessian")


def _status(field: str) -> int:
    """``field`` (kB) of ``/proc/self/status``, in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"{field} not in /proc/self/status")


def child(spec: str, contender: str, weights: str, k: int) -> dict:
    """One measurement (runs in the subprocess); prints and returns ``{"extra": bytes, ...}``."""
    from pyhessian import hessian

    from landscape.curvature.lanczos import lanczos
    from landscape.objective import Objective

    torch.set_num_threads(1)
    family, size = spec.split("/")
    w = load(family, size, steps=0)
    w.model.load_state_dict(torch.load(weights, weights_only=True))
    x, y, bs = w.x, w.y, w.batch_size

    def run() -> tuple[list[float], dict]:
        if contender == "pyhessian":
            loader = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]
            torch.manual_seed(0)
            values, _ = hessian(w.model, w.criterion, dataloader=loader, cuda=False).eigenvalues(top_n=k)
            w.model.zero_grad(set_to_none=True)  # PyHessian leaves create_graph gradients behind
            return values, {}
        obj = Objective(w.model, x, y, loss=w.criterion, batch_size=bs,
                        memory="low" if contender == "ours-low" else "auto")
        r = lanczos(obj, k)
        return r.eigenvalues.tolist(), {"hvps": r.num_matvecs, "graph_bytes": obj._graph_bytes,
                                        "low_memory": obj.low_memory}

    run()  # warm-up: one-time costs (imports, first calls into torch.func, LAPACK) are not the run's
    gc.collect()
    Path("/proc/self/clear_refs").write_text("5")
    base = _status("VmRSS")
    values, work = run()
    out = {"extra": _status("VmHWM") - base, "base": base, "eigenvalues": sorted(values, reverse=True), **work}
    print(json.dumps(out))
    return out


def measure(spec: str, contender: str, weights: str, k: int) -> dict:
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, __file__, "--child", spec, contender, weights, "--k", str(k)],
                          env=env, capture_output=True, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default="all")
    p.add_argument("--contenders", default=",".join(CONTENDERS))
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_eigen_memory")
    p.add_argument("--child", nargs=3, metavar=("WORKLOAD", "CONTENDER", "WEIGHTS"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        return child(*args.child, args.k)
    res: dict = {"setting": {"k": args.k, "torch": torch.__version__, "load": os.getloadavg()}}
    print("| workload | params | ours (default) | ours (memory=low) | PyHessian | low / PyHessian |")
    print("|---|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        for family, size in parse(args.workloads):
            spec = f"{family}/{size}"
            w = load(family, size)
            weights = os.path.join(tmp, "weights.pt")
            torch.save(w.model.state_dict(), weights)
            row = {c: measure(spec, c, weights, args.k) for c in args.contenders.split(",")}
            res[spec] = {"params": w.num_params, **row}
            args.out.mkdir(parents=True, exist_ok=True)
            (args.out / "bench_eigen_memory.json").write_text(json.dumps(res, indent=1))
            mb = {c: r["extra"] / 2**20 for c, r in row.items()}
            ratio = mb["ours-low"] / mb["pyhessian"] if {"ours-low", "pyhessian"} <= set(mb) else float("nan")
            print(f"| {spec} | {w.num_params:,} | " + " | ".join(
                f"{mb[c]:.1f} MiB" if c in mb else "" for c in CONTENDERS) + f" | {ratio:.2f}x |", flush=True)
    res["setting"]["load_after"] = os.getloadavg()
    (args.out / "bench_eigen_memory.json").write_text(json.dumps(res, indent=1))
    return res


if __name__ == "__main__":
    main()
