"""The curvature sections of ``landscape analyze`` (registered into :mod:`landscape.analysis`)."""
from __future__ import annotations

import argparse
from typing import Any

from landscape.analysis import AnalysisContext, Measure, register_measure
from landscape.curvature.density import spectral_density
from landscape.curvature.fisher import METHODS as FISHER_METHODS, fisher_eigenvalues
from landscape.curvature.gradients import GROUPINGS, gradient_norms
from landscape.curvature.lanczos import WHICH, lanczos
from landscape.curvature.power import power_iteration
from landscape.curvature.trace import DEFAULT_TRACE_METHOD, TRACE_METHODS, estimate_trace

LANCZOS_TOL, POWER_TOL, POWER_MAX_ITER = 1e-6, 1e-3, 100


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def _values(xs: list[float] | None, fmt: str = ".6g") -> str:
    return "n/a" if xs is None else ", ".join(format(x, fmt) for x in xs)


def _work(what: str, s: dict[str, Any], unconverged: str = "") -> tuple[str, str]:
    """The ``products / data passes`` row, flagged when the section did not converge."""
    flag = f"  ({unconverged})" if unconverged and not s["converged"] else ""
    return f"  {what} / data passes", f"{s['matvecs']} / {s['passes']}{flag}"


# ---------------------------------------------------------------- metrics
def _metrics_args(g: argparse._ArgumentGroup) -> None:
    pass


def _metrics(ctx: AnalysisContext) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split in ("train", "test"):
        if not ctx.has_split(split):  # a user's stream without a test split
            out[f"{split}_loss"] = out[f"{split}_acc"] = out[f"{split}_samples"] = None
            continue
        obj = ctx.objective(split, full=True)
        r = obj.evaluate()
        out[f"{split}_loss"], out[f"{split}_acc"], out[f"{split}_samples"] = r["loss"], r["acc"], obj.num_samples
    out["gen_gap"] = None if None in (out["train_acc"], out["test_acc"]) else out["train_acc"] - out["test_acc"]
    out["loss_gap"] = None if None in (out["train_loss"], out["test_loss"]) else out["test_loss"] - out["train_loss"]
    return out


def _metrics_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    return [("train loss / acc", f"{_g(s['train_loss'])} / {_g(s['train_acc'])}"),
            ("test loss / acc", f"{_g(s['test_loss'])} / {_g(s['test_acc'])}"),
            ("generalization gap (acc)", _g(s["gen_gap"])), ("loss gap (test - train)", _g(s["loss_gap"]))]


def _metrics_scalars(s: dict[str, Any]) -> dict[str, float | None]:
    return {k: s[k] for k in ("train_loss", "train_acc", "test_loss", "test_acc", "gen_gap", "loss_gap")}


register_measure(Measure("metrics", "loss and accuracy", _metrics_args, _metrics, _metrics_rows,
                         scalars=_metrics_scalars))


# ------------------------------------------------------- Hessian eigenvalues
def _eig_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--top-k", type=int, default=5, help="number of Hessian eigenvalues (0: skip) [default: 5]")
    g.add_argument("--eig-method", choices=["lanczos", "power"], default="lanczos",
                   help="thick-restart Lanczos, or PyHessian's power iteration [default: lanczos]")
    g.add_argument("--which", choices=list(WHICH), default="largest",
                   help="largest / smallest algebraic, or both ends [default: largest]")
    g.add_argument("--tol", type=float, default=None,
                   help=f"Lanczos: relative Ritz residual [default: {LANCZOS_TOL}; it also stops once the "
                        f"eigenvalues reach the HVP's rounding floor]; power: relative change [default: {POWER_TOL}]")
    g.add_argument("--max-iter", type=int, default=None,
                   help=f"Lanczos: most HVPs [default: max(20 * ncv, 500)]; power: iterations per eigenvalue "
                        f"[default: {POWER_MAX_ITER}]")
    g.add_argument("--residuals", action=argparse.BooleanOptionalAction, default=True,
                   help="report true residuals ||Hv - lambda v|| (k more HVPs) [default: on]")


def _eig(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    op = ctx.objective().hessian
    if o.eig_method == "power":
        if o.which != "largest":
            raise ValueError("--eig-method power finds the largest-magnitude eigenvalues only; use --which largest")
        r = power_iteration(op, o.top_k, max_iter=o.max_iter or POWER_MAX_ITER, tol=o.tol or POWER_TOL,
                            seed=o.seed, residuals=o.residuals, return_vectors=True, progress=ctx.progress)
    else:
        r = lanczos(op, o.top_k, which=o.which, tol=o.tol or LANCZOS_TOL, max_matvecs=o.max_iter, seed=o.seed,
                    residuals=o.residuals, return_vectors=o.which != "smallest", progress=ctx.progress)
    if r.eigenvectors is not None and len(r.eigenvectors):  # where the sharpness ascents start at a minimum
        ctx.cache["top_eigenvector"] = r.eigenvectors[0]
    return {"k": o.top_k, **r.to_dict()}


def _eig_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [(f"Hessian eigenvalues ({s['which']}, {s['method']})", _values(s["eigenvalues"]))]
    if s.get("accuracy") is not None:
        why = {"noise": "reached the HVP's rounding floor", "tol": "reached --tol"}.get(s.get("stopped_by"), "")
        rows.append(("  accuracy (estimated |error|)", _values(s["accuracy"], ".1e") + (f"  ({why})" if why else "")))
    if s.get("residuals") is not None:
        rows.append(("  residuals ||Hv - lambda v||", _values(s["residuals"], ".2e")))
    rows.append(_work("HVPs", s, "NOT converged"))
    return rows


def _eig_scalars(s: dict[str, Any]) -> dict[str, float]:
    """``lambda_max`` (largest / both / power: largest magnitude) and ``lambda_min`` (smallest / both)."""
    ev, which = s["eigenvalues"], s["which"]
    if not ev:
        return {}
    if s.get("method") == "power" or which == "largest":
        return {"lambda_max": ev[0]}
    if which == "smallest":
        return {"lambda_min": ev[0]}
    return {"lambda_max": ev[0], "lambda_min": ev[len(ev) // 2]}


register_measure(Measure("hessian_eigenvalues", "Hessian eigenvalues", _eig_args, _eig, _eig_rows,
                         enabled=lambda o: o.top_k > 0, scalars=_eig_scalars))


# ------------------------------------------------------------- Hessian trace
def _trace_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--trace-method", choices=TRACE_METHODS, default=DEFAULT_TRACE_METHOD,
                   help="Hutchinson (Rademacher), Hutch++ with a random or Lanczos sketch, XTrace, or XNysTrace "
                        f"(PSD operators only) [default: {DEFAULT_TRACE_METHOD}, the most accurate per HVP measured "
                        "by benchmarks/bench_trace.py]")
    g.add_argument("--trace-samples", type=int, default=150, help="most HVPs (0: skip the trace) [default: 150]")
    g.add_argument("--trace-rtol", type=float, default=1e-2,
                   help="stop once stderr <= rtol * |trace| [default: 0.01]")
    g.add_argument("--trace-rank", type=int, default=None,
                   help="Hutch++ sketch size [default: sized for --trace-rtol (lanczos, block; at most 1/2 of "
                        "--trace-samples), 1/3 of --trace-samples (random)]")


def _trace(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    options: dict[str, Any] = {"max_samples": o.trace_samples, "rtol": o.trace_rtol, "seed": o.seed,
                               "progress": ctx.progress}
    if o.trace_rank is not None:
        if not o.trace_method.startswith("hutchpp"):
            raise ValueError(f"--trace-rank sets the Hutch++ sketch size; --trace-method {o.trace_method} has none")
        options["rank"] = o.trace_rank
    return estimate_trace(ctx.objective().hessian, o.trace_method, **options).to_dict()


def _trace_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"Hessian trace ({s['method']})", f"{_g(s['trace'])} ± {s['stderr']:.2g}"),
            _work("HVPs", s, "rtol not reached")]


register_measure(Measure("hessian_trace", "Hessian trace", _trace_args, _trace, _trace_rows,
                         enabled=lambda o: o.trace_samples > 0, scalars=lambda s: {"trace": s["trace"]}))


# --------------------------------------------------------- spectral density
def _density_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--density", action="store_true", help="estimate the Hessian spectral density (SLQ) [default: off]")
    g.add_argument("--density-runs", type=int, default=4, help="SLQ runs (random start vectors) [default: 4]")
    g.add_argument("--density-steps", type=int, default=64, help="Lanczos steps per run [default: 64]")
    g.add_argument("--density-sigma", type=float, default=0.01,
                   help="Gaussian smoothing width relative to the spectrum's range [default: 0.01]")


def _density(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    r = spectral_density(ctx.objective().hessian, num_runs=o.density_runs, num_steps=o.density_steps,
                         sigma_rel=o.density_sigma, seed=o.seed, progress=ctx.progress)
    return r.to_dict()


def _density_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    lo, hi = min(map(min, s["nodes"])), max(map(max, s["nodes"]))
    return [("spectral density (SLQ)", f"support [{lo:.4g}, {hi:.4g}], sigma {s['sigma']:.3g}, "
                                       f"trace ~ {s['trace_estimate']:.4g}"),
            _work("HVPs", s)]


register_measure(Measure("spectral_density", "spectral density", _density_args, _density, _density_rows,
                         enabled=lambda o: o.density, scalars=lambda s: {"trace_estimate": s["trace_estimate"]}))


# ------------------------------------------------------- Fisher / GGN top-k
def _fisher_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--fisher-k", type=int, default=0,
                   help="top eigenvalues of the empirical Fisher (GA-SAM uses 50; 0: skip) [default: 0]")
    g.add_argument("--fisher-kind", choices=["fisher", "ggn"], default="fisher",
                   help="empirical Fisher or generalized Gauss-Newton [default: fisher]")
    g.add_argument("--fisher-method", choices=list(FISHER_METHODS), default="lanczos",
                   help="Lanczos, or exact from the N x N Gram matrix of the per-sample gradients (empirical "
                        "Fisher, one process, N x P numbers in memory; far faster for a few thousand samples, "
                        "e.g. with --subset) [default: lanczos]")


def _fisher(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    method = o.fisher_method
    extra = {} if method == "gram" else {"tol": o.tol or LANCZOS_TOL, "seed": o.seed, "progress": ctx.progress}
    r = fisher_eigenvalues(ctx.objective(), o.fisher_k, kind=o.fisher_kind, method=method, **extra)
    return {"kind": o.fisher_kind, "k": o.fisher_k, **r.to_dict()}


def _fisher_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    ev = s["eigenvalues"]
    shown = _values(ev[:5]) + (f", ... ({len(ev)} in the JSON)" if len(ev) > 5 else "")
    rows = [(f"{'empirical Fisher' if s['kind'] == 'fisher' else 'GGN'} top-{s['k']}", shown)]
    if s["method"] == "gram":
        return rows + [("  method", "exact, Gram matrix of the per-sample gradients (one data pass)")]
    return rows + [_work("products", s, "NOT converged")]


def _fisher_scalars(s: dict[str, Any]) -> dict[str, float]:
    ev = s["eigenvalues"]
    return {"lambda_max": ev[0], "topk_sum": float(sum(ev))} if ev else {}


register_measure(Measure("fisher_eigenvalues", "Fisher / Gauss-Newton eigenvalues", _fisher_args, _fisher,
                         _fisher_rows, enabled=lambda o: o.fisher_k > 0, scalars=_fisher_scalars))


# ----------------------------------------------------------- gradient norms
def _grad_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--grad-batch-size", type=int, default=None,
                   help="average gradient norms over mini-batches of this size (1: per sample, GA-SAM) "
                        "[default: norms of the full-data gradient]")
    g.add_argument("--grad-by", choices=list(GROUPINGS), default="tensor",
                   help="group gradient norms per parameter tensor, per module, or per layer (a module; the "
                        "stacked layers of an RNN apart) [default: tensor]")


def _grad(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    return gradient_norms(ctx.objective(), batch_size=o.grad_batch_size, by=o.grad_by).to_dict()


def _grad_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    what = "||grad L||" if s["batch_size"] is None else f"E ||g_batch|| (batch {s['batch_size']})"
    top = sorted(s["groups"].items(), key=lambda kv: -kv[1]["strength"])[:3]
    return [(f"gradient norm {what}", f"{_g(s['norm'])} (strength {_g(s['strength'])})"),
            ("  strongest layers", ", ".join(f"{k} {v['strength']:.3g}" for k, v in top))]


register_measure(Measure("gradient_norms", "gradient norms", _grad_args, _grad, _grad_rows,
                         scalars=lambda s: {"norm": s["norm"], "strength": s["strength"]}))
