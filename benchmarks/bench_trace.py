"""Trace estimators at equal HVP budgets on every workload of the benchmark matrix, against curvlinops and
hessian-eigenthings.

    pip install -e ".[bench]"   # curvlinops-for-pytorch, hessian-eigenthings
    python benchmarks/bench_trace.py [--workloads all] [--seeds 40] [--budgets 30 102] [--wall-repeats 3]

Workloads: ``benchmarks/workloads.py`` (MLP, CNN, ResNet-BN, LSTM, ViT, HF GPT-2; small and large), the Hessian
of the mean loss over each workload's data (micro-batches of its ``batch_size``, eval mode).

1. Accuracy.  Where ``P <= --dense-max`` (every small workload) the Hessian is made dense in float64 (``P``
   forward-mode products) and the exact trace read off; every estimator runs ``--seeds`` seeds per budget on
   that matrix (the products a network gives, without float32 rounding) -> RMS relative error and how often
   ``|error| <= 2 stderr`` (the reported standard error's coverage; nominal 95% for a normal error). Ours:
   Hutchinson, Hutch++ (random, Lanczos and block-Krylov sketch), XTrace; curvlinops' ``hutchinson_trace``,
   ``hutchpp_trace``, ``xtrace``; hessian-eigenthings' ``hutch_plus_plus``.  Larger workloads have no exact
   trace: the reference is our default with ``--ref-budget`` float64 products (its standard error is
   reported beside it), and ``--net-seeds`` seeds of our default and curvlinops' XTrace run on the network
   itself (float32); their RMS error against the reference includes the reference's own error.
2. Time (CPU seconds of the single-threaded process, which other processes on a shared machine barely
   disturb) at equal budgets on the networks (float32 products, the workload's micro-batches): our default
   and XTrace vs curvlinops' ``xtrace`` on its ``HessianLinearOperator`` and hessian-eigenthings'
   ``hutch_plus_plus`` on its ``HessianOperator``; medians of ``--wall-repeats`` interleaved runs, each on a
   fresh operator (so graph building is included).

3. With ``--rtol R`` (e.g. 0.01, what ``analyze`` asks), the stopping rule instead of a fixed budget (at most
   ``--rtol-budget`` products): the default's sized Krylov sketch (``_SketchSize`` in
   ``landscape/curvature/trace.py``) against the former half-the-budget sketch (``rank = budget // 2``) and
   XTrace. On a dense Hessian, ``--seeds`` seeds: products spent, RMS relative error, coverage of 2 stderr;
   on the network, CPU seconds of each (fresh objective per run, ``--wall-repeats`` interleaved rounds of 2
   seeds).

Writes ``<out>/bench_trace.json`` and prints the tables. Compare times within one run.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks import workloads as matrix  # noqa: E402
from landscape.curvature.operators import MatrixOperator  # noqa: E402
from landscape.curvature.trace import (  # noqa: E402
    DEFAULT_TRACE_METHOD, estimate_trace, hutchinson, hutchpp, xtrace)
from landscape.io import atomic_write_json  # noqa: E402
from landscape.objective import Objective  # noqa: E402


def objective(w: matrix.Workload, **kw: Any) -> Objective:
    return Objective(w.model, w.x, w.y, loss=w.criterion, batch_size=w.batch_size, **kw)


def ours(budget: int) -> dict[str, Callable[[Any, int], Any]]:
    return {
        "hutchinson": lambda A, s: hutchinson(A, max_samples=budget, rtol=None, seed=s),
        "hutchpp-random": lambda A, s: hutchpp(A, max_samples=budget, sketch="random", rtol=None, seed=s),
        "hutchpp-lanczos": lambda A, s: hutchpp(A, max_samples=budget, sketch="lanczos", rtol=None, seed=s),
        "hutchpp-block": lambda A, s: hutchpp(A, max_samples=budget, sketch="block", rtol=None, seed=s),
        "xtrace": lambda A, s: xtrace(A, max_samples=budget, rtol=None, seed=s),
    }


def references(budget: int) -> dict[str, Callable[[torch.Tensor, int], tuple[float, float]]]:
    """``(estimate, stderr or nan)`` of the anchors' estimators on a dense matrix."""
    out: dict[str, Callable] = {}
    try:
        from curvlinops import hutchinson_trace, hutchpp_trace
        from curvlinops import xtrace as cl_xtrace

        def seeded(f):
            def run(A, s):
                torch.manual_seed(s)
                return float(f(A, budget)), float("nan")
            return run

        out.update({"curvlinops hutchinson": seeded(hutchinson_trace), "curvlinops hutchpp": seeded(hutchpp_trace),
                    "curvlinops xtrace": seeded(cl_xtrace)})
    except ImportError:
        pass
    try:
        from hessian_eigenthings.algorithms.trace import hutch_plus_plus
        from hessian_eigenthings.operators.base import LambdaOperator

        def he(A, s):
            r = hutch_plus_plus(LambdaOperator(lambda v: A @ v, A.shape[0], dtype=A.dtype), num_matvecs=budget, seed=s)
            return float(r.estimate), float(r.stderr)

        out["hessian-eigenthings hutch++"] = he
    except ImportError:
        pass
    return out


def accuracy(A: torch.Tensor, budgets: list[int], seeds: int) -> dict:
    tr = float(torch.trace(A))
    rows: dict = {}
    for budget in budgets:
        for name, f in ours(budget).items():
            errs, cover = [], []
            try:
                for s in range(seeds):
                    r = f(MatrixOperator(A), s)
                    errs.append(r.trace - tr)
                    cover.append(abs(r.trace - tr) <= 2 * r.stderr)
                    hvps = r.num_matvecs
            except ValueError as e:  # an estimator that refuses the budget
                rows.setdefault(name, {})[budget] = {"error": str(e)}
                continue
            rows.setdefault(name, {})[budget] = _summary(errs, tr, cover, hvps)
        for name, f in references(budget).items():
            errs, cover = [], []
            for s in range(seeds):
                est, se = f(A, s)
                errs.append(est - tr)
                cover.append(abs(est - tr) <= 2 * se)
            rows.setdefault(name, {})[budget] = _summary(errs, tr, cover if not np.isnan(se) else None, budget)
    return rows


def _summary(errs: list[float], tr: float, cover: list[bool] | None, hvps: int) -> dict:
    e = np.asarray(errs) / abs(tr)
    return {"rms_rel": float(np.sqrt((e**2).mean())), "mean_rel": float(e.mean()),
            "mean_rel_se": float(e.std(ddof=1) / np.sqrt(len(e))), "coverage_2se": None if cover is None
            else float(np.mean(cover)), "hvps": int(hvps), "seeds": len(e)}


def network_accuracy(w: matrix.Workload, budgets: list[int], seeds: int, ref_budget: int) -> dict:
    """No exact trace: a float64 reference from ``ref_budget`` products of our default, then ``seeds`` seeds of
    our default and curvlinops' XTrace on the network (float32) at each budget."""
    t0 = time.process_time()
    ref = estimate_trace(objective(w, dtype=torch.float64).hessian, max_samples=ref_budget, rtol=None, seed=10_000)
    tr = ref.trace
    out: dict = {"reference": {"trace": tr, "stderr": ref.stderr, "rel_stderr": ref.stderr / abs(tr),
                               "hvps": ref.num_matvecs, "method": ref.method, "cpu_seconds": time.process_time() - t0}}
    rows: dict = {}
    for budget in budgets:
        errs, cover = [], []
        for s in range(seeds):
            r = estimate_trace(objective(w).hessian, max_samples=budget, rtol=None, seed=s)
            errs.append(r.trace - tr)
            cover.append(abs(r.trace - tr) <= 2 * r.stderr)
        rows.setdefault(f"ours {DEFAULT_TRACE_METHOD}", {})[budget] = _summary(errs, tr, cover, budget)
        if importlib.util.find_spec("curvlinops") is None:
            continue
        errs = []
        for s in range(seeds):
            torch.manual_seed(s)
            errs.append(curvlinops_xtrace(w.model, w.criterion, list(w.loader()), budget)[0] - tr)
        rows.setdefault("curvlinops xtrace", {})[budget] = _summary(errs, tr, None, budget)
    out["hessian"] = rows
    return out


def wall(w: matrix.Workload, budgets: list[int], repeats: int) -> dict:
    """Median CPU seconds per estimate on the network (float32 products, one thread), interleaved; and the data
    passes our estimators took."""
    runs: dict[str, Callable[[int], Any]] = {
        f"ours {DEFAULT_TRACE_METHOD} (default)": lambda b: estimate_trace(objective(w).hessian, max_samples=b,
                                                                         rtol=None),
        "ours xtrace": lambda b: xtrace(objective(w).hessian, max_samples=b, rtol=None, block=b),
    }
    if importlib.util.find_spec("curvlinops") is not None:
        runs["curvlinops xtrace"] = lambda b: curvlinops_xtrace(w.model, w.criterion, list(w.loader()), b)[0]
    try:
        from hessian_eigenthings.algorithms.trace import hutch_plus_plus
        from hessian_eigenthings.operators.hessian import HessianOperator

        def loss(m, batch):
            return w.criterion(m(batch[0]), batch[1])

        runs["hessian-eigenthings hutch++"] = lambda b: hutch_plus_plus(
            HessianOperator(w.model, list(w.loader()), loss), num_matvecs=b, seed=0).estimate
    except ImportError:
        pass
    times: dict = {name: {b: [] for b in budgets} for name in runs}
    passes: dict = {}
    for _ in range(repeats):
        for b in budgets:
            for name, f in runs.items():
                t0 = time.process_time()  # CPU seconds of this (single-threaded) process: robust to a loaded machine
                r = f(b)
                times[name][b].append(time.process_time() - t0)
                if hasattr(r, "num_passes"):
                    passes.setdefault(name, {})[b] = r.num_passes
    out = {name: {b: float(np.median(t)) for b, t in v.items()} for name, v in times.items()}
    return {"cpu_seconds": out, "passes": passes}


def adaptive_runs(budget: int, rtol: float) -> dict[str, Callable[[Any, int], Any]]:
    """The stopping-rule contenders of section 3 on an operator ``A`` with seed ``s``."""
    return {
        f"ours {DEFAULT_TRACE_METHOD} (sized sketch)": lambda A, s: estimate_trace(A, max_samples=budget, rtol=rtol,
                                                                                  seed=s),
        f"ours {DEFAULT_TRACE_METHOD}, half-budget sketch": lambda A, s: estimate_trace(
            A, max_samples=budget, rtol=rtol, seed=s, rank=budget // 2),
        "ours xtrace": lambda A, s: xtrace(A, max_samples=budget, rtol=rtol, seed=s),
    }


def adaptive_dense(A: torch.Tensor, budget: int, rtol: float, seeds: int) -> dict:
    """Section 3 on a dense Hessian: mean products, RMS relative error and 2-stderr coverage per contender."""
    tr, out = float(torch.trace(A)), {}
    for name, run in adaptive_runs(budget, rtol).items():
        rs = [run(MatrixOperator(A), s) for s in range(seeds)]
        err = np.array([(r.trace - tr) / tr for r in rs])
        out[name] = {"hvps": float(np.mean([r.num_matvecs for r in rs])), "rms_rel": float(np.sqrt(np.mean(err**2))),
                     "coverage_2se": float(np.mean([abs(r.trace - tr) <= 2 * r.stderr for r in rs])),
                     "converged": float(np.mean([r.converged for r in rs])),
                     "rank": float(np.mean([r.rank for r in rs]))}
    return out


def adaptive_wall(w: matrix.Workload, budget: int, rtol: float, repeats: int) -> dict:
    """Section 3 on the network: median CPU seconds, products and reported relative stderr per contender."""
    runs, got = adaptive_runs(budget, rtol), {}
    for _ in range(repeats):
        for name, run in runs.items():
            for seed in range(2):
                t0 = time.process_time()
                r = run(objective(w).hessian, seed)
                got.setdefault(name, []).append((time.process_time() - t0, r.num_matvecs, r.stderr / abs(r.trace)))
    return {name: {"cpu_seconds": float(np.median([g[0] for g in v])), "hvps": float(np.mean([g[1] for g in v])),
                   "rel_stderr": float(np.mean([g[2] for g in v]))} for name, v in got.items()}


def curvlinops_xtrace(model: nn.Module, criterion: nn.Module, data: Any, budget: int) -> tuple[float, int]:
    """curvlinops' ``xtrace`` on its ``HessianLinearOperator`` over ``data`` (batches): ``(estimate, HVPs)``, the
    full-data products counted column by column at the operator's ``_matmat``."""
    from curvlinops import HessianLinearOperator
    from curvlinops import xtrace as cl_xtrace

    params = [p for p in model.parameters() if p.requires_grad]
    H = HessianLinearOperator(model, criterion, params, data, check_deterministic=False)
    matmat, hvps = H._matmat, [0]

    def counted(X):  # X: one (*param.shape, columns) tensor per parameter
        hvps[0] += X[0].shape[-1]
        return matmat(X)

    H._matmat = counted
    return float(cl_xtrace(H, budget)), hvps[0]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_trace")
    p.add_argument("--workloads", default="all", help="e.g. 'mlp,cnn/large' (benchmarks/workloads.py:parse)")
    p.add_argument("--seeds", type=int, default=40, help="seeds per budget on a dense Hessian")
    p.add_argument("--net-seeds", type=int, default=5, help="seeds per budget on a network without a dense Hessian")
    p.add_argument("--dense-max", type=int, default=5000, help="largest P made dense")
    p.add_argument("--ref-budget", type=int, default=600, help="products of the reference where P > --dense-max")
    p.add_argument("--budgets", type=int, nargs="+", default=[30, 102])
    p.add_argument("--wall-repeats", type=int, default=3)
    p.add_argument("--rtol", type=float, default=None, help="section 3: the stopping rule at this relative stderr")
    p.add_argument("--rtol-budget", type=int, default=150, help="section 3: most products [default: 150]")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    res: dict = {"setting": {"seeds": args.seeds, "net_seeds": args.net_seeds, "budgets": args.budgets,
                             "default": DEFAULT_TRACE_METHOD, "threads": torch.get_num_threads(),
                             "load_before": os.getloadavg()[0]}, "workloads": {}}
    for family, size in matrix.parse(args.workloads):
        w = matrix.load(family, size)
        entry: dict = {"parameters": w.num_params, **w.describe()}
        if w.num_params <= args.dense_max:
            t0 = time.perf_counter()
            cache = args.out / f"dense_{family}_{size}.pt"
            if cache.exists():  # the same workload (seeded training) gives the same matrix
                H = torch.load(cache)
            else:
                H = objective(w, dtype=torch.float64, hvp_mode="forward", max_block=64).hessian.to_dense()
                H = (H + H.T) / 2
                args.out.mkdir(parents=True, exist_ok=True)
                torch.save(H, cache)
            entry.update(dense_seconds=time.perf_counter() - t0, hessian_trace=float(torch.trace(H)),
                         reference="exact (dense float64)")
            print(f"{w.name}: P={w.num_params}, tr H={entry['hessian_trace']:.6g} (exact)", flush=True)
            if args.seeds > 0 and args.rtol is None:
                entry["hessian"] = accuracy(H, args.budgets, args.seeds)
            if args.seeds > 0 and args.rtol is not None:
                entry["adaptive_dense"] = adaptive_dense(H, args.rtol_budget, args.rtol, args.seeds)
            del H
        elif args.net_seeds > 0 and args.rtol is None:
            entry.update(network_accuracy(w, args.budgets, args.net_seeds, args.ref_budget))
            ref = entry["reference"]
            entry["hessian_trace"] = ref["trace"]
            entry["reference"] = f"{ref['method']}, {ref['hvps']} float64 products, rel. stderr {ref['rel_stderr']:.1e}"
            print(f"{w.name}: P={w.num_params}, tr H ~ {ref['trace']:.6g} ({entry['reference']})", flush=True)
        if args.wall_repeats > 0 and args.rtol is None:
            entry.update(wall(w, args.budgets, args.wall_repeats))
        if args.wall_repeats > 0 and args.rtol is not None:
            entry["adaptive_wall"] = adaptive_wall(w, args.rtol_budget, args.rtol, args.wall_repeats)
        entry["load_after"] = os.getloadavg()[0]
        res["workloads"][w.name] = entry
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "bench_trace.json", res)
        print_tables({w.name: entry}, args.budgets)
    res["summary"] = summary(res["workloads"], args.budgets)
    atomic_write_json(args.out / "bench_trace.json", res)
    print("\nRMS error / curvlinops xtrace's, over workloads x budgets: geometric mean, worst")
    for method, v in sorted(res["summary"].items(), key=lambda kv: kv[1]["geomean_ratio"]):
        print(f"  {method:32s}{v['geomean_ratio']:>8.3f}{v['worst_ratio']:>8.3f}   ({v['cases']} cases)")
    return res


def summary(works: dict, budgets: list[int]) -> dict:
    """Per method: RMS error relative to curvlinops xtrace's on the same case (geometric mean and worst)."""
    ratios: dict[str, list[float]] = {}
    for w in works.values():
        for kind in ("hessian",):
            rows = w.get(kind, {})
            for b in budgets:
                ref = rows.get("curvlinops xtrace", {}).get(b)
                if ref is None:
                    continue
                for method, by in rows.items():
                    r = by.get(b)
                    if r is not None and "rms_rel" in r:
                        ratios.setdefault(method, []).append(r["rms_rel"] / ref["rms_rel"])
    return {m: {"geomean_ratio": float(np.exp(np.mean(np.log(v)))), "worst_ratio": float(max(v)), "cases": len(v)}
            for m, v in ratios.items()}


def print_tables(works: dict, budgets: list[int]) -> None:
    for name, w in works.items():
        for kind in ("hessian",):
            if kind not in w:
                continue
            print(f"\n{name} {kind} (P={w['parameters']}, reference {w['reference']}): RMS relative error "
                  "[coverage of 2 stderr]")
            for method, by in w[kind].items():
                cells = []
                for b in budgets:
                    r = by.get(b) or by.get(str(b))
                    if r is None or "error" in r:
                        cells.append(f"{'n/a':>18}")
                    else:
                        cov = "" if r["coverage_2se"] is None else f" [{r['coverage_2se']:.2f}]"
                        cells.append(f"{r['rms_rel']:>10.3e}{cov:>8}")
                print(f"  {method:32s}" + "".join(cells))
        for key, title in (("adaptive_dense", "dense, stopping rule: products, RMS rel. error, coverage"),
                           ("adaptive_wall", "network, stopping rule: CPU s (median), products, rel. stderr")):
            if key in w:
                print(f"\n{name} {title}")
                for method, r in w[key].items():
                    dense = key == "adaptive_dense"
                    cells = (f"{r['hvps']:>8.1f}{r['rms_rel']:>10.3e}{r['coverage_2se']:>6.2f}" if dense
                             else f"{r['cpu_seconds']:>8.3f}{r['hvps']:>8.1f}{r['rel_stderr']:>10.3e}")
                    print(f"  {method:44s}{cells}")
        if "cpu_seconds" in w:
            print(f"\n{name} CPU seconds (median), data passes {w['passes']}")
            for method, by in w["cpu_seconds"].items():
                print(f"  {method:32s}" + "".join(f"{(by.get(b) or by.get(str(b))):>10.3f}" for b in budgets))


if __name__ == "__main__":
    main()
