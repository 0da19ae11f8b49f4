"""The sharpness sections of ``landscape analyze`` (registered into :mod:`landscape.analysis`).

Cheap by default: worst-case sharpness (L2, rho = 0.05) and adaptive sharpness (element-wise, rho = 0.5)
with 20 ascent steps each (Auto-PGD-style, :func:`~landscape.sharpness.common.projected_ascent`; a row says
when an ascent has not converged), and the surrogate gap (one extra gradient per rho). Where the gradient
vanishes the ascents start along the top Hessian eigenvector when the ``hessian_eigenvalues`` section
computed it in the same run, else at a seeded random point. GNR, local extrema counts,
corruption robustness and PAC-Bayes flatness run on request (``--gnr-rho``, ``--extrema-directions``,
``--corruption-eps`` / ``--corruption-eps-inf``, ``--pac-bayes``). Every random draw is seeded by ``--seed``.
"""
from __future__ import annotations

import argparse
import math
from typing import Any

from landscape.analysis import AnalysisContext, Measure, register_measure
from landscape.geometry import EXCLUDE, NORMALIZATIONS, Geometry
from landscape.sharpness.average_case import average_sharpness
from landscape.sharpness.common import MEMORY, SCHEDULES, TOL, parse_floats
from landscape.sharpness.corruption import corruption_robustness
from landscape.sharpness.gnr import gradient_norm_regularizer
from landscape.sharpness.local_extrema import ENDPOINTS, local_extrema
from landscape.sharpness.pac_bayes import pac_bayes_flatness
from landscape.sharpness.surrogate_gap import surrogate_gap
from landscape.sharpness.worst_case import worst_case_sharpness

LANCZOS_TOL = 1e-6
NOISES = ("gaussian", "uniform", "boundary")


def _floats(text: str) -> list[float]:
    try:
        values = parse_floats(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from e
    if any(not v > 0 for v in values):
        raise argparse.ArgumentTypeError(f"radii must be > 0, got {text!r}")
    return values


def _p(text: str) -> str:
    """``"2"`` or ``"inf"`` (kept as text so that the settings stay plain JSON)."""
    if text.lower() in ("inf", "infinity"):
        return "inf"
    try:
        p = float(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"p must be 2 or inf, got {text!r}") from e
    if p != 2.0:
        raise argparse.ArgumentTypeError(f"p must be 2 or inf, got {text!r}")
    return "2"


def _p_name(p: Any) -> str:
    return "inf" if p in ("inf", math.inf) else f"{float(p):g}"


def _g(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.6g}"


def _cost(w: dict[str, int]) -> str:
    parts = [f"{w[k]} {k}" for k in ("grads", "hvps", "losses") if w.get(k)]
    return ", ".join(parts) or "0"


def _ascent_row(r: dict[str, Any], flag: str) -> list[tuple[str, str]]:
    """The ascent's convergence line: a WARNING when it has not converged (``converged`` False)."""
    if r.get("converged") is None or not r.get("trace"):
        return []
    steps = len(r["trace"][0]) - 1
    window = -(-steps // 4)
    start = f"; start {r['start']}" if r.get("start") and r["start"] != "gradient" else ""
    if r["converged"]:
        return [("  ascent", f"converged (best rose {r['relative_change']:.1e} over the last {window} of {steps} "
                             f"steps{start})")]
    return [("  ascent", f"WARNING: NOT converged (best rose {r['relative_change']:.2g} over the last {window} of "
                         f"{steps} steps{start}); raise {flag}")]


def top_eigenvector(ctx: AnalysisContext) -> Any:
    """The top Hessian eigenvector if the ``hessian_eigenvalues`` section computed it in this run, else None."""
    return ctx.cache.get("top_eigenvector")


# ---------------------------------------------------------------- study scalars
def _per_rho(s: dict[str, Any], fields: dict[str, tuple[str, ...]]) -> dict[str, float | None]:
    """``{"<name>[rho=R]": row[path...]}`` over the rows of a rho sweep (``landscape study`` columns)."""
    out: dict[str, float | None] = {}
    for row in s["rows"]:
        for name, path in fields.items():
            value: Any = row
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None or path[0] in row:
                out[f"{name}[rho={row['rho']:g}]"] = value
    return out


def _sharpness_scalars(s: dict[str, Any]) -> dict[str, float | None]:
    return _per_rho(s, {"worst": ("worst_case", "sharpness"), "average": ("average_case", "sharpness")})


def _gap_scalars(s: dict[str, Any]) -> dict[str, float | None]:
    return _per_rho(s, {"gap": ("gap",), "second_order": ("second_order_estimate",)})


def _gnr_scalars(s: dict[str, Any]) -> dict[str, float | None]:
    return _per_rho(s, {"R": ("R",), "R_over_rho2": ("estimate",)})


def _extrema_scalars(s: dict[str, Any]) -> dict[str, float | None]:
    return {k: s[k] for k in ("fraction_with_minimum", "mean_minima", "mean_maxima")}


def _corruption_scalars(s: dict[str, Any]) -> dict[str, float | None]:
    split = s.get("attacked_split", "train")
    out: dict[str, float | None] = {}
    for row in s["rows"]:
        tag = f"{row['kind']}_l{row['p']}[eps={row['eps']:g}]"
        out[f"{tag}.loss_increase"] = row[split]["loss_increase"]
        out[f"{tag}.acc_drop"] = row[split].get("acc_drop")
    return out


def _pac_scalars(s: dict[str, Any]) -> dict[str, float | None]:
    return {k: s.get(k) for k in ("flatness", "mag_flatness", "bound_orig", "mag_bound_orig")}


def lambda_max(ctx: AnalysisContext) -> dict[str, Any]:
    """Lanczos ``lambda_max`` of the analysis Hessian: taken from the ``hessian_eigenvalues`` section when it
    ran (Lanczos, largest or both ends), otherwise computed once (k = 1) and shared by the sections."""
    eig = ctx.sections.get("hessian_eigenvalues")
    if eig and eig.get("method") == "lanczos" and eig.get("which") in ("largest", "both") and eig.get("eigenvalues"):
        return {"lambda_max": eig["eigenvalues"][0], "source": "hessian_eigenvalues", "hvps": 0}
    if "lambda_max" not in ctx.cache:
        from landscape.curvature.lanczos import lanczos

        o = ctx.options
        r = lanczos(ctx.objective().hessian, 1, tol=o.tol or LANCZOS_TOL, max_matvecs=o.max_iter, seed=o.seed,
                    return_vectors=True, progress=ctx.progress)
        ctx.cache.setdefault("top_eigenvector", r.eigenvectors[0])
        ctx.cache["lambda_max"] = {"lambda_max": float(r.eigenvalues[0]), "source": "lanczos (k=1)",
                                   "hvps": r.num_matvecs, "converged": r.converged}
    return ctx.cache["lambda_max"]


# ------------------------------------------------------ worst-case / average-case sharpness
def _sharpness_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--sharpness-rho", type=_floats, default="0.05", metavar="RHOS",
                   help="radii of max_{||T^-1 e||_p <= rho} L(w+e) - L(w), comma-separated (a sweep); '' skips "
                        "[default: 0.05]")
    g.add_argument("--sharpness-p", type=_p, default="2", metavar="{2,inf}", help="norm of the ball [default: 2]")
    g.add_argument("--sharpness-normalization", choices=NORMALIZATIONS, default="none",
                   help="normalization operator T of the ball [default: none]")
    g.add_argument("--sharpness-eta", type=float, metavar="X", default=0.0,
                   help="eta added to T (element/filter/layer) [default: 0]")
    g.add_argument("--sharpness-exclude", choices=EXCLUDE, default="none",
                   help="biases / norm-layer weights (1-D tensors): like the others, T = 1, or not perturbed "
                        "[default: none]")
    g.add_argument("--sharpness-steps", type=int, metavar="N", default=20,
                   help="ascent steps (one gradient each; also used by adaptive sharpness) [default: 20]")
    g.add_argument("--sharpness-restarts", type=int, metavar="N", default=0,
                   help="extra ascent runs from random points of the ball [default: 0]")
    g.add_argument("--sharpness-schedule", choices=SCHEDULES, default="apgd",
                   help="ascent steps: apgd (adaptive, converges) or GA-SAM's fixed constant / cosine steps "
                        "[default: apgd]")
    g.add_argument("--sharpness-step-size", type=float, metavar="X", default=None,
                   help="first step as a fraction of rho [default: 2 (apgd), 1.5/steps (constant), 3/steps (cosine)]")
    g.add_argument("--sharpness-memory", type=int, metavar="N", default=MEMORY,
                   help=f"points the L2 apgd ascent keeps for its subspace model (0: plain Auto-PGD) "
                        f"[default: {MEMORY}]")
    g.add_argument("--sharpness-tol", type=float, metavar="X", default=TOL,
                   help=f"converged when the best value rose by at most this fraction over the last quarter of "
                        f"the steps [default: {TOL:g}]")
    g.add_argument("--sharpness-samples", type=int, metavar="N", default=0,
                   help="also average-case sharpness E L(w + T a) - L(w) over this many noise draws (0: skip) "
                        "[default: 0]")
    g.add_argument("--sharpness-noise", choices=NOISES, default="gaussian",
                   help="average-case noise: a ~ N(0, rho^2 I), uniform in the ball, or on its boundary "
                        "[default: gaussian]")
    g.add_argument("--sharpness-batch-size", type=int, default=None, metavar="M",
                   help="m-sharpness: maximize on mini-batches of M samples and average (ASAM uses 8) "
                        "[default: full data]")
    g.add_argument("--sharpness-max-batches", type=int, metavar="N", default=None,
                   help="at most this many mini-batches in the per-batch mode [default: all]")


def _sharpness_rows_for(ctx: AnalysisContext, geometry: Geometry, rhos: list[float]) -> dict[str, Any]:
    o = ctx.options
    obj = ctx.objective()
    rows = []
    for rho in rhos:
        w = worst_case_sharpness(obj, rho, geometry=geometry, steps=o.sharpness_steps, restarts=o.sharpness_restarts,
                                 schedule=o.sharpness_schedule, step_size=o.sharpness_step_size, seed=o.seed,
                                 batch_size=o.sharpness_batch_size, max_batches=o.sharpness_max_batches,
                                 direction=top_eigenvector(ctx), memory=o.sharpness_memory, tol=o.sharpness_tol,
                                 progress=ctx.progress)
        row: dict[str, Any] = {"rho": rho, "worst_case": w.to_dict()}
        if o.sharpness_samples > 0:
            a = average_sharpness(obj, rho, geometry=geometry, samples=o.sharpness_samples,
                                  distribution=o.sharpness_noise, seed=o.seed, batch_size=o.sharpness_batch_size,
                                  max_batches=o.sharpness_max_batches, progress=ctx.progress)
            row["average_case"] = a.to_dict()
        rows.append(row)
    return {"geometry": geometry.to_dict(), "rho": rhos, "rows": rows}


def _sharpness(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    geometry = Geometry(p=float(o.sharpness_p), normalization=o.sharpness_normalization, eta=o.sharpness_eta,
                        exclude=o.sharpness_exclude)
    return _sharpness_rows_for(ctx, geometry, parse_floats(o.sharpness_rho))


def _sharpness_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    geo = s["geometry"]
    what = f"L{_p_name(geo['p'])}, T={geo['normalization']}"
    out = []
    for row in s["rows"]:
        w = row["worst_case"]
        mode = "" if w["batch_size"] is None else f", m={w['batch_size']} x {w['num_batches']}"
        out.append((f"sharpness rho={row['rho']:g} ({what}{mode})",
                    f"{_g(w['sharpness'])}  (max loss {_g(w['perturbed_loss'])}; {_cost(w['work'])})"))
        out += _ascent_row(w, "--sharpness-steps or --sharpness-restarts")
        if "average_case" in row:
            a = row["average_case"]
            err = f" ± {a['stderr']:.2g}" if a.get("stderr") is not None else ""
            out.append((f"  average-case ({a['distribution']}, {a['samples']} draws)", f"{_g(a['sharpness'])}{err}"))
    return out


register_measure(Measure("sharpness", "sharpness (worst-case / average-case)", _sharpness_args, _sharpness,
                         _sharpness_rows, enabled=lambda o: bool(parse_floats(o.sharpness_rho)),
                         scalars=_sharpness_scalars))


# ------------------------------------------------------------------- adaptive sharpness
def _adaptive_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--adaptive-rho", type=_floats, default="0.5", metavar="RHOS",
                   help="radii of adaptive sharpness (ASAM eq. 4), comma-separated; '' skips; the ascent uses "
                        "the --sharpness-* steps, restarts, schedule, samples and batch flags [default: 0.5]")
    g.add_argument("--adaptive-p", type=_p, default="2", metavar="{2,inf}", help="norm of the ball [default: 2]")
    g.add_argument("--adaptive-normalization", choices=[n for n in NORMALIZATIONS if n != "none"], default="element",
                   help="normalization operator T (element, filter: ASAM; gradient: GA-SAM; ...) [default: element]")
    g.add_argument("--adaptive-eta", type=float, metavar="X", default=0.0,
                   help="eta added to T (0 keeps the scale invariance exact) [default: 0]")
    g.add_argument("--adaptive-exclude", choices=EXCLUDE, default="none",
                   help="biases / norm-layer weights: like the others, T = 1 (ASAM's no bias normalization), or "
                        "not perturbed [default: none]")


def _adaptive(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    geometry = Geometry(p=float(o.adaptive_p), normalization=o.adaptive_normalization, eta=o.adaptive_eta,
                        exclude=o.adaptive_exclude)
    return _sharpness_rows_for(ctx, geometry, parse_floats(o.adaptive_rho))


def _adaptive_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    return [(label if label.startswith(" ") else "adaptive " + label, value) for label, value in _sharpness_rows(s)]


register_measure(Measure("adaptive_sharpness", "adaptive sharpness", _adaptive_args, _adaptive, _adaptive_rows,
                         enabled=lambda o: bool(parse_floats(o.adaptive_rho)), scalars=_sharpness_scalars))


# ---------------------------------------------------------------------- surrogate gap
def _gap_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--gap-rho", type=_floats, default="0.05", metavar="RHOS",
                   help="radii of GSAM's surrogate gap h = L(w + rho g/||g||) - L(w), comma-separated; '' skips "
                        "[default: 0.05]")
    g.add_argument("--gap-steps", type=int, metavar="N", default=1,
                   help="1: GSAM's h = L(w + rho g/||g||) - L(w); more: the maximum over the ball by that many ascent "
                        "steps (as where the gradient vanishes) [default: 1]")


def _gap(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    obj = ctx.objective()
    rhos = parse_floats(o.gap_rho)
    top = lambda_max(ctx)
    rows = [surrogate_gap(obj, rho, steps=o.gap_steps, seed=o.seed, direction=top_eigenvector(ctx)).to_dict()
            for rho in rhos]
    return {"rho": rhos, "rows": rows, "lanczos": top}


def _gap_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for r in s["rows"]:
        how = "" if r.get("method", "gradient") == "gradient" else (
            " (gradient vanishes: max over the ball by ascent)" if r.get("gradient_vanishes") else " (ascent)")
        out.append((f"surrogate gap rho={r['rho']:g}", f"h {_g(r['gap'])}, 2h/rho^2 {_g(r['estimate'])}{how}"))
        out += _ascent_row(r, "--gap-steps")
        out.append(("  first order rho||g|| / rest 2(h - rho||g||)/rho^2",
                     f"{_g(r['first_order'])} / {_g(r['second_order_estimate'])}"))
    out.append(("  Lanczos lambda_max", _g(s["lanczos"]["lambda_max"])))
    return out


register_measure(Measure("surrogate_gap", "surrogate gap (GSAM)", _gap_args, _gap, _gap_rows,
                         enabled=lambda o: bool(parse_floats(o.gap_rho)), scalars=_gap_scalars))


# -------------------------------------------------------------------------------- GNR
def _gnr_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--gnr-rho", type=_floats, default="", metavar="RHOS",
                   help="radii of GNR's R = rho max_{B(w,rho)} ||grad L||, comma-separated [default: off]")
    g.add_argument("--gnr-steps", type=int, metavar="N", default=20,
                   help="ascent steps (a gradient and an HVP each) [default: 20]")
    g.add_argument("--gnr-restarts", type=int, metavar="N", default=0,
                   help="extra runs from random points of the ball [default: 0]")
    g.add_argument("--gnr-schedule", choices=SCHEDULES, default="apgd",
                   help="ascent steps: apgd (adaptive, converges) or fixed constant / cosine [default: apgd]")
    g.add_argument("--gnr-step-size", type=float, metavar="X", default=None,
                   help="first step as a fraction of rho [default: 2 (apgd), 3/steps (cosine), 1.5/steps (constant)]")


def _gnr(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    obj = ctx.objective()
    rows = [gradient_norm_regularizer(obj, rho, steps=o.gnr_steps, restarts=o.gnr_restarts, schedule=o.gnr_schedule,
                                      step_size=o.gnr_step_size, seed=o.seed, direction=top_eigenvector(ctx),
                                      progress=ctx.progress).to_dict()
            for rho in parse_floats(o.gnr_rho)]
    return {"rho": parse_floats(o.gnr_rho), "rows": rows, "lanczos": lambda_max(ctx)}


def _gnr_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    out = []
    for r in s["rows"]:
        out.append((f"GNR rho={r['rho']:g}", f"R {_g(r['R'])}, R/rho^2 {_g(r['estimate'])} ({_cost(r['work'])})"))
        out += _ascent_row(r, "--gnr-steps")
    out.append(("  Lanczos lambda_max", _g(s["lanczos"]["lambda_max"])))
    return out


register_measure(Measure("gnr", "gradient norm regularizer (GNR)", _gnr_args, _gnr, _gnr_rows,
                         enabled=lambda o: bool(parse_floats(o.gnr_rho)), scalars=_gnr_scalars))


# ------------------------------------------------------------------- local extrema
def _extrema_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--extrema-directions", type=int, metavar="N", default=0,
                   help="count local minima / maxima of the loss along this many random directions (GNR uses 100; "
                        "0: skip) [default: 0]")
    g.add_argument("--extrema-step", type=float, metavar="X", default=0.01, help="norm of each step [default: 0.01]")
    g.add_argument("--extrema-steps", type=int, metavar="N", default=10,
                   help="steps along each direction [default: 10]")
    g.add_argument("--extrema-normalization", choices=NORMALIZATIONS, default="none",
                   help="normalize the directions through T (filter: filter-normalized) [default: none]")
    g.add_argument("--extrema-endpoints", choices=ENDPOINTS, default="exclude",
                   help="whether the first / last point of a sequence can count (one-sided) [default: exclude]")


def _extrema(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    r = local_extrema(ctx.objective(), directions=o.extrema_directions, step=o.extrema_step, steps=o.extrema_steps,
                      geometry=Geometry(normalization=o.extrema_normalization), endpoints=o.extrema_endpoints,
                      seed=o.seed, progress=ctx.progress)
    return r.to_dict()


def _hist(h: list[int]) -> str:
    last = max((i for i, c in enumerate(h) if c), default=0)
    return " ".join(f"{i}:{c}" for i, c in enumerate(h[:last + 1]))


def _extrema_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"local minima / maxima ({s['directions']} dirs, radius {s['radius']:g})",
             f"{s['mean_minima']:.3g} / {s['mean_maxima']:.3g} per direction"),
            ("  histogram of minima (count:directions)", _hist(s["minima_histogram"])),
            ("  histogram of maxima", _hist(s["maxima_histogram"]))]


register_measure(Measure("local_extrema", "local extrema along random directions", _extrema_args, _extrema,
                         _extrema_rows, enabled=lambda o: o.extrema_directions > 0, scalars=_extrema_scalars))


# ---------------------------------------------------------------------- corruption
def _corruption_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--corruption-eps", type=_floats, default="", metavar="EPS",
                   help="L2 radii of parameter corruptions, comma-separated (GA-SAM: 0.05,0.1,0.2) [default: off]")
    g.add_argument("--corruption-eps-inf", type=_floats, default="", metavar="EPS",
                   help="Linf radii (GA-SAM: 1e-4,2e-4,5e-4) [default: off]")
    g.add_argument("--corruption-normalization", choices=NORMALIZATIONS, default="none",
                   help="normalization operator T of the corruption ball [default: none]")
    g.add_argument("--corruption-eta", type=float, metavar="X", default=0.0, help="eta added to T [default: 0]")
    g.add_argument("--corruption-exclude", choices=EXCLUDE, default="none",
                   help="biases / norm-layer weights: like the others, T = 1, or not corrupted [default: none]")
    g.add_argument("--corruption-draws", type=int, metavar="N", default=5,
                   help="random corruptions per radius (0: none) [default: 5]")
    g.add_argument("--corruption-steps", type=int, metavar="N", default=20,
                   help="steps of the adversarial corruption (apgd ascent; 0: none) [default: 20]")
    g.add_argument("--corruption-restarts", type=int, metavar="N", default=0,
                   help="extra random-start attacks [default: 0]")


def _corruption(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    eps = {k: parse_floats(v) for k, v in (("2", o.corruption_eps), ("inf", o.corruption_eps_inf)) if parse_floats(v)}
    split = o.split
    others = {} if split == "test" or not ctx.has_split("test") else {"test": ctx.objective("test", full=True)}
    r = corruption_robustness(ctx.objective(), eps, normalization=o.corruption_normalization, eta=o.corruption_eta,
                              exclude=o.corruption_exclude, draws=o.corruption_draws, steps=o.corruption_steps,
                              restarts=o.corruption_restarts, seed=o.seed, evaluate_on=others, name=split,
                              progress=ctx.progress)
    return {"attacked_split": split, **r.to_dict()}


def _corruption_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    splits = list(s["clean"])
    out = [("corruption: clean " + " / ".join(splits),
            " / ".join(f"loss {_g(s['clean'][k]['loss'])} acc {_g(s['clean'][k]['acc'])}" for k in splits))]
    for row in s["rows"]:
        label = f"  L{row['p']} eps={row['eps']:g} {row['kind']}"
        out.append((label, " / ".join(f"acc drop {_g(row[k]['acc_drop'])} loss {row[k]['loss_increase']:+.4g}"
                                      for k in splits)))
        out += [("  " + label, value) for label, value in _ascent_row(row, "--corruption-steps")]
    return out


register_measure(Measure("corruption", "parameter-corruption robustness", _corruption_args, _corruption,
                         _corruption_rows,
                         enabled=lambda o: bool(parse_floats(o.corruption_eps) or parse_floats(o.corruption_eps_inf)),
                         scalars=_corruption_scalars))


# ---------------------------------------------------------------------- PAC-Bayes
def _pac_args(g: argparse._ArgumentGroup) -> None:
    g.add_argument("--pac-bayes", action="store_true",
                   help="PAC-Bayes flatness (Jiang et al.): largest weight-noise sigma dropping accuracy by "
                        "--pac-bayes-deviation, plain and magnitude-aware [default: off]")
    g.add_argument("--pac-bayes-deviation", type=float, metavar="X", default=0.1,
                   help="target accuracy drop [default: 0.1]")
    g.add_argument("--pac-bayes-samples", type=int, metavar="N", default=10, help="noise draws per sigma [default: 10]")
    g.add_argument("--pac-bayes-iterations", type=int, metavar="N", default=20,
                   help="most bisection steps [default: 20]")
    g.add_argument("--pac-bayes-tol", type=float, metavar="X", default=0.01,
                   help="stop once |drop - deviation| < tol [default: 0.01]")
    g.add_argument("--pac-bayes-eps", type=float, metavar="X", default=1e-3,
                   help="epsilon' of the magnitude-aware noise std sigma'|w_i| + epsilon' [default: 1e-3]")


def _pac(ctx: AnalysisContext) -> dict[str, Any]:
    o = ctx.options
    r = pac_bayes_flatness(ctx.objective(), deviation=o.pac_bayes_deviation, samples=o.pac_bayes_samples,
                           iterations=o.pac_bayes_iterations, tol=o.pac_bayes_tol, magnitude_eps=o.pac_bayes_eps,
                           seed=o.seed, progress=ctx.progress)
    return r.to_dict()


def _pac_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    out = [(f"PAC-Bayes sigma' ({s['metric']} drop {s['deviation']:g})",
            f"{_g(s['sigma'])}  (flatness 1/sigma'^2 {_g(s['flatness'])}, bound {_g(s['bound_orig'])})")]
    if s.get("sigma_mag") is not None:
        out.append(("  magnitude-aware sigma'", f"{_g(s['sigma_mag'])}  (1/sigma'^2 {_g(s['mag_flatness'])})"))
    return out


register_measure(Measure("pac_bayes", "PAC-Bayes flatness", _pac_args, _pac, _pac_rows, enabled=lambda o: o.pac_bayes,
                         scalars=_pac_scalars))
