"""Kendall tau, granulated psi_i / Psi and bootstrap intervals against scipy and hand computations."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy.stats import kendalltau

from landscape.study.correlation import (bootstrap_tau, granulated, kendall_tau, measure_stats, rank, slice_taus,
                                         usable)


def tau_by_hand(x, y, variant="b"):
    """Count concordant / discordant pairs and ties, straight from the definitions."""
    n = len(x)
    nc = nd = tx = ty = 0
    for i, j in itertools.combinations(range(n), 2):
        dx, dy = np.sign(x[i] - x[j]), np.sign(y[i] - y[j])
        tx += dx == 0
        ty += dy == 0
        nc += dx * dy > 0
        nd += dx * dy < 0
    n0 = n * (n - 1) / 2
    if variant == "a":
        return (nc - nd) / n0
    return (nc - nd) / math.sqrt((n0 - tx) * (n0 - ty))


def test_tau_with_ties_equals_scipy_and_hand_computation():
    x, y = [1, 2, 2, 3], [1, 3, 2, 2]
    # Pairs: 3 concordant, 1 discordant, one tie in x, one in y:
    # tau-b = (3 - 1) / sqrt((6 - 1)(6 - 1)) = 0.4; tau-a (asam.txt App. B) = (3 - 1) / 6.
    assert kendall_tau(x, y) == pytest.approx(0.4, abs=1e-15)
    assert kendall_tau(x, y, "a") == pytest.approx(1 / 3, abs=1e-15)
    assert kendall_tau(x, y) == pytest.approx(kendalltau(x, y).statistic, abs=1e-15)
    rng = np.random.default_rng(0)
    for _ in range(20):
        a, b = rng.integers(0, 4, 12).astype(float), rng.integers(0, 5, 12).astype(float)  # many ties
        assert kendall_tau(a, b) == pytest.approx(kendalltau(a, b).statistic, abs=1e-12)
        assert kendall_tau(a, b) == pytest.approx(tau_by_hand(a, b), abs=1e-12)
        assert kendall_tau(a, b, "a") == pytest.approx(tau_by_hand(a, b, "a"), abs=1e-12)
        assert kendall_tau(a, b, "c") == pytest.approx(kendalltau(a, b, variant="c").statistic, abs=1e-12)
    a, b = rng.normal(size=30), rng.normal(size=30)  # no ties: tau-a == tau-b
    assert kendall_tau(a, b, "a") == pytest.approx(kendall_tau(a, b), abs=1e-12)


def test_tau_drops_non_finite_pairs_and_is_nan_when_undefined():
    assert kendall_tau([1, 2, np.nan, 3], [1, 2, 5, np.inf]) == 1.0
    assert math.isnan(kendall_tau([1], [1]))
    assert math.isnan(kendall_tau([1, 1, 1], [1, 2, 3]))
    with pytest.raises(ValueError):
        kendall_tau([1, 2], [1, 2], "d")


def grid_rows():
    """Axes a in {0, 1, 2}, b in {0, 1}; measure m, gap g."""
    m = {(0, 0): 1, (1, 0): 2, (2, 0): 3, (0, 1): 4, (1, 1): 5, (2, 1): 6}
    g = {(0, 0): 1, (1, 0): 3, (2, 0): 2, (0, 1): 6, (1, 1): 5, (2, 1): 4}
    return [{"a": a, "b": b, "seed": 0, "m": m[a, b], "g": g[a, b]} for b in (0, 1) for a in (0, 1, 2)]


def test_psi_and_Psi_equal_a_hand_computation():
    rows = grid_rows()
    # psi_a: b = 0: m 1,2,3 vs g 1,3,2 -> (2 - 1) / 3 = 1/3; b = 1: g 6,5,4 -> -1; mean -1/3.
    # psi_b: for each a the pair (b=0, b=1) is concordant -> +1 three times; Psi = (-1/3 + 1) / 2 = 1/3.
    psi, Psi = granulated(rows, "m", "g", ["a", "b"])
    assert psi["a"] == pytest.approx(-1 / 3) and psi["b"] == pytest.approx(1.0) and Psi == pytest.approx(1 / 3)
    taus, total = slice_taus(rows, "m", "g", "a", ["a", "b"])
    assert sorted(taus) == pytest.approx([-1.0, 1 / 3]) and total == 2
    # The overall tau: m = 1..6 against g = 1,3,2,6,5,4: 4 of 15 pairs discordant -> 7/15.
    s = measure_stats(rows, "m", "g", ["a", "b"], n_boot=0)
    assert s.tau == pytest.approx(7 / 15) and s.n == 6 and s.Psi == pytest.approx(1 / 3)
    assert s.slices == {"a": (2, 2), "b": (3, 3)} and math.isnan(s.tau_ci[0])


def test_psi_holds_the_seed_fixed_and_skips_holes():
    rows = grid_rows()
    # A second seed whose measure is reversed: every slice tau flips sign, so each psi averages to 0.
    rows2 = [{**r, "seed": 1, "m": -r["m"]} for r in rows]
    psi, Psi = granulated(rows + rows2, "m", "g", ["a", "b"])
    assert psi["a"] == pytest.approx(0.0) and psi["b"] == pytest.approx(0.0) and Psi == pytest.approx(0.0)
    # A hole (a diverged run): the a=1, b=1 point is gone. Slice b=1 keeps 2 points (a=0, 2): g 6,4 vs m 4,6
    # -> -1; slice a=1 along b has 1 point -> skipped.
    holed = [r for r in rows if (r["a"], r["b"]) != (1, 1)]
    s = measure_stats(holed, "m", "g", ["a", "b"], n_boot=0)
    assert s.psi["a"] == pytest.approx((1 / 3 - 1) / 2) and s.psi["b"] == pytest.approx(1.0)
    assert s.slices == {"a": (2, 2), "b": (2, 3)}
    nan_row = [{**r, "m": float("nan")} if r["a"] == 1 else r for r in rows]
    assert measure_stats(nan_row, "m", "g", ["a", "b"], n_boot=0).n == 4


def test_bootstrap_is_reproducible_by_seed_and_brackets_the_estimate():
    rng = np.random.default_rng(1)
    x = rng.normal(size=40)
    y = x + rng.normal(size=40)
    tau = kendall_tau(x, y)
    ci = bootstrap_tau(x, y, n_boot=500, seed=3)
    assert ci == bootstrap_tau(x, y, n_boot=500, seed=3)
    assert ci != bootstrap_tau(x, y, n_boot=500, seed=4)
    assert ci[0] < tau < ci[1] and 0 < ci[0]
    lo, hi = bootstrap_tau(x, y, n_boot=500, seed=3, confidence=0.5)
    assert ci[0] < lo < tau < hi < ci[1]
    rows = [{"a": a, "b": b, "seed": 0, "m": x[4 * a + b], "g": y[4 * a + b]} for a in range(10) for b in range(4)]
    s1 = measure_stats(rows, "m", "g", ["a", "b"], n_boot=300, seed=7)
    s2 = measure_stats(rows, "m", "g", ["a", "b"], n_boot=300, seed=7)
    assert s1 == s2 and s1.tau_ci == bootstrap_tau(x, y, n_boot=300, seed=7)
    assert s1.Psi_ci[0] <= s1.Psi <= s1.Psi_ci[1]
    for axis in ("a", "b"):
        assert s1.psi_ci[axis][0] <= s1.psi[axis] <= s1.psi_ci[axis][1]


def test_filter_and_ranking():
    rows = [{"status": "done", "train_acc": 1.0}, {"status": "done", "train_acc": 0.9},
            {"status": "diverged", "train_acc": None}, {"status": "failed"}, {"status": "done", "train_acc": None}]
    kept, excluded = usable(rows, 0.99)
    assert kept == rows[:1] and excluded == {"below_min_train_acc": 2, "diverged": 1, "failed": 1}
    assert len(usable(rows, None)[0]) == 3
    stats = [{"measure": "x", "tau": 0.5, "Psi": float("nan")}, {"measure": "y", "tau": 0.1, "Psi": 0.2},
             {"measure": "z", "tau": 0.9, "Psi": 0.1}]
    assert [s["measure"] for s in rank(stats, "psi")] == ["y", "z", "x"]
    assert [s["measure"] for s in rank(stats, "tau")] == ["z", "x", "y"]


@pytest.mark.parametrize("variant", ["a", "b", "c"])
def test_vectorized_tau_of_the_bootstrap_equals_the_scalar_one(variant):
    from landscape.study.correlation import tau_batch

    rng = np.random.default_rng(2)
    x, y = rng.integers(0, 5, (40, 9)).astype(float), rng.integers(0, 3, (40, 9)).astype(float)
    x[0] = 1.0  # a constant row: every variant NaN (the slice says nothing)
    want = np.array([kendall_tau(a, b, variant) for a, b in zip(x, y)])
    assert math.isnan(want[0])
    np.testing.assert_allclose(tau_batch(x, y, variant), want, atol=1e-12, equal_nan=True)


def plain_bootstrap(values_of, n: int, n_boot: int, seed: int, confidence: float):
    """Percentile interval of ``values_of(idx)`` over ``n_boot`` resamples ``idx`` of ``range(n)`` drawn with
    replacement, one resample at a time (rows of ``default_rng(seed).integers(0, n, (n_boot, n))``, the
    documented seeded draws); undefined values (NaN) are left out."""
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    draws = []
    for b in range(n_boot):
        v = values_of(idx[b])
        if math.isfinite(v):
            draws.append(v)
    a = (1 - confidence) / 2
    return tuple(np.quantile(draws, [a, 1 - a])), np.array(draws)


def test_bootstrap_intervals_equal_a_plain_loop_over_resamples():
    """tau's interval: scipy's tau of each resample of the pairs; psi_i's: the mean of each resample of the
    axis's slice taus (seed + 1 + i); Psi's: the mean over the axes of the psi_i draws."""
    rng = np.random.default_rng(5)
    x = rng.integers(0, 6, 13).astype(float)  # ties, an odd count (13 pairs), a NaN pair left out
    y = x + rng.integers(0, 4, 13)
    x[4] = np.nan

    def tau_of(i):
        ok = np.isfinite(x)
        return float(kendalltau(x[ok][i], y[ok][i]).statistic)

    for confidence, seed in ((0.95, 0), (0.8, 3)):
        want, _ = plain_bootstrap(tau_of, 12, 400, seed, confidence)
        assert bootstrap_tau(x, y, n_boot=400, seed=seed, confidence=confidence) == pytest.approx(want, abs=1e-12)
    # three pairs: a resample repeating one point has no tau and is left out (1 in 9 of them)
    a3, b3 = np.array([0.0, 1, 2]), np.array([0.0, 2, 1])
    want, draws = plain_bootstrap(lambda i: kendalltau(a3[i], b3[i]).statistic, 3, 200, 1, 0.9)
    assert 150 < len(draws) < 200
    assert bootstrap_tau(a3, b3, n_boot=200, seed=1, confidence=0.9) == pytest.approx(want, abs=1e-12)
    # psi_i and Psi: a 5 x 3 grid with two seeds; the slice taus by scipy, then the plain-loop resamples
    grid = [{"a": a, "b": b, "seed": s, "m": float(rng.normal()), "g": float(rng.normal())}
            for a in range(5) for b in range(3) for s in range(2)]
    s = measure_stats(grid, "m", "g", ["a", "b"], n_boot=300, seed=11, confidence=0.9)
    slice_tau = {}
    for axis, other in (("a", "b"), ("b", "a")):
        slices = {}
        for r in grid:
            slices.setdefault((r[other], r["seed"]), []).append(r)
        slice_tau[axis] = np.array([kendalltau([r["m"] for r in rs], [r["g"] for r in rs]).statistic
                                    for rs in slices.values()])
        assert s.slices[axis] == (len(slices), len(slices))
    per_axis = []
    for k, axis in enumerate(["a", "b"]):
        taus = slice_tau[axis]
        assert s.psi[axis] == pytest.approx(taus.mean(), abs=1e-12)
        want, draws = plain_bootstrap(lambda i: taus[i].mean(), len(taus), 300, 11 + 1 + k, 0.9)
        assert s.psi_ci[axis] == pytest.approx(want, abs=1e-12)
        per_axis.append(draws)
    Psi_draws = np.mean(per_axis, axis=0)
    assert s.Psi_ci == pytest.approx(tuple(np.quantile(Psi_draws, [0.05, 0.95])), abs=1e-12)
    tau_ci, _ = plain_bootstrap(lambda i: kendalltau(np.array([r["m"] for r in grid])[i],
                                                     np.array([r["g"] for r in grid])[i]).statistic,
                                len(grid), 300, 11, 0.9)
    assert s.tau_ci == pytest.approx(tau_ci, abs=1e-12)


def test_measure_stats_passes_the_variant_through_and_reports_scipys_p_value():
    """Gaps a mutmut run left in this file: the p-value, the tau variant reaching every statistic, the filter's
    boundary, counts per status, the ranking's tie-break, and the bootstrap's degenerate inputs."""
    rng = np.random.default_rng(4)
    rows = [{"a": a, "b": b, "seed": 0, "m": float(rng.integers(0, 3)), "g": float(rng.integers(0, 4))}
            for a in range(4) for b in range(3)]
    m, g = [r["m"] for r in rows], [r["g"] for r in rows]
    for variant in ("b", "c"):
        s = measure_stats(rows, "m", "g", ["a", "b"], n_boot=50, seed=2, variant=variant)
        want = kendalltau(m, g, variant=variant)
        assert s.tau == pytest.approx(want.statistic, abs=1e-12) and s.p_value == pytest.approx(want.pvalue, rel=1e-12)
        assert s.tau_ci == bootstrap_tau(m, g, n_boot=50, seed=2, variant=variant)
        assert s.psi == pytest.approx(granulated(rows, "m", "g", ["a", "b"], variant=variant)[0], nan_ok=True)
    a = measure_stats(rows, "m", "g", ["a", "b"], n_boot=50, seed=2, variant="a")
    assert a.tau == pytest.approx(tau_by_hand(m, g, "a"), abs=1e-12) and math.isnan(a.p_value)  # no test for tau-a
    assert a.tau != measure_stats(rows, "m", "g", ["a", "b"], n_boot=0).tau  # ties: tau-a != tau-b
    assert a.tau_ci == bootstrap_tau(m, g, n_boot=50, seed=2, variant="a")
    assert a.measure == "m" and a.to_dict()["p_value"] != a.to_dict()["p_value"]  # NaN
    # the train-accuracy filter keeps its boundary; every excluded run is counted
    kept, excluded = usable([{"status": "done", "train_acc": 0.99}, {"status": "failed"}, {"status": "failed"},
                             {"status": "done", "train_acc": True}], 0.99)
    assert len(kept) == 1 and excluded == {"failed": 2, "below_min_train_acc": 1}  # a bool is no accuracy
    # ranking by Psi: a tie broken by tau, a NaN tau last
    stats = [{"measure": "x", "tau": float("nan"), "Psi": 0.5}, {"measure": "y", "tau": 0.1, "Psi": 0.5},
             {"measure": "z", "tau": 0.3, "Psi": 0.5}]
    assert [s["measure"] for s in rank(stats, "psi")] == ["z", "y", "x"]
    # degenerate bootstrap inputs: no interval from fewer than two pairs or no draws; one draw is a point
    assert all(math.isnan(v) for v in bootstrap_tau([1.0], [2.0], n_boot=10) + bootstrap_tau([], [], n_boot=10))
    assert all(math.isnan(v) for v in bootstrap_tau([1.0, 2.0], [2.0, 3.0], n_boot=0))
    lo, hi = bootstrap_tau(np.arange(8.0), np.arange(8.0) ** 2, n_boot=1, seed=0)
    assert lo == hi == 1.0
