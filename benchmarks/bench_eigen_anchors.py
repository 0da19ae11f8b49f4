"""Top-k Hessian eigenvalues: our Lanczos against the Lanczos anchors and PyHessian, at matched accuracy.

    python benchmarks/bench_eigen_anchors.py [--out runs/bench_eigen_anchors] [--workloads mlp,cnn/large]
        [--scan quick|full] [--seeds 3]

Workloads: the benchmark matrix's (:mod:`benchmarks.workloads`: MLP, CNN, ResNet with BatchNorm, LSTM LM,
tiny ViT, HuggingFace GPT-2, each small and large; ``--workloads`` as :func:`benchmarks.workloads.parse`),
the Hessian of the float32 model in eval mode over the workload's data in its micro-batches, with its
criterion for every library. For each:

1. Reference: the top-k of the float64 Hessian by our Lanczos at ``tol=1e-12`` (true residuals reported).
2. Float32 runs, every library's Hessian-vector products counted by wrapping its matvec (each counts
   one full-data HVP per vector): ours (default: precision-aware stopping; ``precision_stop=False``,
   the former rule; a ``tol`` scan), hessian-eigenthings' ``lanczos`` (``max_iter`` scan),
   curvlinops' ``HessianLinearOperator.to_scipy()`` in ``scipy.sparse.linalg.eigsh`` (``tol`` and ``ncv``
   scan) and PyHessian's power iteration -> HVPs, wall time, max relative error against the reference.
   ``--scan quick`` keeps the anchors' settings that were ever best (and PyHessian's default only).
   A diagnostic row runs ``eigsh`` on our own product, to tell the product's rounding from the solver's.
3. Per anchor, its best setting: the cheapest whose error is within 1.5x of the least error that anchor
   reached in the scan, beside our default's HVPs, error and wall time (ratios = anchor / ours), and
   the cheapest of our runs (default or scan) at least as accurate as that setting.

Needs ``pip install hessian-eigenthings==1.0.0a5 curvlinops-for-pytorch==3.0.1`` (and PyHessian, in the
``test`` extra). curvlinops depends on backpack-for-pytorch, which asks for torchvision: install the
torchvision that matches your torch first, or pip replaces torch with the newest (CUDA) build.

Each row runs once per start-vector seed (``--seeds``, interleaved so that load drifts hit every row alike):
HVPs are the mean over seeds, the error the worst seed's, wall time the median; compare within one run only.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.workloads import load, parse  # noqa: E402
from landscape.curvature.lanczos import lanczos  # noqa: E402
from landscape.io import atomic_write_json  # noqa: E402
from landscape.objective import Objective  # noqa: E402

FLOOR_SLACK = 1.5


def max_rel_error(values: Any, ref: np.ndarray) -> float:
    values = np.sort(np.asarray(values, dtype=float))[::-1][: len(ref)]
    return float(np.max(np.abs(values - ref) / np.abs(ref)))


class Counted:
    """A matvec wrapper counting the vectors it is applied to (columns of a block too)."""

    def __init__(self, f: Callable, columns: Callable[[Any], int] = lambda v: 1) -> None:
        self.f, self.columns, self.calls = f, columns, 0

    def __call__(self, v: Any) -> Any:
        self.calls += self.columns(v)
        return self.f(v)


def ours(model, x, y, bs, k, seed, crit, **kw) -> tuple[list[float], int, dict]:
    r = lanczos(Objective(model, x, y, loss=crit, batch_size=bs), k, seed=seed, **kw)
    return r.eigenvalues.tolist(), r.num_matvecs, {"accuracy": r.accuracy.tolist(), "noise": r.noise.tolist(),
                                                   "stopped_by": r.stopped_by}


def eigenthings(model, loader, k, seed, max_iter, criterion: Callable | None = None) -> tuple[list[float], int, dict]:
    from hessian_eigenthings import HessianOperator, lanczos as he_lanczos, supervised_loss

    op = HessianOperator(model, loader, supervised_loss(criterion or torch.nn.CrossEntropyLoss()), full_dataset=True)
    op.matvec = Counted(op.matvec)
    r = he_lanczos(op, k=k, max_iter=max_iter, which="LA", seed=seed)
    return r.eigenvalues.tolist(), op.matvec.calls, {}


def curvlinops_eigsh(model, loader, k, seed, tol, criterion: Callable | None = None, ncv=None
                     ) -> tuple[list[float], int, dict]:
    from curvlinops import HessianLinearOperator
    from scipy.sparse.linalg import LinearOperator

    params = [p for p in model.parameters() if p.requires_grad]
    H = HessianLinearOperator(model, criterion or torch.nn.CrossEntropyLoss(), params, loader,
                              check_deterministic=False,
                              num_data=sum(len(b[1]) for b in loader)).to_scipy()
    mv = Counted(lambda V: H.matvec(V) if np.ndim(V) == 1 else H.matmat(V),
                 lambda V: 1 if np.ndim(V) == 1 else np.shape(V)[1])
    op = LinearOperator(H.shape, matvec=mv, matmat=mv, dtype=H.dtype)  # to_scipy's float64 view, as documented
    return _eigsh(op, k, tol, ncv, seed), mv.calls, {}


def _eigsh(op, k: int, tol: float, ncv: int | None, seed: int) -> list[float]:
    from scipy.sparse.linalg import eigsh

    return eigsh(op, k=k, which="LA", tol=tol, ncv=ncv, v0=np.random.default_rng(seed).standard_normal(op.shape[0]),
                 return_eigenvectors=False).tolist()


def ours_product_eigsh(model, x, y, bs, k, seed, tol, crit) -> tuple[list[float], int, dict]:
    """``eigsh`` on our float32 Hessian product: separates the product's rounding from the eigensolver's."""
    obj = Objective(model, x, y, loss=crit, batch_size=bs)
    values = _eigsh(obj.hessian.to_scipy(), k, tol, None, seed)
    return values, obj.counts["hessian"], {}


def pyhessian(model, loader, k, seed, tol, criterion: Callable | None = None) -> tuple[list[float], int, dict]:
    from pyhessian import hessian

    H = hessian(model, criterion or torch.nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
    H.dataloader_hv_product = Counted(H.dataloader_hv_product)
    torch.manual_seed(seed)
    values, _ = H.eigenvalues(top_n=k, tol=tol, maxIter=100 if tol >= 1e-3 else 1000)
    for p in model.parameters():  # PyHessian leaves create_graph gradients behind
        p.grad = None
    return values, H.dataloader_hv_product.calls, {}


def run_workload(family: str, size: str, args: argparse.Namespace) -> dict:
    w = load(family, size)
    model, x, y, bs, k, crit = w.model, w.x, w.y, w.batch_size, args.k, w.criterion
    loader = [(x[i:i + bs], y[i:i + bs]) for i in range(0, len(x), bs)]
    ref_r = lanczos(Objective(model, x, y, loss=crit, batch_size=bs, dtype=torch.float64), k, tol=1e-12,
                    residuals=True)
    ref = ref_r.eigenvalues
    quick = args.scan == "quick"
    runs: dict[str, Callable[[int], tuple]] = {
        "ours (default)": lambda s: ours(model, x, y, bs, k, s, crit),
        "ours precision_stop=False (former default)": lambda s: ours(model, x, y, bs, k, s, crit,
                                                                      precision_stop=False),
    }
    for tol in () if quick else (1e-2, 1e-3, 1e-4, 1e-5):
        runs[f"ours tol={tol:g}"] = lambda s, tol=tol: ours(model, x, y, bs, k, s, crit, tol=tol, precision_stop=False)
    iters = (2 * k + 4, 3 * k, 3 * k + 2, 4 * k) if quick else (2 * k, 2 * k + 2, 2 * k + 4, 3 * k, 3 * k + 2, 4 * k,
                                                               5 * k, 6 * k, 8 * k)
    for it in sorted(set(iters)):
        runs[f"hessian-eigenthings max_iter={it}"] = lambda s, it=it: eigenthings(model, loader, k, s, it, crit)
    for tol in (1e-3, 0.0) if quick else (1e-2, 1e-3, 1e-5, 0.0):
        runs[f"curvlinops+eigsh tol={tol:g}"] = lambda s, tol=tol: curvlinops_eigsh(model, loader, k, s, tol, crit)
    for ncv in (2 * k + 1, 3 * k):
        for tol in (1e-3, 1e-5):
            runs[f"curvlinops+eigsh ncv={ncv} tol={tol:g}"] = (
                lambda s, tol=tol, ncv=ncv: curvlinops_eigsh(model, loader, k, s, tol, crit, ncv))
    for tol in (1e-3,) if quick else (1e-3, 1e-4):
        runs[f"pyhessian tol={tol:g}"] = lambda s, tol=tol: pyhessian(model, loader, k, s, tol, crit)
    if not quick:
        runs["(diagnostic) eigsh on our product, tol=1e-5"] = lambda s: ours_product_eigsh(model, x, y, bs, k, s, 1e-5,
                                                                                           crit)
    rows: dict[str, dict] = {label: {"walls": [], "hvps_by_seed": [], "error_by_seed": []} for label in runs}
    for seed in range(args.seeds):  # interleaved, so load drifts hit every row alike
        for label, f in runs.items():
            t0 = time.perf_counter()
            values, hvps, extra = f(seed)
            row = rows[label]
            row["walls"].append(time.perf_counter() - t0)
            row["hvps_by_seed"].append(hvps)
            row["error_by_seed"].append(max_rel_error(values, ref))
            row.update(values=values, **extra)
    for row in rows.values():  # HVPs: mean over seeds; error: the worst seed's; wall: the median
        row.update(wall=float(np.median(row.pop("walls"))), hvps=float(np.mean(row["hvps_by_seed"])),
                   error=max(row["error_by_seed"]))
    return {"parameters": w.num_params, "samples": len(x), "workload": w.describe(),
            "reference": {"eigenvalues": ref.tolist(), "residuals": ref_r.residuals.tolist()},
            "float32_floor": min(r["error"] for r in rows.values()), "rows": rows, "matched": matched(rows)}


def matched(rows: dict[str, dict]) -> dict[str, dict]:
    """Per anchor, its best setting (the cheapest within FLOOR_SLACK of its own least error) beside our
    default, and the cheapest of our runs (default or tolerance scan) at least as accurate as it."""
    base = rows["ours (default)"]
    out = {}
    for lib in ("hessian-eigenthings", "curvlinops+eigsh", "pyhessian"):
        mine = {lab: r for lab, r in rows.items() if lab.startswith(lib)}
        best = min(r["error"] for r in mine.values())
        lab, r = min(((lab, r) for lab, r in mine.items() if r["error"] <= FLOOR_SLACK * best),
                     key=lambda kv: (kv[1]["hvps"], kv[1]["wall"]))
        ok = [(o, v) for o, v in rows.items() if o.startswith("ours") and v["error"] <= r["error"]]
        cheapest = min(ok, key=lambda kv: kv[1]["hvps"]) if ok else (None, None)
        out[lib] = {"setting": lab, "hvps": r["hvps"], "error": r["error"], "wall": r["wall"],
                    "ours_hvps": base["hvps"], "ours_error": base["error"], "ours_wall": base["wall"],
                    "hvp_ratio": r["hvps"] / base["hvps"], "wall_ratio": r["wall"] / base["wall"],
                    "ours_as_accurate": cheapest[0],
                    "as_accurate_hvp_ratio": None if cheapest[1] is None else r["hvps"] / cheapest[1]["hvps"]}
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_eigen_anchors")
    p.add_argument("--workloads", default="all", help="benchmarks.workloads.parse spec, e.g. mlp,cnn/large")
    p.add_argument("--scan", choices=["quick", "full"], default="full")
    p.add_argument("--k", type=int, default=5)
    p.add_argument("--seeds", type=int, default=3, help="start-vector seeds, each row run once per seed")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    res: dict = {"setting": {**{k: v for k, v in vars(args).items() if k != "out"}, "torch": torch.__version__,
                             "load": os.getloadavg()}}
    names = []
    for family, size in parse(args.workloads):
        name = f"{family}/{size}"
        names.append(name)
        res[name] = run_workload(family, size, args)
        atomic_write_json(args.out / "bench_eigen_anchors.json", res)
        report(name, res[name], args.k)
    res["setting"]["load_after"] = os.getloadavg()
    atomic_write_json(args.out / "bench_eigen_anchors.json", res)
    print(markdown(res, names))
    return res


def markdown(res: dict, names: list[str]) -> str:
    """The README table: per workload, our default and each anchor's best setting."""
    lines = ["| workload | method (best setting) | HVPs | max rel. error | wall ratio | ours at <= its error |",
             "|---|---|---:|---:|---:|---|"]
    for name in names:
        r = res[name]
        base = r["rows"]["ours (default)"]
        label = f"{name} ({r['parameters']:,} params)"
        lines.append(f"| {label} | ours, default | {base['hvps']:.1f} | {base['error']:.1e} | 1 | |")
        for m in r["matched"].values():
            same = m["ours_as_accurate"]
            same = "none" if same is None else f"{r['rows'][same]['hvps']:.1f} ({same[5:].strip('()')})"
            lines.append(f"| | {m['setting']} | {m['hvps']:.1f} ({m['hvp_ratio']:.2f}x) | {m['error']:.1e} | "
                         f"{m['wall_ratio']:.1f}x | {same} |")
    return "\n".join(lines)


def report(name: str, r: dict, k: int) -> None:
    print(f"\n{name}: {r['parameters']:,} parameters, {r['samples']} samples; float32 floor "
          f"{r['float32_floor']:.1e}; reference top-{k} {np.round(r['reference']['eigenvalues'], 6).tolist()}")
    print(f"{'method':48s} {'HVPs':>5s} {'wall s':>7s} {'max rel err':>11s}")
    for label, row in r["rows"].items():
        print(f"{label:48s} {row['hvps']:5.1f} {row['wall']:7.3f} {row['error']:11.2e}")
    for lib, m in r["matched"].items():
        print(f"  {lib} best: {m['setting']}, {m['hvps']:.1f} HVPs, err {m['error']:.1e}; ours "
              f"{m['ours_hvps']:.1f} HVPs, err {m['ours_error']:.1e}: {m['hvp_ratio']:.2f}x HVPs, "
              f"{m['wall_ratio']:.2f}x wall")


if __name__ == "__main__":
    main()
