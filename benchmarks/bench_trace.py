"""Trace estimators at equal HVP budgets on networks with an exact trace, against curvlinops and hessian-eigenthings.

    pip install -e ".[bench]"   # curvlinops-for-pytorch, hessian-eigenthings
    python benchmarks/bench_trace.py [--out runs/bench_trace] [--seeds 40] [--budgets 30 102] [--wall-repeats 3]

Workloads: an MLP, a small 1-D CNN and a small ResNet with BatchNorm (eval mode), each trained briefly with
Adam on ``benchmarks.problems:spirals``, their Hessian (indefinite) and GGN (positive semi-definite) over
``--samples`` training points, made dense in float64 (``P`` products) for the exact trace.

1. Accuracy: every estimator runs on the dense float64 matrix (the same products a network would give,
   without rounding), ``--seeds`` seeds per budget -> RMS relative error, and how often ``|error| <= 2 stderr``
   (the reported standard error's coverage; nominal 95% for a normal error). Ours: Hutchinson, Hutch++
   (random and Lanczos sketch), XTrace, XNysTrace (PSD only); curvlinops' ``hutchinson_trace``,
   ``hutchpp_trace``, ``xtrace``; hessian-eigenthings' ``hutch_plus_plus``.
2. Time (CPU seconds of the single-threaded process, which other processes on a shared machine barely
   disturb) at equal budgets on the networks themselves (float32, full-batch products): our default vs
   curvlinops' ``xtrace`` on its ``HessianLinearOperator`` and hessian-eigenthings' ``hutch_plus_plus`` on its
   ``HessianOperator``; medians of ``--wall-repeats`` interleaved runs, each on a fresh operator.

Writes ``<out>/bench_trace.json`` and prints the tables. Wall times come from a shared CPU: compare within one run.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
import torch.nn as nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.problems import spirals  # noqa: E402
from landscape.curvature.operators import MatrixOperator  # noqa: E402
from landscape.curvature.trace import (  # noqa: E402
    DEFAULT_TRACE_METHOD, estimate_trace, hutchinson, hutchpp, xnystrace, xtrace)
from landscape.io import atomic_write_json  # noqa: E402
from landscape.models.cnn import CNN  # noqa: E402
from landscape.models.mlp import MLP  # noqa: E402
from landscape.models.resnet import CifarResNet  # noqa: E402
from landscape.objective import Objective  # noqa: E402


class Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), *self.shape)


def workloads() -> dict[str, Callable[[], nn.Module]]:
    """Small members of three model families (~800-950 parameters: dense Hessians stay cheap)."""
    return {
        "mlp": lambda: MLP(input_shape=[48], num_outputs=5, hidden=[12, 12]),
        "cnn": lambda: CNN(input_shape=[48], num_outputs=5, channels=[4, 8], hidden=8),
        "resnet-bn": lambda: nn.Sequential(Reshape(3, 4, 4), CifarResNet([3, 4, 4], 5, (3, 6), (1, 1), "A", "resnet")),
    }


def trained(factory: Callable[[], nn.Module], x: torch.Tensor, y: torch.Tensor, steps: int) -> nn.Module:
    torch.manual_seed(0)
    model = factory()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        idx = torch.randint(len(x), (128,), generator=torch.Generator().manual_seed(step))
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    return model.eval()


def ours(budget: int) -> dict[str, Callable[[Any, int], Any]]:
    return {
        "hutchinson": lambda A, s: hutchinson(A, max_samples=budget, rtol=None, seed=s),
        "hutchpp-random": lambda A, s: hutchpp(A, max_samples=budget, sketch="random", rtol=None, seed=s),
        "hutchpp-lanczos": lambda A, s: hutchpp(A, max_samples=budget, sketch="lanczos", rtol=None, seed=s),
        "hutchpp-block": lambda A, s: hutchpp(A, max_samples=budget, sketch="block", rtol=None, seed=s),
        "xtrace": lambda A, s: xtrace(A, max_samples=budget, rtol=None, seed=s),
        "xnystrace": lambda A, s: xnystrace(A, max_samples=budget, rtol=None, seed=s),
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
            except ValueError as e:  # XNysTrace on an indefinite Hessian
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


def wall(model: nn.Module, x: torch.Tensor, y: torch.Tensor, budgets: list[int], repeats: int) -> dict:
    """Median CPU seconds per estimate on the network (float32 full-batch products, one thread), interleaved."""
    def objective(**kw: Any) -> Objective:
        return Objective(model, x, y, batch_size=len(x), **kw)

    fast = {"hvp_mode": "forward", "max_block": 64}
    runs: dict[str, Callable[[int], float]] = {
        f"ours {DEFAULT_TRACE_METHOD} (default)": lambda b: estimate_trace(
            objective().hessian, max_samples=b, rtol=None).trace,
        f"ours {DEFAULT_TRACE_METHOD}, forward-mode HVPs": lambda b: estimate_trace(
            objective(**fast).hessian, max_samples=b, rtol=None).trace,
        "ours hutchpp-lanczos": lambda b: estimate_trace(objective().hessian, "hutchpp-lanczos", max_samples=b,
                                                         rtol=None).trace,
        "ours xtrace": lambda b: xtrace(objective().hessian, max_samples=b, rtol=None).trace,
        "ours xtrace, forward-mode HVPs in blocks of 64": lambda b: xtrace(
            objective(**fast).hessian, max_samples=b, rtol=None, block=64).trace,
    }
    try:
        import curvlinops  # noqa: F401

        runs["curvlinops xtrace"] = lambda b: curvlinops_xtrace(model, nn.CrossEntropyLoss(), [(x, y)], b)[0]
    except ImportError:
        pass
    try:
        from hessian_eigenthings.algorithms.trace import hutch_plus_plus
        from hessian_eigenthings.operators.hessian import HessianOperator

        def loss(m, batch):
            return nn.functional.cross_entropy(m(batch[0]), batch[1])

        runs["hessian-eigenthings hutch++"] = lambda b: hutch_plus_plus(
            HessianOperator(model, [(x, y)], loss), num_matvecs=b, seed=0).estimate
    except ImportError:
        pass
    times: dict = {name: {b: [] for b in budgets} for name in runs}
    for _ in range(repeats):
        for b in budgets:
            for name, f in runs.items():
                t0 = time.process_time()  # CPU seconds of this (single-threaded) process: robust to a loaded machine
                f(b)
                times[name][b].append(time.process_time() - t0)
    return {name: {b: float(np.median(t)) for b, t in v.items()} for name, v in times.items()}


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
    p.add_argument("--samples", type=int, default=256, help="training points the curvature is taken over")
    p.add_argument("--steps", type=int, default=300, help="Adam steps of training")
    p.add_argument("--seeds", type=int, default=40)
    p.add_argument("--budgets", type=int, nargs="+", default=[30, 102])
    p.add_argument("--wall-repeats", type=int, default=3)
    p.add_argument("--only", nargs="*", default=None, help="workload names")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    data = spirals(n_train=2000, n_test=10, dim=48)
    x, y = data.x_train, data.y_train
    res: dict = {"setting": {"samples": args.samples, "seeds": args.seeds, "budgets": args.budgets,
                             "default": DEFAULT_TRACE_METHOD, "threads": torch.get_num_threads()}, "workloads": {}}
    for name, factory in workloads().items():
        if args.only and name not in args.only:
            continue
        model = trained(factory, x, y, args.steps)
        xs, ys = x[: args.samples], y[: args.samples]
        obj = Objective(model, xs, ys, batch_size=args.samples, dtype=torch.float64)
        t0 = time.perf_counter()
        H, G = obj.hessian.to_dense(), obj.ggn.to_dense()
        H, G = (H + H.T) / 2, (G + G.T) / 2
        ev = torch.linalg.eigvalsh(H)
        w: dict = {"parameters": obj.num_params, "dense_seconds": time.perf_counter() - t0,
                   "hessian_trace": float(torch.trace(H)), "ggn_trace": float(torch.trace(G)),
                   "hessian_negative_mass": float(-ev[ev < 0].sum() / ev.abs().sum()),
                   "hessian_top10_mass": float(ev.abs().sort(descending=True).values[:10].sum() / ev.abs().sum())}
        print(f"{name}: P={obj.num_params}, tr H={w['hessian_trace']:.4g}, tr GGN={w['ggn_trace']:.4g}", flush=True)
        if args.seeds > 0:
            w["hessian"] = accuracy(H, args.budgets, args.seeds)
            w["ggn"] = accuracy(G, args.budgets, args.seeds)
        if args.wall_repeats > 0:
            w["wall_seconds"] = wall(model.float(), xs, ys, args.budgets, args.wall_repeats)
        res["workloads"][name] = w
        args.out.mkdir(parents=True, exist_ok=True)
        atomic_write_json(args.out / "bench_trace.json", res)
        print_tables({name: w}, args.budgets)
    res["summary"] = summary(res["workloads"], args.budgets)
    atomic_write_json(args.out / "bench_trace.json", res)
    print("\nRMS error / curvlinops xtrace's, over workloads x {hessian, ggn} x budgets: geometric mean, worst")
    for method, v in sorted(res["summary"].items(), key=lambda kv: kv[1]["geomean_ratio"]):
        print(f"  {method:32s}{v['geomean_ratio']:>8.3f}{v['worst_ratio']:>8.3f}   ({v['cases']} cases)")
    return res


def summary(works: dict, budgets: list[int]) -> dict:
    """Per method: RMS error relative to curvlinops xtrace's on the same case (geometric mean and worst)."""
    ratios: dict[str, list[float]] = {}
    for w in works.values():
        for kind in ("hessian", "ggn"):
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
        for kind in ("hessian", "ggn"):
            if kind not in w:
                continue
            print(f"\n{name} {kind} (P={w['parameters']}): RMS relative error [coverage of 2 stderr]")
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
        if "wall_seconds" in w:
            print(f"\n{name} CPU seconds (median)")
            for method, by in w["wall_seconds"].items():
                print(f"  {method:32s}" + "".join(f"{(by.get(b) or by.get(str(b))):>10.3f}" for b in budgets))


if __name__ == "__main__":
    main()
