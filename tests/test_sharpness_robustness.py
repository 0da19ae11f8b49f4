"""Local extrema counts, parameter-corruption robustness and PAC-Bayes flatness: counting rules, exact
sequences, adversarial >= random, and the bisection against closed-form expectations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from landscape.analytic import FunctionObjective, quadratic
from landscape.geometry import Geometry
from landscape.objective import Objective
from landscape.sharpness import (corruption_robustness, count_extrema, expected_drop, find_sigma, local_extrema,
                                 pac_bayes_flatness)
from tests.curvature_helpers import small_mlp


# -------------------------------------------------------------------- local extrema
@pytest.mark.parametrize("seq, interior, included", [
    ([3, 1, 2, 0, 4], (2, 1), (2, 3)),
    ([1, 1, 1], (0, 0), (0, 0)),        # a plateau is no strict extremum
    ([1, 0, 0, 1], (0, 0), (0, 2)),
    ([0, 1, 2, 3], (0, 0), (1, 1)),     # monotone: only the endpoints, one-sided
    ([5], (0, 0), (0, 0)),
])
def test_count_extrema_rule(seq, interior, included):
    assert count_extrema(seq) == interior
    assert count_extrema(seq, "include") == included


def test_cos_line_has_known_extrema():
    """L(t) = cos(pi t) from t = 0 in steps of 0.1 (either direction, L is even): minima at k = 10, 30, a maximum
    at k = 20; with endpoints, k = 0 and k = 40 are maxima too."""
    obj = FunctionObjective(lambda w: torch.cos(math.pi * w[0]), torch.zeros(1, dtype=torch.float64))
    r = local_extrema(obj, directions=4, step=0.1, steps=40, seed=1)
    assert r.minima == [2] * 4 and r.maxima == [1] * 4 and r.radius == pytest.approx(4.0)
    assert r.minima_histogram[2] == 4 and sum(r.minima_histogram) == 4 and r.mean_minima == 2.0
    assert r.fraction_with_minimum == 1.0
    np.testing.assert_allclose(r.losses[0], np.cos(np.pi * 0.1 * np.arange(41)), atol=1e-12)
    inc = local_extrema(obj, directions=4, step=0.1, steps=40, seed=1, endpoints="include")
    assert inc.maxima == [3] * 4 and inc.minima == [2] * 4
    assert r.work["losses"] == 4 * 40 + 1


def test_directions_have_the_step_norm_and_are_seeded():
    A = torch.eye(7, dtype=torch.float64)
    obj = quadratic(A)
    r = local_extrema(obj, directions=5, step=0.03, steps=6, seed=2)
    for seq in r.losses:  # L(k d) = k^2 ||d||^2 / 2 with ||d|| = step exactly
        np.testing.assert_allclose(seq, 0.5 * (0.03 * np.arange(7)) ** 2, rtol=1e-12)
    assert r.minima == [0] * 5 and r.maxima == [0] * 5
    # filter-normalized (here element-wise: ||d / |w| || = step) and seeded: reproducible
    w0 = torch.linspace(0.5, 2.0, 7, dtype=torch.float64)
    obj = quadratic(A, w0=w0)
    a = local_extrema(obj, directions=3, step=0.1, steps=5, geometry=Geometry(normalization="filter"), seed=4)
    b = local_extrema(obj, directions=3, step=0.1, steps=5, geometry=Geometry(normalization="filter"), seed=4)
    assert a.losses == b.losses
    assert a.losses != local_extrema(obj, directions=3, step=0.1, steps=5, seed=5).losses


# ----------------------------------------------------------------------- corruption
@pytest.fixture(scope="module")
def objectives():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(60, 5, generator=g, dtype=torch.float64)
    y = (x[:, 0] > 0).long() + (x[:, 1] > 0.5).long()
    model = small_mlp()
    return Objective(model, x[:40], y[:40]), Objective(model, x[40:], y[40:])


def test_corruption_rows_and_adversarial_beats_random(objectives):
    train, test = objectives
    eps = {"2": [0.1, 0.5], "inf": [0.05]}
    r = corruption_robustness(train, eps, draws=4, steps=5, evaluate_on={"test": test}, name="train")
    assert [(row["p"], row["eps"], row["kind"]) for row in r.rows] == [
        ("2", 0.1, "random"), ("2", 0.1, "adversarial"), ("2", 0.5, "random"), ("2", 0.5, "adversarial"),
        ("inf", 0.05, "random"), ("inf", 0.05, "adversarial")]
    assert set(r.clean) == {"train", "test"} and r.clean["train"]["loss"] == pytest.approx(train.loss())
    by = {(row["p"], row["eps"], row["kind"]): row for row in r.rows}
    for p, radii in eps.items():
        for e in radii:
            rnd, adv = by[(p, e, "random")]["train"], by[(p, e, "adversarial")]["train"]
            assert adv["loss_increase"] > rnd["loss_increase"] > -0.05
            assert rnd["acc_drop"] == pytest.approx(r.clean["train"]["acc"] - rnd["acc"])
            assert "loss_std" in rnd and "loss_std" not in adv
            assert by[(p, e, "adversarial")]["corruption_norm"] == pytest.approx(e, rel=1e-9)
            assert by[(p, e, "adversarial")]["test"]["acc"] is not None
    assert by[("2", 0.5, "adversarial")]["train"]["loss_increase"] > by[("2", 0.1, "adversarial")]["train"][
        "loss_increase"]
    # reproducible from the seed; a plain list is L2; a T-scaled ball works the same way
    again = corruption_robustness(train, [0.1], draws=4, steps=5)
    assert again.rows[0]["objective"] == pytest.approx(r.rows[0]["train"])
    t = corruption_robustness(train, {"inf": [0.1]}, normalization="element", draws=2, steps=3)
    assert t.rows[1]["corruption_norm"] == pytest.approx(0.1, rel=1e-9)
    assert r.work["grads"] == 3 * 5


def test_corruption_bad_norm(objectives):
    with pytest.raises(ValueError, match="'2' or 'inf'"):
        corruption_robustness(objectives[0], {"1": [0.1]})


# ----------------------------------------------------------------------- PAC-Bayes
S = 0.5
W0 = torch.tensor([0.2, -1.0, 3.0, 0.05, -0.4, 1.5, 0.0, 2.2], dtype=torch.float64)


def gaussian_bump() -> FunctionObjective:
    """acc(w) = exp(-||w - w0||^2 / (2 s^2)); under u_i ~ N(0, s_i^2): E acc = prod_i (1 + s_i^2 / s^2)^(-1/2)."""
    return FunctionObjective(lambda w: 0.5 * ((w - W0) ** 2).sum(), W0,
                             accuracy=lambda w: torch.exp(-((w - W0) ** 2).sum() / (2 * S ** 2)))


def expected_acc(stds: np.ndarray) -> float:
    return float(np.prod((1 + stds ** 2 / S ** 2) ** -0.5))


def test_bisection_finds_the_known_sigma():
    obj = gaussian_bump()
    d, eps = 0.1, 1e-2
    P = len(W0)
    exact = S * math.sqrt((1 - d) ** (-2 / P) - 1)
    r = find_sigma(obj, deviation=d, samples=1000, tol=1e-3, seed=0)
    assert r.converged and abs(r.drop - d) < 1e-3
    assert r.sigma == pytest.approx(exact, rel=0.03)
    lo, hi = r.bracket
    assert lo <= r.sigma <= hi
    # common random numbers: the drop is a deterministic function of sigma, bracketing the target
    assert expected_drop(obj, r.sigma, samples=1000, seed=0) == r.drop
    assert expected_drop(obj, 0.8 * r.sigma, samples=1000, seed=0) < d < expected_drop(obj, 1.2 * r.sigma,
                                                                                      samples=1000, seed=0)
    # magnitude-aware: std_i = sigma |w_i| + eps
    w = W0.abs().numpy()
    exact_mag = brentq(lambda s: 1 - expected_acc(s * w + eps) - d, 1e-6, 10.0)
    m = find_sigma(obj, deviation=d, magnitude_eps=eps, samples=1000, tol=1e-3, seed=0)
    assert m.converged and m.sigma == pytest.approx(exact_mag, rel=0.03)


def test_flatness_measures():
    obj = gaussian_bump()
    r = pac_bayes_flatness(obj, samples=500, tol=2e-3, w_init=torch.zeros_like(W0))
    assert r.metric == "acc" and r.sigma_mag is not None
    assert r.flatness == pytest.approx(1 / r.sigma ** 2) and r.mag_flatness == pytest.approx(1 / r.sigma_mag ** 2)
    m, s = r.num_samples, r.sigma
    assert r.bound_orig == pytest.approx(float(W0 @ W0) / (4 * s * s) + math.log(m / s) + 10)
    assert r.bound_init == pytest.approx(r.bound_orig) and r.mag_bound_init == pytest.approx(r.mag_bound_orig)
    d = r.to_dict()
    assert d["plain"]["sigma"] == d["sigma"] and len(d["plain"]["history"]) >= 2
    plain_only = pac_bayes_flatness(obj, samples=50, magnitude=False)
    assert plain_only.magnitude is None and plain_only.mag_flatness is None
    # a regression-like objective (no accuracy) uses the loss increase
    loss_only = FunctionObjective(lambda w: 0.5 * ((w - W0) ** 2).sum(), W0)
    r = pac_bayes_flatness(loss_only, samples=200, deviation=0.5, magnitude=False, tol=1e-2)
    assert r.metric == "loss" and r.sigma == pytest.approx(math.sqrt(2 * 0.5 / len(W0)), rel=0.1)


def test_pac_bayes_bounds_worked_by_hand(monkeypatch):
    """Jiang et al.'s bound terms at fixed sigmas (the search stubbed out: plain sigma' = 0.2, magnitude-aware
    sigma' = 0.5) for w = (3, 4), w_init = (3, 0), m = 100 samples, omega = 2 weights, eps' = 0.1:

    * orig:     ||w||^2 / (4 sigma^2) + log(m / sigma) + 10 = 25 / 0.16 + log(500) + 10
    * init:     ||w - w_init||^2 = 16: 16 / 0.16 + log(500) + 10
    * mag.init: num = eps^2 + (0.25 + 1) 16 / 2 = 10.01, den_i = eps^2 + 0.25 (w_i - w_init_i)^2 = 0.01, 4.01:
                1/4 (log(10.01 / 0.01) + log(10.01 / 4.01)) + log(200) + 10
    * mag.orig: num = eps^2 + 1.25 * 25 / 2 = 15.635 over the same den_i (Jiang et al.'s eq. for pacbayes.mag.orig
                keeps |w_i - w_init_i| in the denominator): 1/4 (log(15.635 / 0.01) + log(15.635 / 4.01)) + ...;
                without w_init (w_init = 0): den_i = eps^2 + 0.25 w_i^2 = 2.26, 4.01.
    """
    from landscape.sharpness import pac_bayes
    from landscape.sharpness.pac_bayes import SigmaSearch

    def stub(objective, *, magnitude_eps=None, **kw):
        s = 0.2 if magnitude_eps is None else 0.5
        return SigmaSearch(s, 0.1, (s, s), True, [(s, 0.1)])

    monkeypatch.setattr(pac_bayes, "find_sigma", stub)
    obj = FunctionObjective(lambda w: 0.5 * (w ** 2).sum(), torch.tensor([3.0, 4.0], dtype=torch.float64))
    obj.num_samples = 100
    r = pac_bayes_flatness(obj, metric="loss", magnitude_eps=0.1, w_init=torch.tensor([3.0, 0.0]))
    assert r.flatness == pytest.approx(25.0, rel=1e-12) and r.mag_flatness == pytest.approx(4.0, rel=1e-12)
    assert r.bound_orig == pytest.approx(156.25 + math.log(500) + 10, rel=1e-12)
    assert r.bound_init == pytest.approx(100.0 + math.log(500) + 10, rel=1e-12)
    assert r.mag_bound_init == pytest.approx(
        0.25 * (math.log(10.01 / 0.01) + math.log(10.01 / 4.01)) + math.log(200) + 10, rel=1e-12)
    assert r.mag_bound_orig == pytest.approx(
        0.25 * (math.log(15.635 / 0.01) + math.log(15.635 / 4.01)) + math.log(200) + 10, rel=1e-12)
    without = pac_bayes_flatness(obj, metric="loss", magnitude_eps=0.1)  # no w_init: only the orig terms
    assert without.bound_init is None and without.mag_bound_init is None
    assert without.bound_orig == pytest.approx(r.bound_orig, rel=1e-12)
    assert without.mag_bound_orig == pytest.approx(
        0.25 * (math.log(15.635 / 2.26) + math.log(15.635 / 4.01)) + math.log(200) + 10, rel=1e-12)


def test_pac_bayes_bounds_use_the_sigmas_found():
    """The bound terms of a real search (no stub) with non-zero initial weights, by a plain loop over weights
    (both magnitude-aware terms divide by eps^2 + sigma^2 (w_i - w_init_i)^2, as in Jiang et al.)."""
    obj = gaussian_bump()
    w_init = torch.linspace(-1.0, 1.0, len(W0), dtype=torch.float64)
    r = pac_bayes_flatness(obj, samples=200, tol=5e-3, w_init=w_init)
    s, sm, m, eps = r.sigma, r.sigma_mag, r.num_samples, r.magnitude_eps
    assert r.sigma != r.sigma_mag and m == 1 and r.num_params == len(W0)
    w, v = W0.tolist(), (W0 - w_init).tolist()
    assert r.bound_init == pytest.approx(sum(x * x for x in v) / (4 * s * s) + math.log(m / s) + 10, rel=1e-12)
    for ref, got in ((w, r.mag_bound_orig), (v, r.mag_bound_init)):
        num = eps ** 2 + (sm ** 2 + 1) * sum(x * x for x in ref) / len(ref)
        want = 0.25 * sum(math.log(num / (eps ** 2 + sm ** 2 * x * x)) for x in v) + math.log(m / sm) + 10
        assert got == pytest.approx(want, rel=1e-12)
