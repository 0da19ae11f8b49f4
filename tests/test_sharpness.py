"""Sharpness measures against closed forms: worst-case sharpness on quadratics (L2 at a minimum, the
trust-region maximum off it, Linf by vertex enumeration), GNR's cos example, the surrogate gap and GNR
eigenvalue estimates as rho -> 0, average-case expectations, per-batch mode, and the work counts."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy.optimize import brentq

from landscape.analytic import FunctionObjective, quadratic
from landscape.geometry import Geometry
from landscape.objective import Objective
from landscape.sharpness import (average_sharpness, gradient_norm_regularizer, rho_sweep, step_sizes, surrogate_gap,
                                 worst_case_sharpness)
from tests.curvature_helpers import small_mlp

LAMBDAS = [4.0, 2.5, 1.5, 1.0, 0.5, 0.2]


def spd(lams=LAMBDAS, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(lams), len(lams), generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.tensor(lams, dtype=torch.float64)) @ Q.T


def perturbed_quadratic(A: torch.Tensor) -> FunctionObjective:
    """``0.5 w^T A w + sum_i w_i^4``: a minimum at 0 with Hessian A, not a quadratic (along the top eigenvector
    v: 2 (L(rho v) - L(0)) / rho^2 = lambda_max + 2 rho^2 sum v_i^4)."""

    def f(w):
        return 0.5 * w @ (A @ w) + (w ** 4).sum()

    return FunctionObjective(f, torch.zeros(A.shape[0], dtype=torch.float64))


def cos_objective(k: int) -> FunctionObjective:
    return FunctionObjective(lambda w: torch.cos(k * math.pi * w[0] + math.pi), torch.zeros(1, dtype=torch.float64))


# ------------------------------------------------------------------ schedules
def test_step_sizes():
    assert step_sizes(10, 0.2) == pytest.approx([0.03] * 10)  # GA-SAM: 1.5 rho / K
    cos = step_sizes(4, 1.0, "cosine", 0.5)
    assert cos == pytest.approx([0.5 * (1 + math.cos(math.pi * k / 4)) / 2 for k in range(4)])
    assert sum(step_sizes(10, 1.0, "cosine")) == pytest.approx(1.5 * 1.1, rel=1e-12)  # 3/K, average half
    with pytest.raises(ValueError, match="schedule"):
        step_sizes(3, 1.0, "linear")


# ------------------------------------------------------------ worst-case sharpness
def test_worst_case_at_a_minimum_is_rho2_lambda_max_over_2():
    """max_{||e|| <= rho} e^T A e / 2 = rho^2 lambda_max / 2; the gradient is zero at w, so the first step goes to
    a seeded random point of the ball (said in ``start``) instead of leaving a silent 0."""
    obj = quadratic(spd())
    for rho in (0.1, 1.0):
        r = worst_case_sharpness(obj, rho, steps=40, restarts=1)
        assert r.run_values[0] == pytest.approx(rho ** 2 * 4.0 / 2, rel=1e-9) and r.start == "random"
        assert r.sharpness == pytest.approx(rho ** 2 * 4.0 / 2, rel=1e-9)
        assert r.curvature_estimate == pytest.approx(4.0, rel=1e-9)
        assert r.perturbation_norm == pytest.approx(rho, rel=1e-12)
        assert r.work == {"grads": 80, "hvps": 0, "losses": 2, "passes": 82}  # (1 + restarts) * steps
    # SAM's single step from w: g = 0 has no direction, the step goes to a random point of the sphere
    one = worst_case_sharpness(obj, 0.1, steps=1)
    assert one.start == "random" and 0.01 * min(LAMBDAS) / 2 <= one.sharpness <= 0.01 * max(LAMBDAS) / 2


def test_worst_case_off_a_minimum_is_the_trust_region_maximum():
    """max_{||e|| <= rho} g.e + e^T A e / 2 is at e = (mu I - A)^{-1} g with ||e|| = rho, mu > lambda_max."""
    A = spd()
    w0 = torch.linspace(-0.3, 0.4, 6, dtype=torch.float64)
    obj = quadratic(A, w0=w0)
    g = A @ w0
    lam, Q = torch.linalg.eigh(A)
    b = Q.T @ g
    rho = 0.2
    mu = brentq(lambda m: float(torch.linalg.norm(b / (m - lam))) - rho, float(lam[-1]) + 1e-12,
                float(lam[-1]) + float(g.norm()) / rho + 1e-9, xtol=1e-15)
    e = Q @ (b / (mu - lam))
    exact = float(g @ e + 0.5 * e @ A @ e)
    r = worst_case_sharpness(obj, rho, steps=40, step_size=1.0)
    assert r.sharpness == pytest.approx(exact, rel=1e-7)
    assert torch.allclose(r.perturbation, e, atol=1e-5)
    # one step is SAM's: L(w + rho g/||g||) - L(w), the surrogate gap's h
    one = worst_case_sharpness(obj, rho, steps=1)
    assert one.sharpness == pytest.approx(surrogate_gap(obj, rho).gap, rel=1e-12)
    assert one.sharpness < r.sharpness


def test_worst_case_linf_matches_vertex_enumeration():
    """A convex quadratic on the cube peaks at a vertex: max_v rho^2 v^T A v / 2 over v in {-1, 1}^d."""
    A = spd()
    obj = quadratic(A)
    rho = 0.1
    best = max(float(torch.tensor(v, dtype=torch.float64) @ A @ torch.tensor(v, dtype=torch.float64))
               for v in itertools.product([-1.0, 1.0], repeat=6)) * rho ** 2 / 2
    r = worst_case_sharpness(obj, rho, geometry=Geometry(p=math.inf), steps=10, restarts=4)
    assert r.sharpness == pytest.approx(best, rel=1e-12)
    assert r.perturbation_norm == pytest.approx(rho, rel=1e-12)
    assert float(r.perturbation.abs().max()) == pytest.approx(rho, rel=1e-12)


def test_gnr_cos_example_sam_cannot_tell_them_apart():
    """gnr.txt Sec. 2.3: L1 = cos(pi t + pi), L2 = cos(3 pi t + pi) at t = 0, rho = 1:
    R_SAM = 2 for both, R_GNR = pi and 3 pi."""
    for k in (1, 3):
        obj = cos_objective(k)
        sam = worst_case_sharpness(obj, 1.0, steps=50, restarts=4, schedule="cosine")
        assert sam.sharpness == pytest.approx(2.0, abs=1e-6)
        gnr = gradient_norm_regularizer(obj, 1.0, steps=100, restarts=4, schedule="cosine")
        assert gnr.R == pytest.approx(k * math.pi, abs=1e-6)
        assert gnr.estimate == gnr.R  # rho = 1
        assert gnr.grad_norm < 1e-14 and gnr.R >= sam.sharpness  # Prop. 2.4
        assert gnr.work == {"grads": 5 * 101, "hvps": 5 * 100, "losses": 0, "passes": 5 * 201}
        # the maximizer e* is returned: a steepest point of the ball, |L'(e*)| = R / rho
        assert float(obj.grad(gnr.perturbation).abs()) == pytest.approx(gnr.max_grad_norm, rel=1e-12)
        assert abs(math.sin(k * math.pi * float(gnr.perturbation[0]))) == pytest.approx(1.0, abs=1e-6)
        assert "perturbation" not in gnr.to_dict()


# ---------------------------------------------------------- eigenvalue estimates
def test_estimates_are_exact_on_a_quadratic_at_its_minimum():
    obj = quadratic(spd())
    for rho in (1.0, 0.1, 0.01):
        gap = surrogate_gap(obj, rho, steps=200)
        assert gap.estimate == pytest.approx(4.0, rel=1e-8) and gap.first_order == 0.0
        gnr = gradient_norm_regularizer(obj, rho, steps=60, restarts=1, schedule="constant", step_size=1.0)
        assert gnr.estimate == pytest.approx(4.0, rel=1e-8)
    # a gradient too small to normalize (1e-17: floating-point residue at a minimum) is a stationary point too
    w0 = torch.full((len(LAMBDAS),), 1e-17, dtype=torch.float64)
    near = quadratic(spd(), w0=w0)
    assert 0 < float(near.grad().norm()) < 1e-12
    assert surrogate_gap(near, 0.1, steps=200).estimate == pytest.approx(4.0, rel=1e-6)
    one = surrogate_gap(near, 0.1)  # g / ||g|| is rounding noise: said, and h is the maximum by ascent
    assert one.gradient_vanishes and one.method == "ascent" and one.estimate == pytest.approx(4.0, rel=1e-6)


def test_estimates_tend_to_lambda_max_as_rho_shrinks():
    """2h/rho^2 (surrogate gap), R/rho^2 (GNR) and 2 S/rho^2 (worst-case sharpness) -> lambda_max at a minimum of a
    non-quadratic function; the error shrinks like rho^2 (the function is even)."""
    obj = perturbed_quadratic(spd())
    rhos = [0.2, 0.1, 0.05, 0.025, 0.0125]
    errors = {"gap": [], "gnr": [], "sharpness": []}
    for rho in rhos:
        errors["gap"].append(abs(surrogate_gap(obj, rho, steps=200).estimate - 4.0))
        errors["gnr"].append(abs(gradient_norm_regularizer(obj, rho, steps=60, restarts=2, schedule="constant",
                                                           step_size=1.0).estimate - 4.0))
        errors["sharpness"].append(abs(worst_case_sharpness(obj, rho, steps=60, restarts=2,
                                                            step_size=1.0).curvature_estimate - 4.0))
    for name, err in errors.items():
        assert all(b < a for a, b in zip(err, err[1:])), (name, err)
        ratio = err[0] / err[-1]  # 16x smaller radius, ~256x smaller error
        assert 150 < ratio < 400, (name, err)
        assert err[-1] < 1e-3, (name, err)


def test_surrogate_gap_off_a_minimum_is_first_order_plus_curvature_along_g():
    """h = rho ||g|| + rho^2 g^T A g / (2 ||g||^2) exactly on a quadratic; 2h/rho^2 blows up as rho -> 0 there."""
    A = spd()
    w0 = torch.linspace(-0.3, 0.4, 6, dtype=torch.float64)
    obj = quadratic(A, w0=w0)
    g = A @ w0
    for rho in (0.1, 0.01):
        r = surrogate_gap(obj, rho)
        assert r.gap == pytest.approx(rho * float(g.norm()) + 0.5 * rho ** 2 * float(g @ A @ g / (g @ g)), rel=1e-12)
        assert r.first_order == pytest.approx(rho * float(g.norm()), rel=1e-12)
        assert r.second_order_estimate == pytest.approx(float(g @ A @ g / (g @ g)), rel=1e-8)
        assert r.work == {"grads": 1, "hvps": 0, "losses": 1, "passes": 2}
    assert surrogate_gap(obj, 0.001).estimate > 10 * surrogate_gap(obj, 0.1).estimate


# --------------------------------------------------------------- average case
def test_average_case_is_reproducible_and_matches_its_expectation():
    A = spd()
    obj = quadratic(A)
    rho = 0.1
    a = average_sharpness(obj, rho, samples=4000, seed=3)
    b = average_sharpness(obj, rho, samples=4000, seed=3, chunk_size=7)
    # the same draws whatever the chunk size; only the batched matmul's rounding may differ (1 ulp)
    assert math.isclose(a.sharpness, b.sharpness, rel_tol=1e-13) and math.isclose(a.std, b.std, rel_tol=1e-13)
    assert average_sharpness(obj, rho, samples=50, seed=4).sharpness != average_sharpness(obj, rho, samples=50,
                                                                                           seed=3).sharpness
    # S = e^T A e / 2: its mean and standard deviation in closed form (quadratic_form_moments); the reported
    # standard error is checked against sd / sqrt(n) first, and the tolerance of the mean is the exact one.
    u = average_sharpness(obj, rho, samples=4000, distribution="uniform", seed=3)
    s = average_sharpness(obj, rho, samples=4000, distribution="boundary", seed=3)
    for r, dist in ((a, "gaussian"), (u, "uniform"), (s, "boundary")):
        mean, sd = quadratic_form_moments(A, rho, dist)
        assert r.stderr == pytest.approx(sd / math.sqrt(4000), rel=0.1), dist
        assert abs(r.sharpness - mean) < 4 * sd / math.sqrt(4000), dist
    assert a.work["losses"] == 4001 and a.work["grads"] == 0


def quadratic_form_moments(A: torch.Tensor, rho: float, distribution: str) -> tuple[float, float]:
    """Mean and standard deviation of ``S = e^T A e / 2`` for ``e`` drawn by ``distribution`` in ``d`` dims
    (t1 = tr A, t2 = tr A^2): gaussian ``e = rho z``: ``E = rho^2 t1 / 2``, ``Var = rho^4 t2 / 2``; boundary
    ``e = rho u`` (u uniform on the sphere, E u_i^4 = 3 / (d (d+2)), E u_i^2 u_j^2 = 1 / (d (d+2))):
    ``E = rho^2 t1 / (2d)``, ``Var = rho^4 (d t2 - t1^2) / (2 d^2 (d+2))``; uniform in the ball ``e = rho r u``
    (E r^2 = d / (d+2), E r^4 = d / (d+4)): ``E = rho^2 t1 / (2 (d+2))``,
    ``Var = rho^4 / 4 ((2 t2 + t1^2) / ((d+2)(d+4)) - t1^2 / (d+2)^2)``."""
    d, t1, t2 = A.shape[0], float(torch.trace(A)), float(torch.trace(A @ A))
    if distribution == "gaussian":
        return rho ** 2 * t1 / 2, math.sqrt(rho ** 4 * t2 / 2)
    if distribution == "boundary":
        return rho ** 2 * t1 / (2 * d), math.sqrt(rho ** 4 * (d * t2 - t1 ** 2) / (2 * d * d * (d + 2)))
    var = rho ** 4 / 4 * ((2 * t2 + t1 ** 2) / ((d + 2) * (d + 4)) - t1 ** 2 / (d + 2) ** 2)
    return rho ** 2 * t1 / (2 * (d + 2)), math.sqrt(var)


def test_average_case_standard_error_is_the_sample_formula():
    """stderr = s / sqrt(n), s the sample standard deviation (n - 1 in the denominator). Exactly: on L(w) = w in
    one dimension the boundary draws are +-rho, so the n losses are fixed by their mean rho m: s^2 = rho^2
    (1 - m^2) n / (n - 1). Statistically: over many seeds, E[stderr^2] = Var(mean of n draws) = sd^2 / n, which
    the spread of the seeds' estimates also shows (sd from the closed form, not from the code)."""
    line = FunctionObjective(lambda w: w[0], torch.zeros(1, dtype=torch.float64))
    for n, seed in ((2, 0), (2, 1), (5, 0), (9, 4)):
        r = average_sharpness(line, 0.5, samples=n, distribution="boundary", seed=seed)
        m = r.sharpness / 0.5
        assert min(abs(m * n - k) for k in range(-n, n + 1, 2)) < 1e-12  # (#plus - #minus) / n
        want = 0.5 * math.sqrt(max(1 - m * m, 0.0) * n / (n - 1)) / math.sqrt(n)
        assert r.stderr == pytest.approx(want, rel=1e-12, abs=1e-15), (n, seed)
    assert average_sharpness(line, 0.5, samples=1, distribution="boundary").stderr is None
    A = spd()
    obj = quadratic(A)
    _, sd = quadratic_form_moments(A, 0.3, "gaussian")
    runs = [average_sharpness(obj, 0.3, samples=2, seed=seed) for seed in range(800)]
    # E[stderr^2] = sd^2 / 2 exactly; the estimate's relative error here is about 7% (std of stderr^2 over 800)
    assert np.mean([r.stderr ** 2 for r in runs]) == pytest.approx(sd ** 2 / 2, rel=0.25)
    assert np.std([r.sharpness for r in runs]) == pytest.approx(sd / math.sqrt(2), rel=0.12)


def test_rho_sweep_gives_one_row_per_rho():
    obj = quadratic(spd())
    sweep = rho_sweep(worst_case_sharpness, obj, [0.05, 0.1, 0.2], steps=40, restarts=1, step_size=1.0)
    d = sweep.to_dict()
    assert d["rho"] == [0.05, 0.1, 0.2] and [r["rho"] for r in d["rows"]] == [0.05, 0.1, 0.2]
    assert [r["sharpness"] for r in d["rows"]] == pytest.approx([2.0 * r ** 2 for r in (0.05, 0.1, 0.2)], rel=1e-6)


# ------------------------------------------------------------------ per batch
@pytest.fixture(scope="module")
def mlp_objective():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=torch.float64)
    y = torch.randint(3, (40,), generator=g)
    return Objective(small_mlp(), x, y, batch_size=16)


def test_per_batch_mode_averages_the_mini_batch_maxima(mlp_objective):
    obj = mlp_objective
    kw = dict(steps=3, restarts=1, seed=2)
    r = worst_case_sharpness(obj, 0.1, batch_size=8, max_batches=3, **kw)
    assert r.batch_size == 8 and r.num_batches == 3
    batches = obj.minibatches(8, limit=3, seed=2)
    assert [len(b.source.data[0]) for b in batches] == [8, 8, 8]  # in-memory rows: (x, y)
    rows = torch.cat([b.source.data[0] for b in batches])
    assert len(set(map(tuple, rows.tolist()))) == 24  # disjoint
    for b in batches:  # each is the objective of its rows alone (its loss weighted by its own counts)
        alone = Objective(obj.model, *b.source.data, batch_size=16)
        assert b.loss() == pytest.approx(alone.loss(), rel=1e-12)
        assert worst_case_sharpness(b, 0.1, **kw).sharpness == pytest.approx(
            worst_case_sharpness(alone, 0.1, **kw).sharpness, rel=1e-9)
    each = [worst_case_sharpness(b, 0.1, **{**kw, "seed": 2 + i}).sharpness for i, b in enumerate(batches)]
    assert r.sharpness == pytest.approx(np.mean(each), rel=1e-12) and r.std == pytest.approx(np.std(each), rel=1e-9)
    assert r.work["grads"] == 3 * 2 * 3
    # one batch holding every row is the full-data sharpness
    whole = worst_case_sharpness(obj, 0.1, batch_size=40, **kw)
    assert whole.num_batches == 1
    assert whole.sharpness == pytest.approx(worst_case_sharpness(obj, 0.1, **kw).sharpness, rel=1e-10)
    all_batches = worst_case_sharpness(obj, 0.1, batch_size=8, steps=1, seed=2)
    assert all_batches.num_batches == 5
    avg = average_sharpness(obj, 0.1, samples=4, batch_size=8, max_batches=2, seed=1)
    assert avg.num_batches == 2 and avg.stderr is None


def test_bad_arguments():
    obj = quadratic(spd())
    with pytest.raises(ValueError, match="rho"):
        worst_case_sharpness(obj, 0.0)
    with pytest.raises(ValueError, match="minibatches"):
        worst_case_sharpness(obj, 0.1, batch_size=2)
    with pytest.raises(ValueError, match="restarts"):
        worst_case_sharpness(obj, 0.1, restarts=-1)
