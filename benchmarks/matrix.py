"""The benchmark matrix: every workload of ``benchmarks/workloads.py`` against the anchors, one command.

    python benchmarks/matrix.py --quick                       # small workloads, 1 repeat: a few minutes
    python benchmarks/matrix.py                               # everything, 3 repeats (see benchmarks/README.md)
    python benchmarks/matrix.py --workloads mlp,cnn/large --sections eigen,surface --repeats 5

Sections (one cell = one section on one workload; the study section has one cell):

* ``eigen``: top-5 Hessian eigenvalues, float32. Ours at its defaults (``landscape.hessian_eigenvalues``),
  PyHessian's default (power iteration, tol 1e-3), hessian-eigenthings' ``lanczos`` and curvlinops'
  ``HessianLinearOperator`` in ``scipy.sparse.linalg.eigsh``, each at its best setting (the cheapest within
  1.5x of the least error its scan reached; ``--quick`` scans one setting each). Reference: our Lanczos on
  a float64 copy at tol 1e-12. Full-data HVPs counted by wrapping each library's matvec.
* ``trace``: our default estimator against curvlinops' XTrace and PyHessian's Hutchinson at equal budgets
  (30 and 102 HVPs; ``--quick``: 30); error against the exact trace (dense float64 Hessian) where the model has at most
  ``--exact-max-params`` parameters, else against a long float64 run of our default (``reference`` says which).
* ``surface``: a 2-D surface of filter-normalized random directions at 21x21 and 31x31 (51x51 for small
  workloads, or all with ``--full``): ours (``landscape.surface`` at defaults), a plain module loop and
  ``loss_landscapes.random_plane``. Achieved GFLOP/s = forward FLOPs of the data (``FlopCounterMode``) x
  points / wall, against a measured ``torch.mm`` roofline (1024x1024 float32, this process's threads).
* ``sam-step``: per-step wall of our SAM and GSAM (``optimizers``) against ``pytorch_optimizer``'s, same
  model, batch, base SGD, rho; forward passes per step counted by a forward hook.
* ``memory``: peak extra resident memory of top-5 eigenvalues, one fresh subprocess per contender: the
  peak RSS (``VmHWM``, reset through ``/proc/self/clear_refs``) minus the RSS just before the call, after
  the model, data and the contender's library are loaded and one warm-up run of the same contender has gone
  (so imports and one-time set-up are not counted against whoever runs first); glibc is told to return freed
  memory (``MALLOC_ENV``, ``malloc_trim``), so the measured run cannot hide its peak in the warm-up's leftovers.
* ``study``: a tiny study (8 runs) through ``landscape study`` with 2 Ray workers and with the local
  process pool of 2 workers: runs per minute, Ray's cluster start included.

Repeats are interleaved (every contender once per round, rounds repeated), the wall column is the median
with the range, ratios are per round (anchor / ours) with median and range. Counts (HVPs, passes) are the
noise-free columns. Every row records the load average, torch threads and seed. The JSON (``--out``) is
rewritten atomically after every cell, and a rerun skips the cells it already holds with the same settings.
"""
from __future__ import annotations

import argparse
import copy
import ctypes
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn
from torch.nn.utils import parameters_to_vector, vector_to_parameters

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import workloads as wl  # noqa: E402
from benchmarks.bench_eigen_anchors import curvlinops_eigsh, eigenthings, matched, max_rel_error  # noqa: E402
from benchmarks.bench_eigen_anchors import pyhessian as pyhessian_eigen  # noqa: E402
from benchmarks.bench_trace import curvlinops_xtrace  # noqa: E402
from landscape.io import atomic_write_json  # noqa: E402

SECTIONS = ("eigen", "trace", "surface", "sam-step", "memory", "study")
K = 5
BUDGETS = (30, 102)


def machine() -> dict[str, Any]:
    return {"load": [round(v, 2) for v in os.getloadavg()], "threads": torch.get_num_threads()}


def interleaved(contenders: dict[str, Callable[[int], dict]], repeats: int) -> dict[str, dict]:
    """Each contender once per round (``f(round) -> dict``), ``repeats`` rounds: walls, outputs, loads per round."""
    out: dict[str, dict] = {name: {"walls": [], "outs": [], "loads": []} for name in contenders}
    for r in range(repeats):
        for name, f in contenders.items():
            load = os.getloadavg()[0]
            t0 = time.perf_counter()
            res = f(r)
            out[name]["walls"].append(time.perf_counter() - t0)
            out[name]["outs"].append(res)
            out[name]["loads"].append(round(load, 2))
    return out


def spread(values: list[float]) -> dict[str, float]:
    return {"median": float(statistics.median(values)), "min": float(min(values)), "max": float(max(values))}


def ratios(walls: list[float], base: list[float]) -> dict[str, float]:
    """Per-round ``wall / base`` (anchor / ours): median and range."""
    return spread([a / b for a, b in zip(walls, base)])


def row(name: str, res: dict, base: dict | None, **extra: Any) -> dict:
    r = {"contender": name, "wall": spread(res["walls"]), "loads": res["loads"],
         "threads": torch.get_num_threads(), **extra}
    if base is not None:
        r["wall_ratio"] = ratios(res["walls"], base["walls"])
    return r


def _failed(f: Callable[[int], dict]) -> Callable[[int], dict]:
    def safe(r: int) -> dict:
        try:
            return f(r)
        except Exception as e:  # an anchor that cannot take a workload is a row that says why
            return {"failed": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"}
    return safe


# ----------------------------------------------------------------------------------------------- eigen
def eigen(w: wl.Workload, args: argparse.Namespace) -> dict:
    import landscape
    from landscape.curvature.lanczos import lanczos
    from landscape.objective import Objective

    crit, loader = w.criterion, list(w.loader())
    t0 = time.perf_counter()
    ref_r = lanczos(Objective(w.model, w.x, w.y, loss=w.criterion, batch_size=w.batch_size, dtype=torch.float64),
                    K, tol=1e-12, residuals=True)
    ref, ref_seconds = ref_r.eigenvalues, time.perf_counter() - t0

    def ours(s: int) -> dict:
        r = landscape.hessian_eigenvalues(w.model, w.criterion, (w.x, w.y), k=K, batch_size=w.batch_size, seed=s)
        return {"values": r.eigenvalues.tolist(), "hvps": r.num_matvecs}

    def anchor(f: Callable, **kw: Any) -> Callable[[int], dict]:
        def run(s: int) -> dict:
            values, hvps, _ = f(w.model, loader, K, s, criterion=crit, **kw)
            return {"values": list(values), "hvps": hvps}
        return _failed(run)

    runs: dict[str, Callable[[int], dict]] = {"ours (default)": ours,
                                              "pyhessian tol=0.001": anchor(pyhessian_eigen, tol=1e-3)}
    for it in ([4 * K] if args.quick else [2 * K + 2, 3 * K, 4 * K, 6 * K]):
        runs[f"hessian-eigenthings max_iter={it}"] = anchor(eigenthings, max_iter=it)
    for tol in ([1e-3] if args.quick else [1e-2, 1e-3, 1e-5]):
        runs[f"curvlinops+eigsh tol={tol:g}"] = anchor(curvlinops_eigsh, tol=tol)
    res = interleaved(runs, args.repeats)
    rows: dict[str, dict] = {}
    for name, v in res.items():
        if any("failed" in o for o in v["outs"]):
            rows[name] = {"contender": name, "failed": next(o["failed"] for o in v["outs"] if "failed" in o)}
            continue
        hvps = [o["hvps"] for o in v["outs"]]
        rows[name] = row(name, v, None if name.startswith("ours") else res["ours (default)"],
                         hvps=float(np.mean(hvps)), hvps_by_seed=hvps, seeds=list(range(args.repeats)),
                         error=max(max_rel_error(o["values"], ref) for o in v["outs"]),
                         values=v["outs"][-1]["values"])
        rows[name]["wall_median"] = rows[name]["wall"]["median"]
    ok = {n: {**r, "wall": r["wall_median"]} for n, r in rows.items() if "failed" not in r}
    best = matched(ok) if all(any(n.startswith(lib) for n in ok) for lib in
                              ("hessian-eigenthings", "curvlinops+eigsh", "pyhessian")) else {}
    base = rows["ours (default)"]
    for lib, m in best.items():  # the best setting's row carries the ratios
        r = rows[m["setting"]]
        r.update(best_setting=True, hvp_ratio=r["hvps"] / base["hvps"])
    return {"reference": {"method": "ours, float64 copy, tol 1e-12", "eigenvalues": ref.tolist(),
                          "residuals": ref_r.residuals.tolist(), "hvps": ref_r.num_matvecs, "seconds": ref_seconds},
            "rows": list(rows.values())}


# ----------------------------------------------------------------------------------------------- trace
def trace_reference(w: wl.Workload, args: argparse.Namespace) -> dict:
    """The exact trace (dense float64 Hessian) if ``params <= --exact-max-params``, else our default estimator in
    float64 at ``--reference-budget`` HVPs (with its standard error); cached under ``<out>.cache/``."""
    from landscape.curvature.trace import DEFAULT_TRACE_METHOD, estimate_trace
    from landscape.objective import Objective

    exact = w.num_params <= args.exact_max_params
    budget = None if exact else args.reference_budget
    cache = Path(str(args.out) + ".cache") / f"trace_{w.family}_{w.size}_{'exact' if exact else budget}.json"
    if cache.exists():
        return json.loads(cache.read_text())
    obj = Objective(w.model, w.x, w.y, loss=w.criterion, batch_size=w.batch_size, dtype=torch.float64)
    t0 = time.perf_counter()
    if exact:
        H = obj.hessian.to_dense()
        ref = {"kind": "exact (dense float64 Hessian)", "trace": float(torch.trace(H)), "stderr": 0.0}
    else:
        r = estimate_trace(obj.hessian, max_samples=budget, rtol=None, seed=12345)
        ref = {"kind": f"long run: ours {DEFAULT_TRACE_METHOD}, float64, {r.num_matvecs} HVPs", "trace": r.trace,
               "stderr": r.stderr}
    ref["seconds"] = time.perf_counter() - t0
    atomic_write_json(cache, ref)
    return ref


def trace(w: wl.Workload, args: argparse.Namespace) -> dict:
    from landscape.curvature.trace import DEFAULT_TRACE_METHOD, estimate_trace
    from landscape.objective import Objective

    ref = trace_reference(w, args)
    crit, loader = w.criterion, list(w.loader())

    def ours(b: int) -> Callable[[int], dict]:
        def run(s: int) -> dict:
            obj = Objective(w.model, w.x, w.y, loss=w.criterion, batch_size=w.batch_size)
            r = estimate_trace(obj.hessian, max_samples=b, rtol=None, seed=s)
            return {"trace": r.trace, "hvps": r.num_matvecs}
        return run

    def xtrace(b: int) -> Callable[[int], dict]:
        def run(s: int) -> dict:
            torch.manual_seed(s)
            est, hvps = curvlinops_xtrace(w.model, crit, loader, b)
            return {"trace": est, "hvps": hvps}
        return _failed(run)

    def hutchinson(b: int) -> Callable[[int], dict]:
        def run(s: int) -> dict:
            from pyhessian import hessian

            from benchmarks.bench_eigen_anchors import Counted

            H = hessian(w.model, crit, dataloader=loader, cuda=False)
            H.dataloader_hv_product = Counted(H.dataloader_hv_product)
            torch.manual_seed(s)
            est = float(np.mean(H.trace(maxIter=b, tol=float("-inf"))))  # -inf: no early stop, the full budget
            for p in w.model.parameters():
                p.grad = None
            return {"trace": est, "hvps": H.dataloader_hv_product.calls}
        return _failed(run)

    rows = []
    for b in args.budgets:
        runs = {f"ours {DEFAULT_TRACE_METHOD} (default)": ours(b), "curvlinops xtrace": xtrace(b),
                "pyhessian hutchinson": hutchinson(b)}
        res = interleaved(runs, args.seeds_trace)
        base = res[f"ours {DEFAULT_TRACE_METHOD} (default)"]
        for name, v in res.items():
            if any("failed" in o for o in v["outs"]):
                rows.append({"contender": name, "budget": b,
                             "failed": next(o["failed"] for o in v["outs"] if "failed" in o)})
                continue
            e = np.array([o["trace"] for o in v["outs"]]) / ref["trace"] - 1
            rows.append(row(name, v, None if name.startswith("ours") else base, budget=b,
                            hvps=float(np.mean([o["hvps"] for o in v["outs"]])),
                            rms_rel_error=float(np.sqrt(np.mean(e**2))), seeds=list(range(args.seeds_trace))))
    return {"reference": ref, "rows": rows}


# --------------------------------------------------------------------------------------------- surface
def mm_roofline(n: int = 1024, repeats: int = 10) -> float:
    """GFLOP/s of an ``n x n`` float32 ``torch.mm`` on this process's threads (best of ``repeats``)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def full_data_loss(model: nn.Module, w: wl.Workload) -> float:
    return sum(float(w.criterion(model(xb), yb)) * len(yb) for xb, yb in w.loader()) / len(w.y)


def forward_flops(w: wl.Workload) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as fc:
        full_data_loss(w.model, w)
    return int(fc.get_total_flops())


def module_loop(w: wl.Workload, D: torch.Tensor, grid: np.ndarray) -> np.ndarray:
    """The obvious loop: set the weights, evaluate the full data, repeat (a copy of the model, no_grad)."""
    model = copy.deepcopy(w.model)
    params = list(model.parameters())
    base = parameters_to_vector(params).detach()
    D = D.to(base.dtype)
    out = np.empty((len(grid), len(grid)))
    with torch.no_grad():
        for i, a in enumerate(grid):
            for j, b in enumerate(grid):
                vector_to_parameters(base + float(a) * D[0] + float(b) * D[1], params)
                out[i, j] = full_data_loss(model, w)
    return out


class LoaderLoss:
    """A ``loss_landscapes`` metric over the workload's micro-batches (its ``Loss`` takes one batch)."""

    def __init__(self, w: wl.Workload) -> None:
        self.w = w

    def __call__(self, model_wrapper: Any) -> float:
        with torch.no_grad():
            return sum(float(self.w.criterion(model_wrapper.forward(xb), yb)) * len(yb)
                       for xb, yb in self.w.loader()) / len(self.w.y)


def surface(w: wl.Workload, args: argparse.Namespace) -> dict:
    import landscape
    from landscape.landscapes.directions import random_directions
    from landscape.objective import Objective

    flops, roof = forward_flops(w), mm_roofline()
    sizes = [21, 31] + ([51] if (w.size == "small" or args.full) else [])
    sizes = sizes[:1] if args.quick else sizes
    D = random_directions(Objective(w.model, w.x, w.y, loss=w.criterion, batch_size=w.batch_size), 2,
                          seed=0).vectors
    rows = []
    for n in sizes:
        grid = np.linspace(-1.0, 1.0, n)
        metas: list[dict] = []

        def ours(s: int, n: int = n) -> dict:
            surf = landscape.surface(w.model, w.criterion, (w.x, w.y), points=n, batch_size=w.batch_size)
            metas.append(dict(surf.meta))
            return {"values": surf["train_loss"]}

        def ll(s: int, n: int = n) -> dict:
            import loss_landscapes

            torch.manual_seed(s)
            return {"values": loss_landscapes.random_plane(w.model, LoaderLoss(w), distance=1, steps=n,
                                                           normalization="filter", deepcopy_model=True)}

        runs = {"ours (landscape.surface)": ours, "module loop": lambda s, n=n: {"values": module_loop(w, D, grid)},
                "loss_landscapes.random_plane": _failed(ll)}
        res = interleaved(runs, args.repeats)
        loop = res["module loop"]
        diff = float(np.abs(res["ours (landscape.surface)"]["outs"][-1]["values"] - loop["outs"][-1]["values"]).max())
        for name, v in res.items():
            if any("failed" in o for o in v["outs"]):
                rows.append({"contender": name, "points": n * n,
                             "failed": next(o["failed"] for o in v["outs"] if "failed" in o)})
                continue
            med = statistics.median(v["walls"])
            r = row(name, v, loop, grid=f"{n}x{n}", points=n * n, forward_passes=n * n, seeds=[0],
                    points_per_s=n * n / med, gflops=flops * n * n / med / 1e9)
            r["speed_vs_loop"] = {k: 1 / x for k, x in zip(("median", "max", "min"), r.pop("wall_ratio").values())}
            if name.startswith("ours"):
                tuning = [m.get(k) for m in metas for k in m if "tun" in k and isinstance(m.get(k), (int, float))]
                r["tuning_share"] = (float(np.median(tuning)) / med) if tuning else None
                r["chunk_size"] = metas[-1].get("chunk_size")
                r["max_abs_diff_vs_loop"] = diff
            rows.append(r)
    return {"forward_flops_full_data": flops, "mm_roofline_gflops": roof, "rows": rows}


# -------------------------------------------------------------------------------------------- sam-step
def sam_step(w: wl.Workload, args: argparse.Namespace) -> dict:
    import pytorch_optimizer as po

    from optimizers import build_optimizer
    from optimizers.closure import StepClosure

    x, y = w.x[: w.batch_size], w.y[: w.batch_size]
    task = "language_model" if y.dim() > 1 else "classification"
    rho, alpha, lr = 0.05, 0.4, 0.01
    crit = w.criterion

    def model_copy() -> tuple[nn.Module, list]:
        m = copy.deepcopy(w.model).train()
        calls = [0]
        m.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
        return m, calls

    def ours(method: str, **hp: Any) -> Callable[[], None]:
        m, calls = model_copy()
        opt = build_optimizer(method, m.parameters(), base="sgd", base_kwargs={"lr": lr, "momentum": 0.9}, **hp)
        closure = StepClosure(m, task)
        closure.set_batch(x, y)
        step = lambda: opt.step(closure)  # noqa: E731
        step.calls = calls
        return step

    def po_sam() -> Callable[[], None]:
        m, calls = model_copy()
        opt = po.SAM(m.parameters(), torch.optim.SGD, rho=rho, lr=lr, momentum=0.9)

        def closure() -> torch.Tensor:
            loss = crit(m(x), y)
            loss.backward()
            return loss

        def step() -> None:
            opt.zero_grad()
            closure()
            opt.step(closure)
        step.calls = calls
        return step

    def po_gsam() -> Callable[[], None]:
        m, calls = model_copy()
        base = torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9)
        sched = po.ProportionScheduler(torch.optim.lr_scheduler.LambdaLR(base, lambda _: 1.0), max_lr=lr, min_lr=lr,
                                       max_value=rho, min_value=rho)
        opt = po.GSAM(m.parameters(), base, m, sched, alpha=alpha)

        def step() -> None:
            opt.set_closure(crit, x, y)
            opt.step()
        step.calls = calls
        return step

    steppers = {"ours sam": ours("sam", rho=rho), "pytorch_optimizer SAM": po_sam(),
                "ours gsam": ours("gsam", rho_max=rho, rho_min=rho, alpha=alpha), "pytorch_optimizer GSAM": po_gsam()}
    for s in steppers.values():  # warm-up, and the forward passes of one step (noise-free)
        s()
        before = s.calls[0]
        s()
        s.forwards = s.calls[0] - before
        s()
    steps = args.steps

    def timed(s: Callable) -> Callable[[int], dict]:
        def run(_: int) -> dict:
            for _ in range(steps):
                s()
            return {}
        return run

    res = interleaved({n: timed(s) for n, s in steppers.items()}, args.repeats)
    rows = []
    for name, v in res.items():
        v = {**v, "walls": [t / steps for t in v["walls"]]}
        mine = "ours gsam" if "GSAM" in name else "ours sam"  # the anchor against our method of the same name
        base = None if name.startswith("ours") else {**res[mine], "walls": [t / steps for t in res[mine]["walls"]]}
        rows.append(row(name, v, base, forwards_per_step=steppers[name].forwards, batch=len(x), steps=steps, seeds=[0],
                        rho=rho, alpha=alpha if "gsam" in name.lower() else None))
    return {"rows": rows}


# ---------------------------------------------------------------------------------------------- memory
MEMORY_CONTENDERS = ("ours (default)", "ours cache_graph=False, hvp_mode=reverse", "ours low-memory mode",
                     "pyhessian tol=0.001")
# The Objective's low-memory mode, by any of these spellings (the first it accepts); absent: the row says so.
LOW_MEMORY_SPELLINGS = ({"low_memory": True}, {"memory": "low"}, {"memory_mode": "low"})


# glibc: blocks >= 64 KiB are mmap-ed (returned to the OS when freed) and the heap is trimmed, so a run
# after the warm-up cannot hide its peak in memory the warm-up freed but kept.
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
MEMORY_OPTIONS = {"ours (default)": {}, "ours cache_graph=False, hvp_mode=reverse":
                  {"cache_graph": False, "hvp_mode": "reverse"}}


def memory_options(w: wl.Workload, contender: str) -> dict | str:
    """The Objective options of ``contender``, or why it cannot run in this checkout (a string)."""
    from landscape.objective import Objective

    if contender in MEMORY_OPTIONS:
        return MEMORY_OPTIONS[contender]
    for opts in LOW_MEMORY_SPELLINGS:
        try:
            Objective(w.model, w.x[:1], w.y[:1], loss=w.criterion, **opts)
            return opts
        except (TypeError, ValueError):
            continue
    return "not offered here (the Objective takes none of " + ", ".join(map(str, LOW_MEMORY_SPELLINGS)) + ")"


def _rss_kb(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(path: str, contender: str, threads: int, opts: dict | None = None) -> dict:
    """In a fresh process: the peak extra RSS of one top-5 run of ``contender`` on the pickled workload."""
    torch.set_num_threads(threads)
    w = torch.load(path, weights_only=False)
    import landscape  # noqa: F401
    from landscape.curvature.lanczos import lanczos
    from landscape.objective import Objective

    if contender.startswith("pyhessian"):
        import pyhessian  # noqa: F401

        loader = list(w.loader())
        run = lambda: pyhessian_eigen(w.model, loader, K, 0, 1e-3, criterion=w.criterion)[:2]  # noqa: E731
    else:
        opts = MEMORY_OPTIONS[contender] if opts is None else opts

        def run() -> tuple:
            obj = Objective(w.model, w.x, w.y, loss=w.criterion, batch_size=w.batch_size, **opts)
            r = lanczos(obj.hessian, K, seed=0)
            return r.eigenvalues.tolist(), r.num_matvecs
    run()  # a warm-up run: imports, one-time kernels and allocator set-up are not counted
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)  # what the warm-up freed goes back to the OS (see MALLOC_ENV)
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM (the peak RSS) to the current RSS
    base = _rss_kb("VmRSS")
    values, hvps = run()
    return {"extra_mib": (_rss_kb("VmHWM") - base) / 1024, "baseline_mib": base / 1024, "hvps": hvps,
            "values": list(values), "options": None if contender.startswith("pyhessian") else opts}


def memory(w: wl.Workload, args: argparse.Namespace) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "workload.pt"
        torch.save(w, path)
        rows, res = [], {c: [] for c in MEMORY_CONTENDERS}
        for _ in range(args.memory_repeats):  # interleaved, a fresh process each
            for c in MEMORY_CONTENDERS:
                load = os.getloadavg()[0]
                opts = {} if c.startswith("pyhessian") else memory_options(w, c)
                if isinstance(opts, str):
                    res[c].append({"skipped": opts, "load": round(load, 2)})
                    continue
                code = (f"import json,sys; sys.path.insert(0, {str(ROOT)!r}); from benchmarks.matrix import "
                        f"memory_child; print('@@' + json.dumps(memory_child({str(path)!r}, {c!r}, {args.threads}, "
                        f"{opts!r})))")
                p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=900,
                                   env={**os.environ, **MALLOC_ENV, "PYTHONPATH": os.pathsep.join(
                                       [str(ROOT), os.environ.get("PYTHONPATH", "")])})
                out = [ln for ln in p.stdout.splitlines() if ln.startswith("@@")]
                r = json.loads(out[-1][2:]) if out else {"failed": (p.stderr.strip().splitlines() or ["?"])[-1]}
                res[c].append({**r, "load": round(load, 2)})
    base = [r.get("extra_mib") for r in res["pyhessian tol=0.001"]]
    for c, rs in res.items():
        if "extra_mib" not in rs[0]:
            rows.append({"contender": c, **{k: v for k, v in rs[0].items() if k in ("skipped", "failed")}})
            continue
        extra = [r["extra_mib"] for r in rs]
        vs = None if None in base or 0 in base else spread([a / b for a, b in zip(extra, base)])
        rows.append({"contender": c, "options": rs[0].get("options"), "extra_mib": spread(extra), "hvps": rs[0]["hvps"],
                     "vs_pyhessian": vs,
                     "loads": [r["load"] for r in rs], "threads": args.threads, "seeds": [0]})
    return {"method": "peak RSS (VmHWM after clear_refs=5) minus RSS before the call, fresh process per run",
            "rows": rows}


# ----------------------------------------------------------------------------------------------- study
STUDY = """
name = "matrix-throughput"
[train]
model = "tests.fixtures:tiny_mlp"
data = "tests.fixtures:blobs"
epochs = 1
schedule = "constant"
[grid]
lr = [0.05, 0.2]
batch_size = [16, 32]
[optimizers.sgd]
[optimizers.sam]
rho = 0.05
[measures]
top_k = 1
trace_samples = 10
"""
STUDY_RUNS = 8


def study(args: argparse.Namespace) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RAY_DISABLE_USAGE_STATS": "1", "RAY_ADDRESS": ""}
    backends = {"local pool, 2 workers": ["--backend", "local"], "ray, 2 workers": ["--backend", "ray"]}
    res: dict[str, list] = {b: [] for b in backends}
    for rep in range(args.study_repeats):
        for name, flags in backends.items():
            with tempfile.TemporaryDirectory() as tmp:
                (Path(tmp) / "study.toml").write_text(STUDY)
                load = os.getloadavg()[0]
                t0 = time.perf_counter()
                try:
                    p = subprocess.run([sys.executable, "-m", "landscape", "study", "study.toml", *flags, "--workers",
                                        "2", "--threads", "1", "--quiet"], cwd=tmp, env=env, capture_output=True,
                                       text=True, timeout=600)
                    ok, err = p.returncode == 0, p.stderr.strip()[-300:]
                except subprocess.TimeoutExpired:
                    ok, err = False, "timed out after 600 s"
                seconds = time.perf_counter() - t0
                done = 0
                if ok:
                    rows = json.loads((Path(tmp) / "study" / "results.json").read_text())["rows"]
                    done = sum(r["status"] == "done" for r in rows)
                res[name].append({"seconds": seconds, "done": done, "ok": ok, "error": None if ok else err,
                                  "load": round(load, 2)})
    out = []
    for name, rs in res.items():
        if not all(r["ok"] for r in rs):
            out.append({"contender": name, "skipped": f"failed: {next(r['error'] for r in rs if not r['ok'])}"})
            continue
        walls = [r["seconds"] for r in rs]
        out.append({"contender": name, "runs": STUDY_RUNS, "done": rs[0]["done"], "wall": spread(walls),
                    "runs_per_min": spread([60 * STUDY_RUNS / s for s in walls]),
                    "loads": [r["load"] for r in rs], "threads": 1, "seeds": [0]})
    local = res["local pool, 2 workers"]
    for r in out:
        if "wall" in r and r["contender"].startswith("ray") and all(x["ok"] for x in local):
            r["throughput_vs_local"] = spread([a["seconds"] / b["seconds"] for a, b in zip(local, res[r["contender"]])])
    return {"note": "wall includes process start (and Ray's cluster start)", "rows": out}


# ------------------------------------------------------------------------------------------- the matrix
CELL_FNS: dict[str, Callable[[wl.Workload, argparse.Namespace], dict]] = {
    "eigen": eigen, "trace": trace, "surface": surface, "sam-step": sam_step, "memory": memory}


def cell_settings(section: str, args: argparse.Namespace) -> dict:
    keys = {"eigen": ("quick", "repeats"),
            "trace": ("seeds_trace", "budgets", "exact_max_params", "reference_budget"),
            "surface": ("quick", "full", "repeats"), "sam-step": ("repeats", "steps"),
            "memory": ("memory_repeats",), "study": ("study_repeats",)}[section]
    return json.loads(json.dumps({"threads": args.threads, **{k: getattr(args, k) for k in keys}}))  # as stored


def run_matrix(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    res: dict = {"cells": {}}
    if args.out.exists():  # cells of other sections / workloads are kept; --fresh recomputes the selected ones
        res = json.loads(args.out.read_text())
    res["setting"] = {"torch": torch.__version__, "threads": args.threads, "cpus": os.cpu_count(),
                      "command": " ".join(sys.argv)}
    loaded: dict[tuple[str, str], wl.Workload] = {}
    for section in args.sections:
        targets = [("study", "tiny")] if section == "study" else args.workloads
        for family, size in targets:
            key = f"{section}/{family}/{size}" if section != "study" else "study"
            settings = cell_settings(section, args)
            old = res["cells"].get(key)
            if old is not None and old.get("settings") == settings and "error" not in old and not args.fresh:
                print(f"[{key}] done before, skipped", flush=True)
                continue
            print(f"[{key}] ...", flush=True)
            t0, start = time.perf_counter(), machine()
            try:
                if section == "study":
                    out = study(args)
                else:
                    if (family, size) not in loaded:
                        loaded[(family, size)] = wl.load(family, size)
                    w = loaded[(family, size)]
                    torch.manual_seed(0)
                    out = {"describe": w.describe(), **CELL_FNS[section](w, args)}
            except Exception as e:  # one broken cell does not lose the others
                out = {"error": f"{type(e).__name__}: {e}"[:500]}
            res["cells"][key] = {"section": section, "workload": f"{family}/{size}", "settings": settings,
                                 "machine_start": start, "machine_end": machine(),
                                 "seconds": time.perf_counter() - t0, **out}
            atomic_write_json(args.out, res)
            print(f"[{key}] {time.perf_counter() - t0:.1f} s, load {os.getloadavg()[0]:.2f}", flush=True)
    return res


# ------------------------------------------------------------------------------------------ the tables
def _w(d: dict | None, fmt: str = "{:.3g}") -> str:
    if not d:
        return "-"
    return f"{fmt.format(d['median'])} [{fmt.format(d['min'])}, {fmt.format(d['max'])}]"


def _load(r: dict) -> str:
    loads = r.get("loads") or [r.get("load")]
    return f"{statistics.median([x for x in loads if x is not None]):.1f}" if any(x is not None for x in loads) else "-"


def markdown(res: dict) -> str:
    cells = res["cells"]
    out = [f"torch {res['setting']['torch']}, {res['setting']['threads']} thread(s), {res['setting']['cpus']} CPUs. "
           "Wall: median [min, max] over interleaved repeats; ratios per round, anchor / ours (> 1: ours faster)."]

    def section(name: str, header: list[str], lines: Callable[[str, dict], list[list[str]]]) -> None:
        chosen = [(k, c) for k, c in cells.items() if c["section"] == name]
        if not chosen:
            return
        out.append(f"\n### {name}\n")
        out.append("| " + " | ".join(header) + " |")
        out.append("|" + "---|" * len(header))
        for k, c in chosen:
            if "error" in c:
                out.append("| " + " | ".join([c["workload"], f"error: {c['error'][:120]}"] + [""] * (len(header) - 2))
                           + " |")
                continue
            for ln in lines(c["workload"], c):
                out.append("| " + " | ".join(ln) + " |")

    def failed(wk: str, r: dict, n: int) -> list[str]:
        return [wk, r["contender"], (r.get("failed") or r.get("skipped") or "")[:100]] + [""] * (n - 3)

    def eigen_lines(wk: str, c: dict) -> list[list[str]]:
        lines, ref = [], c["reference"]
        mem = {r["contender"]: r for r in cells.get(f"memory/{wk}", {}).get("rows", []) if "extra_mib" in r}
        for r in c["rows"]:
            if "failed" in r:
                lines.append(failed(wk, r, 9))
                continue
            if not (r["contender"].startswith("ours") or r.get("best_setting")):
                continue
            mark = " (best)" if r.get("best_setting") else ""
            lines.append([wk, r["contender"] + mark, f"{r['hvps']:.1f}",
                          "1" if r["contender"].startswith("ours") else f"{r['hvp_ratio']:.2f}x",
                          f"{r['error']:.1e}", _w(r["wall"]), _w(r.get("wall_ratio")),
                          f"{mem[r['contender']]['extra_mib']['median']:.1f}" if r["contender"] in mem else "-",
                          _load(r)])
        lines.append([wk, f"reference: {ref['hvps']} HVPs float64, {ref['seconds']:.1f} s"] + [""] * 7)
        return lines

    section("eigen", ["workload", "contender", "HVPs", "HVPs / ours", "max rel err", "wall s", "wall / ours",
                      "peak extra MiB (memory)", "load"], eigen_lines)

    def trace_lines(wk: str, c: dict) -> list[list[str]]:
        lines = []
        for r in c["rows"]:
            if "failed" in r:
                lines.append(failed(wk, r, 8))
                continue
            lines.append([wk, r["contender"], str(r["budget"]), f"{r['hvps']:.0f}", f"{r['rms_rel_error']:.2e}",
                          _w(r["wall"]), _w(r.get("wall_ratio")), _load(r)])
        lines.append([wk, f"reference: {c['reference']['kind']}", "", "", "", "", "", ""])
        return lines

    section("trace", ["workload", "contender", "budget", "HVPs", "RMS rel err", "wall s", "wall / ours", "load"],
            trace_lines)

    def surface_lines(wk: str, c: dict) -> list[list[str]]:
        lines = []
        for r in c["rows"]:
            if "failed" in r:
                lines.append(failed(wk, r, 9))
                continue
            share = r.get("tuning_share")
            lines.append([wk, r["contender"], r["grid"], _w(r["wall"]), f"{r['points_per_s']:.0f}",
                          _w(r["speed_vs_loop"], "{:.2f}"), "-" if share is None else f"{share:.0%}",
                          f"{r['gflops']:.2f} / {c['mm_roofline_gflops']:.0f}", _load(r)])
        return lines

    section("surface", ["workload", "contender", "grid", "wall s", "points/s", "speed vs loop", "tuning share",
                        "GFLOP/s / mm roofline", "load"], surface_lines)

    def sam_lines(wk: str, c: dict) -> list[list[str]]:
        return [failed(wk, r, 6) if "failed" in r else
                [wk, r["contender"], str(r["forwards_per_step"]), _w({k: 1e3 * v for k, v in r["wall"].items()}),
                 _w(r.get("wall_ratio")), _load(r)] for r in c["rows"]]

    section("sam-step", ["workload", "contender", "forwards/step", "step ms", "wall / ours", "load"], sam_lines)

    def memory_lines(wk: str, c: dict) -> list[list[str]]:
        return [failed(wk, r, 6) if "extra_mib" not in r else
                [wk, r["contender"], f"{r['hvps']}", _w(r["extra_mib"]), _w(r.get("vs_pyhessian"), "{:.2f}"),
                 _load(r)] for r in c["rows"]]

    section("memory", ["workload", "contender", "HVPs", "peak extra MiB", "vs PyHessian", "load"], memory_lines)

    def study_lines(wk: str, c: dict) -> list[list[str]]:
        return [failed("tiny study (8 runs)", r, 6) if "wall" not in r else
                ["tiny study (8 runs)", r["contender"], _w(r["wall"]), _w(r["runs_per_min"]),
                 _w(r.get("throughput_vs_local"), "{:.2f}"), _load(r)] for r in c["rows"]]

    section("study", ["study", "backend", "wall s", "runs/min", "throughput vs local", "load"], study_lines)
    return "\n".join(out)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workloads", default=None, help="e.g. mlp,cnn/large [default: all; --quick: all small]")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated: {', '.join(SECTIONS)}")
    p.add_argument("--repeats", type=int, default=None, help="interleaved rounds [default: 3; --quick: 1]")
    p.add_argument("--quick", action="store_true", help="small workloads, 1 repeat, one setting per anchor, "
                   "21x21 surfaces only, trace at 30 HVPs with 5 seeds and a shorter reference")
    p.add_argument("--full", action="store_true", help="51x51 surfaces on the large workloads too")
    p.add_argument("--threads", type=int, default=1, help="torch threads [default: 1]")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "matrix" / "matrix.json")
    p.add_argument("--fresh", action="store_true",
                   help="recompute the selected cells (default: skip those --out holds; other cells are kept)")
    p.add_argument("--steps", type=int, default=10, help="sam-step: steps per round")
    p.add_argument("--trace-seeds", type=int, default=None, help="trace: seeds per budget [default: 10; --quick: 5]")
    p.add_argument("--exact-max-params", type=int, default=None,
                   help="trace: exact (dense) reference up to this many parameters [default: 5000; --quick: 1100]")
    p.add_argument("--reference-budget", type=int, default=None,
                   help="trace: HVPs of the long float64 reference run [default: 10x the largest budget: 1020; "
                   "--quick: 300]")
    args = p.parse_args(argv)
    args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = set(args.sections) - set(SECTIONS)
    if unknown:
        p.error(f"unknown sections {sorted(unknown)}; known: {', '.join(SECTIONS)}")
    if args.workloads is None and args.quick:
        args.workloads = ",".join(f"{f}/small" for f in wl.FAMILIES)
    args.workloads = wl.parse(args.workloads)
    args.repeats = args.repeats or (1 if args.quick else 3)
    args.seeds_trace = args.trace_seeds or (5 if args.quick else 10)
    args.memory_repeats = 1 if args.quick else 2
    args.study_repeats = 1 if args.quick else 2
    args.budgets = BUDGETS[:1] if args.quick else BUDGETS
    if args.exact_max_params is None:
        args.exact_max_params = 1100 if args.quick else 5000
    if args.reference_budget is None:
        args.reference_budget = 10 * max(args.budgets)
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    t0 = time.perf_counter()
    res = run_matrix(args)
    table = markdown(res)
    print("\n" + table)
    print(f"\n{time.perf_counter() - t0:.0f} s; JSON: {args.out}")
    return res


if __name__ == "__main__":
    main()
