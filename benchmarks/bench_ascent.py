"""Worst-case ascent accuracy: the fraction of the exact maximum reached, and its gradients, in one run.

    python benchmarks/bench_ascent.py [--seeds 10] [--out runs/bench_ascent.json]

Exact maxima (no reference run needed):

* quadratics ``1/2 (w - c)^T A (w - c)`` with ``d`` log-uniform eigenvalues in ``[1, cond]``: at the
  minimum ``rho^2 lambda_max / 2`` (L2), off it the trust-region maximum (secular equation), in
  ``u = T^{-1} e`` for the ``element`` / ``layer`` / ``gradient`` geometries; L-inf by enumerating the
  ``2^d`` vertices (d = 4, 6, 8);
* GNR's ``cos(k pi t + pi)`` examples at and off ``t = 0`` (maximum on a fine grid).

Compared: the default ascent (``schedule="apgd"``, 20 steps = 20 gradients) with and without its L2
subspace model (``memory=0``: plain Auto-PGD steps), and the old default (GA-SAM's constant
``eta = 1.5 rho / K``, 10 steps) and its 20-step version. Reported: min and mean fraction over seeds.
Counts (gradients) are exact; no timings.
"""
from __future__ import annotations

import argparse
import itertools
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from landscape.analytic import FunctionObjective, quadratic  # noqa: E402
from landscape.geometry import Geometry, Region  # noqa: E402
from landscape.sharpness import worst_case_sharpness  # noqa: E402

F64 = torch.float64
VARIANTS = {"apgd (default, 20 grads)": dict(),
            "apgd memory=0 (20)": dict(memory=0),
            "old default: constant, 10": dict(schedule="constant", steps=10),
            "constant, 20": dict(schedule="constant", steps=20)}


def spd(lams, seed):
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(lams), len(lams), generator=g, dtype=F64))
    return Q @ torch.diag(torch.as_tensor(lams, dtype=F64)) @ Q.T


def spectrum(d, cond, seed):
    g = torch.Generator().manual_seed(1000 + seed)
    lams = torch.exp(torch.rand(d, generator=g, dtype=F64) * math.log(cond))
    lams[0], lams[1] = cond, 1.0
    return lams


def l2_max(A, b, rho):
    lam, Q = torch.linalg.eigh(A)
    if float(b.norm()) == 0:
        return 0.5 * rho ** 2 * float(lam[-1])
    c = Q.T @ b
    lo, hi = float(lam[-1]), float(lam[-1]) + float(b.norm()) / rho + 1
    for _ in range(200):
        mu = 0.5 * (lo + hi)
        lo, hi = (mu, hi) if float((c / (mu - lam)).norm()) > rho else (lo, mu)
    u = Q @ (c / (hi - lam))
    return float(b @ u + 0.5 * u @ A @ u)


def linf_max(A, b, rho):
    return max(float(b @ u + 0.5 * u @ A @ u) for u in
               (rho * torch.tensor(v, dtype=F64) for v in itertools.product([-1.0, 1.0], repeat=len(b))))


def quadratic_cases(seeds):
    for d, cond in ((6, 10.0), (6, 1e3), (30, 10.0), (30, 1e3), (100, 10.0), (100, 1e3)):
        for where in ("min", "off"):
            yield f"L2 d={d} cond={cond:g} {where}", Geometry(), d, cond, where, l2_max
    for d, cond in ((4, 10.0), (6, 10.0), (8, 10.0), (8, 1e3)):
        for where in ("min", "off"):
            yield f"Linf d={d} cond={cond:g} {where}", Geometry(p=math.inf), d, cond, where, linf_max
    for norm in ("element", "layer", "gradient"):
        yield f"L2 T={norm} d=20 cond=1e3 off", Geometry(normalization=norm), 20, 1e3, "off", l2_max


def run_quadratic(geometry, d, cond, where, exact_fn, seed, variant):
    A = spd(spectrum(d, cond, seed), seed)
    gen = torch.Generator().manual_seed(seed)
    center = 1 + torch.rand(d, generator=gen, dtype=F64)
    w0 = center.clone() if where == "min" else center + 0.03 * torch.randn(d, generator=gen, dtype=F64)
    shapes = [(d // 2,), (d - d // 2,)]
    obj = quadratic(A, w0=w0, center=center, shapes=shapes)
    rho = 0.1
    region = Region.of(geometry, obj)
    T = region.diagonal()
    exact = exact_fn(T[:, None] * A * T[None], T * (A @ (w0 - center)), rho)
    r = worst_case_sharpness(obj, rho, geometry=geometry, seed=seed, **variant)
    return r.sharpness / exact, r.work["grads"]


def run_cos(k, t0, rho, variant):
    obj = FunctionObjective(lambda w: torch.cos(k * math.pi * w[0] + math.pi), torch.tensor([t0], dtype=F64))
    grid = torch.linspace(t0 - rho, t0 + rho, 400001, dtype=F64)
    exact = float((-torch.cos(k * math.pi * grid)).max()) + math.cos(k * math.pi * t0)
    r = worst_case_sharpness(obj, rho, **variant)
    return r.sharpness / exact, r.work["grads"]


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--out", default=None)
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    rows = []
    names = list(VARIANTS)
    print(f"{'case':34s}" + "".join(f"{n:>28s}" for n in names))
    for label, geometry, d, cond, where, fn in quadratic_cases(a.seeds):
        row = {"case": label}
        for name, variant in VARIANTS.items():
            out = [run_quadratic(geometry, d, cond, where, fn, s, variant) for s in range(a.seeds)]
            fr = [f for f, _ in out]
            row[name] = {"min": min(fr), "mean": sum(fr) / len(fr), "grads": max(g for _, g in out)}
        rows.append(row)
        print(f"{label:34s}" + "".join(f"{row[n]['min']:>12.4f} / {row[n]['mean']:.4f} ({row[n]['grads']:2d})"
                                       for n in names), flush=True)
    for k, t0, rho in ((1, 0.0, 1.0), (3, 0.0, 1.0), (3, 0.1, 1.0), (1, 0.1, 0.5), (3, 0.05, 0.3)):
        row = {"case": f"cos({k} pi t + pi) t0={t0} rho={rho}"}
        for name, variant in VARIANTS.items():
            f, g = run_cos(k, t0, rho, variant)
            row[name] = {"min": f, "mean": f, "grads": g}
        rows.append(row)
        print(f"{row['case']:34s}" + "".join(f"{row[n]['min']:>21.4f} ({row[n]['grads']:2d})" for n in names))
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
