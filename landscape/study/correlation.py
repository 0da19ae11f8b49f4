"""Rank correlation of measures with generalization: Kendall's tau, granulated psi_i and Psi, bootstrap CIs.

* ``tau``: :func:`scipy.stats.kendalltau` (``variant="b"``, which corrects for ties, the default; ``"c"``),
  or ``"a"``: asam.txt App. B's ``2 / (n (n - 1)) sum_{i<j} sign(m_i - m_j) sign(g_i - g_j)`` (equal to
  tau-b when there are no ties).
* ``psi_i`` (Jiang et al. 2019; asam.txt App. B): for hyper-parameter axis ``i``, the mean over every
  fixed setting of the other axes (and of the context columns, the seed) of tau over the runs that
  differ only in axis ``i``; ``Psi`` is the mean of ``psi_i`` over the axes. A slice with fewer than two
  usable runs, or whose tau is undefined (a constant measure or target), is skipped; ``slices`` reports
  ``(used, total)``. This works on any table; on a full Cartesian grid it is exactly the paper's formula.
* Bootstrap: tau from runs resampled with replacement; ``psi_i`` from the axis's slice taus resampled
  with replacement; ``Psi`` from the mean of the per-axis draws. Percentile intervals, seeded RNG.

Optimizers (see :func:`groups`): in the group ``all`` the optimizer *variant* (method plus its swept
hyper-parameters, e.g. ``sam(rho=0.05)``) is one categorical axis, ``optimizer``. The study grid is
shared axes x variants x seeds, a Cartesian product even when each method sweeps its own
hyper-parameters, so ``psi_optimizer`` compares the variants at every fixed shared setting. Each
optimizer label also gets its own group, whose axes are the shared axes plus the method's swept
hyper-parameters (``rho``), so ``psi_rho`` is measured within SAM only.
"""
from __future__ import annotations

import fnmatch
import json
import math
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import numpy as np

CONTEXT = ("seed",)


def kendall_tau(x: Sequence[float], y: Sequence[float], variant: str = "b") -> float:
    """Kendall's tau of the pairs where both are finite; NaN with fewer than 2 pairs or a constant side."""
    from scipy.stats import kendalltau

    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if variant not in ("a", "b", "c"):
        raise ValueError(f"tau variant must be 'a', 'b' or 'c', got {variant!r}")
    if len(x) < 2 or np.all(x == x[0]) or np.all(y == y[0]):
        return math.nan
    if variant == "a":
        n = len(x)
        s = np.sign(x[:, None] - x[None, :]) * np.sign(y[:, None] - y[None, :])
        return float(np.triu(s, 1).sum() * 2.0 / (n * (n - 1)))
    return float(kendalltau(x, y, variant=variant).statistic)


def _key(value: Any) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def slice_taus(rows: Sequence[dict[str, Any]], measure: str, target: str, axis: str, axes: Sequence[str],
               context: Sequence[str] = CONTEXT, variant: str = "b") -> tuple[list[float], int]:
    """Taus of the slices along ``axis`` (other axes and context fixed) that have one; and the slice count."""
    others = [a for a in axes if a != axis] + [c for c in context if c not in axes]
    slices: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        slices.setdefault(_key([r.get(a) for a in others]), []).append(r)
    taus = []
    for members in slices.values():
        t = kendall_tau([_num(r.get(measure)) for r in members], [_num(r.get(target)) for r in members], variant)
        if math.isfinite(t):
            taus.append(t)
    return taus, len(slices)


def granulated(rows: Sequence[dict[str, Any]], measure: str, target: str, axes: Sequence[str],
               context: Sequence[str] = CONTEXT, variant: str = "b") -> tuple[dict[str, float], float]:
    """``({axis: psi_i}, Psi)``; ``psi_i`` is NaN when no slice along the axis has a tau, Psi the mean of
    the finite ``psi_i`` (NaN if none)."""
    psi = {}
    for axis in axes:
        taus, _ = slice_taus(rows, measure, target, axis, axes, context, variant)
        psi[axis] = float(np.mean(taus)) if taus else math.nan
    finite = [v for v in psi.values() if math.isfinite(v)]
    return psi, (float(np.mean(finite)) if finite else math.nan)


def bootstrap_tau(x: Sequence[float], y: Sequence[float], *, n_boot: int = 1000, confidence: float = 0.95,
                  seed: int = 0, variant: str = "b") -> tuple[float, float]:
    """Percentile interval of tau over ``n_boot`` resamples (with replacement) of the finite pairs."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    if n_boot <= 0 or len(x) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(x), size=(n_boot, len(x)))
    return _interval(tau_batch(x[idx], y[idx], variant), confidence)


def tau_batch(x: np.ndarray, y: np.ndarray, variant: str = "b") -> np.ndarray:
    """Kendall's tau of each row pair of ``(B, n)`` finite arrays, vectorized (the same numbers as
    :func:`kendall_tau`: tau-b = S / sqrt(sum |sx| sum |sy|), S = sum sx sy over pairs i < j)."""
    x, y = np.atleast_2d(np.asarray(x, dtype=float)), np.atleast_2d(np.asarray(y, dtype=float))
    B, n = x.shape
    out = np.empty(B)
    iu = np.triu_indices(n, 1)
    chunk = max(1, 4_000_000 // max(1, n * n))
    for s in range(0, B, chunk):
        xs, ys = x[s:s + chunk], y[s:s + chunk]
        sx = np.sign(xs[:, :, None] - xs[:, None, :])[:, iu[0], iu[1]]
        sy = np.sign(ys[:, :, None] - ys[:, None, :])[:, iu[0], iu[1]]
        S = (sx * sy).sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            if variant == "a":
                t = S / (n * (n - 1) / 2.0)
            elif variant == "b":
                t = S / np.sqrt(np.abs(sx).sum(axis=1) * np.abs(sy).sum(axis=1))
            elif variant == "c":
                m = np.minimum(_distinct(xs), _distinct(ys))
                t = 2.0 * S / (n * n * (m - 1) / m)
                t[m < 2] = np.nan
            else:
                raise ValueError(f"tau variant must be 'a', 'b' or 'c', got {variant!r}")
        t[(np.abs(sx).sum(axis=1) == 0) | (np.abs(sy).sum(axis=1) == 0)] = np.nan  # a constant side
        out[s:s + chunk] = t
    return out


def _distinct(a: np.ndarray) -> np.ndarray:
    srt = np.sort(a, axis=1)
    return 1 + (np.diff(srt, axis=1) != 0).sum(axis=1)


def bootstrap_mean(values: Sequence[float], *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """``n_boot`` means of ``values`` resampled with replacement."""
    v = np.asarray(values, dtype=float)
    if n_boot <= 0 or len(v) == 0:
        return np.full(max(n_boot, 0), math.nan)
    rng = np.random.default_rng(seed)
    return v[rng.integers(0, len(v), size=(n_boot, len(v)))].mean(axis=1)


def _interval(draws: np.ndarray, confidence: float) -> tuple[float, float]:
    draws = draws[np.isfinite(draws)]
    if len(draws) == 0:
        return math.nan, math.nan
    a = (1.0 - confidence) / 2.0
    lo, hi = np.quantile(draws, [a, 1.0 - a])
    return float(lo), float(hi)


def _num(v: Any) -> float:
    if v is None or isinstance(v, bool) or v == "":
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


@dataclass
class MeasureStats:
    """The statistics of one measure against one target within one group of runs."""

    measure: str
    n: int
    tau: float
    tau_ci: tuple[float, float]
    p_value: float
    psi: dict[str, float]
    psi_ci: dict[str, tuple[float, float]]
    slices: dict[str, tuple[int, int]]
    Psi: float
    Psi_ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {"measure": self.measure, "n": self.n, "tau": self.tau, "tau_ci": list(self.tau_ci),
                "p_value": self.p_value, "psi": self.psi, "psi_ci": {k: list(v) for k, v in self.psi_ci.items()},
                "slices": {k: list(v) for k, v in self.slices.items()}, "Psi": self.Psi, "Psi_ci": list(self.Psi_ci)}


def measure_stats(rows: Sequence[dict[str, Any]], measure: str, target: str, axes: Sequence[str], *,
                  context: Sequence[str] = CONTEXT, variant: str = "b", n_boot: int = 1000,
                  confidence: float = 0.95, seed: int = 0) -> MeasureStats:
    """tau, p-value, psi_i, Psi and their bootstrap intervals of ``measure`` vs ``target`` over ``rows``."""
    from scipy.stats import kendalltau

    m = np.array([_num(r.get(measure)) for r in rows])
    g = np.array([_num(r.get(target)) for r in rows])
    ok = np.isfinite(m) & np.isfinite(g)
    tau = kendall_tau(m, g, variant)
    p = math.nan
    if math.isfinite(tau) and variant in ("b", "c"):
        p = float(kendalltau(m[ok], g[ok], variant=variant).pvalue)
    tau_ci = bootstrap_tau(m, g, n_boot=n_boot, confidence=confidence, seed=seed, variant=variant)
    psi, psi_ci, slices, draws = {}, {}, {}, []
    for k, axis in enumerate(axes):
        taus, total = slice_taus(rows, measure, target, axis, axes, context, variant)
        psi[axis] = float(np.mean(taus)) if taus else math.nan
        slices[axis] = (len(taus), total)
        d = bootstrap_mean(taus, n_boot=n_boot, seed=seed + 1 + k)
        psi_ci[axis] = _interval(d, confidence) if taus else (math.nan, math.nan)
        if taus:
            draws.append(d)
    finite = [v for v in psi.values() if math.isfinite(v)]
    Psi = float(np.mean(finite)) if finite else math.nan
    Psi_ci = _interval(np.mean(draws, axis=0), confidence) if draws and n_boot > 0 else (math.nan, math.nan)
    return MeasureStats(measure=measure, n=int(ok.sum()), tau=tau, tau_ci=tau_ci, p_value=p, psi=psi,
                        psi_ci=psi_ci, slices=slices, Psi=Psi, Psi_ci=Psi_ci)


# ------------------------------------------------------------------------ the study
def measure_columns(measures: Sequence[str], columns: Sequence[str], patterns: Iterable[str] = ()) -> list[str]:
    """The columns to correlate: those of ``columns`` matching ``patterns`` (globs), by default ``measures``."""
    patterns = list(patterns)
    if not patterns:
        return list(measures)
    return [c for c in columns if any(fnmatch.fnmatchcase(c, p) for p in patterns)]


def usable(rows: Sequence[dict[str, Any]], min_train_acc: float | None) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Finished runs that pass the train-accuracy filter, and how many were left out and why."""
    out, excluded = [], {}
    for r in rows:
        status = r.get("status")
        if status != "done":
            excluded[status] = excluded.get(status, 0) + 1
        elif min_train_acc is not None and not _num(r.get("train_acc")) >= min_train_acc:
            excluded["below_min_train_acc"] = excluded.get("below_min_train_acc", 0) + 1
        else:
            out.append(r)
    return out, excluded


def groups(study: Any, rows: Sequence[dict[str, Any]]) -> dict[str, tuple[list[dict[str, Any]], list[str]]]:
    """``{group: (rows, axes)}``: ``all`` (shared axes + the variant axis ``optimizer``), then one group per
    optimizer label when there are several (shared axes + that method's swept hyper-parameters).
    Only axes with at least two values in the study are axes."""
    shared = [a for a, v in study.axes.items() if len(v) > 1]
    variants = {r.variant for r in study.runs}
    out = {"all": (list(rows), shared + (["optimizer"] if len(variants) > 1 else []))}
    if len(study.optimizer_axes) > 1:
        for label, hp in study.optimizer_axes.items():
            out[label] = ([r for r in rows if r.get("optimizer") == label],
                          shared + [h for h, v in hp.items() if len(v) > 1])
    return out


def correlate(study: Any, table: Any, spec: Any = None) -> dict[str, Any]:
    """Every statistic of the study's results ``table`` as a JSON-ready dict (see the module docstring)."""
    spec = spec or study.correlation
    rows = table.rows
    kept, excluded = usable(rows, spec.min_train_acc)
    measures = measure_columns(table.measures, table.columns, spec.measures)
    missing = [t for t in spec.targets if t not in table.columns]
    if missing:
        raise ValueError(f"[correlation] targets: no column {', '.join(missing)} in the results table "
                         "(e.g. gen_gap, test_error, loss_gap, test_loss)")
    if spec.measures and table.measures and not measures:
        raise ValueError(f"[correlation] measures: no column matches {', '.join(spec.measures)}; "
                         f"the measures are {', '.join(table.measures)}")
    # A measure constant over the runs (a setting echoed by a section, say) has no rank correlation.
    constant = [m for m in measures if len({v for v in (_num(r.get(m)) for r in kept) if math.isfinite(v)}) < 2]
    if len(kept) >= 2:
        measures = [m for m in measures if m not in constant]
    else:
        constant = []
    result: dict[str, Any] = {
        "study": study.name, "tau_variant": spec.tau, "rank_by": spec.rank_by, "min_train_acc": spec.min_train_acc,
        "bootstrap": {"draws": spec.bootstrap, "confidence": spec.confidence, "seed": spec.seed},
        "runs": {"total": len(rows), "used": len(kept), "excluded": excluded},
        "measures": measures, "constant_measures": constant, "targets": list(spec.targets), "groups": {}}
    for name, (members, axes) in groups(study, kept).items():
        # The optimizer axis lives in the "variant" column; psi is keyed by the axis name.
        data = [{**r, "optimizer": r.get("variant")} for r in members] if "optimizer" in axes else list(members)
        group: dict[str, Any] = {"axes": axes, "context": list(CONTEXT), "runs": len(members), "targets": {}}
        for target in spec.targets:
            stats = [measure_stats(data, m, target, axes, variant=spec.tau, n_boot=spec.bootstrap,
                                   confidence=spec.confidence, seed=spec.seed).to_dict() for m in measures]
            group["targets"][target] = rank(stats, spec.rank_by)
        result["groups"][name] = group
    return result


def rank(stats: list[dict[str, Any]], by: str = "psi") -> list[dict[str, Any]]:
    """Best first: by Psi (then tau) or by tau; NaN last."""
    def key(s: dict[str, Any]) -> tuple[float, float]:
        a, b = (s["Psi"], s["tau"]) if by == "psi" else (s["tau"], s["Psi"])
        return (-a if math.isfinite(a) else math.inf, -b if math.isfinite(b) else math.inf)

    return sorted(stats, key=key)


__all__ = ["CONTEXT", "MeasureStats", "bootstrap_mean", "bootstrap_tau", "correlate", "granulated",
           "groups", "kendall_tau", "measure_columns", "measure_stats", "rank", "slice_taus", "tau_batch", "usable"]
