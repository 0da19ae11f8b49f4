"""The worst-case ascent against exact maxima (issue 15): quadratics of conditioning up to 1e3 at and off a
minimum in every geometry (the L2 maximum by the trust-region secular equation in ``u = T^{-1} e``, the L-inf
one by enumerating the vertices), GNR's cos examples, m-sharpness and adversarial corruption of a linear
regression, the surrogate gap; the value never decreasing in the steps, the best point kept at every step,
vanishing gradients, and the convergence traces. The ``T`` of each geometry is written out here by hand."""
from __future__ import annotations

import itertools
import math

import pytest
import torch
from scipy.optimize import brentq
from torch import nn

from landscape.analytic import FunctionObjective, quadratic
from landscape.geometry import Geometry, Region
from landscape.objective import Objective
from landscape.sharpness import (corruption_robustness, gradient_norm_regularizer, projected_ascent, surrogate_gap,
                                 worst_case_sharpness)
from landscape.sharpness.common import convergence
from tests.curvature_helpers import small_mlp

F64 = torch.float64


def spd(lams, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(lams), len(lams), generator=g, dtype=F64))
    return Q @ torch.diag(torch.as_tensor(lams, dtype=F64)) @ Q.T


def spectrum(d: int, cond: float, seed: int) -> list[float]:
    """``d`` log-uniform eigenvalues in ``[1, cond]`` with both ends present."""
    g = torch.Generator().manual_seed(seed)
    lams = torch.exp(torch.rand(d, generator=g, dtype=F64) * math.log(cond))
    lams[0], lams[1] = cond, 1.0
    return lams.tolist()


def l2_max(A: torch.Tensor, b: torch.Tensor, rho: float) -> float:
    """``max_{||u|| <= rho} b.u + u^T A u / 2`` (A PSD): ``u = (mu I - A)^{-1} b`` with ``||u|| = rho``,
    ``mu > lambda_max`` (``rho^2 lambda_max / 2`` when ``b = 0``)."""
    lam, Q = torch.linalg.eigh(A)
    if float(b.norm()) == 0:
        return 0.5 * rho ** 2 * float(lam[-1])
    c = Q.T @ b
    top = float(lam[-1])
    mu = brentq(lambda m: float(torch.linalg.norm(c / (m - lam))) - rho, top + 1e-12, top + float(b.norm()) / rho + 1,
                xtol=1e-15)
    u = Q @ (c / (mu - lam))
    return float(b @ u + 0.5 * u @ A @ u)


def linf_max(A: torch.Tensor, b: torch.Tensor, rho: float) -> float:
    """``max_{||u||_inf <= rho} b.u + u^T A u / 2`` (A PSD, convex: at a vertex) by enumerating the vertices."""
    return max(float(b @ u + 0.5 * u @ A @ u) for u in
               (rho * torch.tensor(v, dtype=F64) for v in itertools.product([-1.0, 1.0], repeat=len(b))))


def t_by_hand(normalization: str, w: torch.Tensor, g: torch.Tensor, shapes) -> torch.Tensor:
    """The diagonal of ``T`` (ASAM / GA-SAM definitions; ``eta = 0``) for flat ``w`` split into ``shapes``."""
    sizes = [math.prod(s) for s in shapes]
    n = sum(sizes)
    out = []
    for wi, gi, s in zip(w.split(sizes), g.split(sizes), shapes):
        if normalization == "none":
            out.append(torch.ones_like(wi))
        elif normalization == "element" or (normalization == "filter" and len(s) < 3):
            out.append(wi.abs())
        elif normalization == "filter":
            rows = wi.reshape(s[0], -1)
            out.append(rows.norm(dim=1, keepdim=True).expand_as(rows).reshape(-1))
        elif normalization == "layer":
            out.append(torch.full_like(wi, float(wi.norm())))
        elif normalization == "gradient":
            out.append(torch.full_like(wi, math.sqrt(len(wi)) / (float(gi.norm()) * math.sqrt(n))))
    return torch.cat(out)


# ------------------------------------------------------------------- quadratics, L2 and L-inf
@pytest.mark.parametrize("cond", [10.0, 1e2, 1e3])
@pytest.mark.parametrize("d", [6, 30])
def test_l2_quadratic_defaults_reach_99_percent_in_20_gradients(d, cond):
    """At a minimum the maximum is rho^2 lambda_max / 2 (the gradient vanishes: a seeded random start);
    off it, the trust-region maximum."""
    rho = 0.1
    for seed in range(3):
        A = spd(spectrum(d, cond, seed), seed)
        at_min = worst_case_sharpness(quadratic(A), rho, seed=seed)
        assert at_min.start == "random" and at_min.work["grads"] == 20
        assert 0.99 <= at_min.sharpness / l2_max(A, torch.zeros(d, dtype=F64), rho) <= 1 + 1e-12
        w0 = 0.3 * rho * torch.randn(d, generator=torch.Generator().manual_seed(seed), dtype=F64)
        off = worst_case_sharpness(quadratic(A, w0=w0), rho, seed=seed)
        assert off.start == "gradient" and off.work["grads"] == 20
        assert 0.99 <= off.sharpness / l2_max(A, A @ w0, rho) <= 1 + 1e-12
        assert at_min.converged and off.converged


SHAPES = [(2, 2, 1, 1), (3,), (2,)]  # a 2-filter "conv" weight, a bias-like vector and another


@pytest.mark.parametrize("normalization", ["none", "element", "filter", "layer", "gradient"])
@pytest.mark.parametrize("p", [2.0, math.inf])
def test_every_geometry_against_the_exact_maximum(normalization, p):
    """In ``u = T^{-1} e`` the ball is ``||u||_p <= rho`` and the quadratic has Hessian ``T A T`` and gradient
    ``T g``: L2 by the secular equation, L-inf by vertex enumeration (tiny dims for L-inf)."""
    shapes = SHAPES if p == 2 else [(2, 1, 1), (2,)]
    d = sum(math.prod(s) for s in shapes)
    for seed in range(2):
        A = spd(spectrum(d, 1e3, seed), seed)
        gen = torch.Generator().manual_seed(seed)
        center = 1 + torch.rand(d, generator=gen, dtype=F64)
        w0 = center + 0.05 * torch.randn(d, generator=gen, dtype=F64)
        obj = quadratic(A, w0=w0, center=center, shapes=shapes)
        g = A @ (w0 - center)
        T = t_by_hand(normalization, w0, g, shapes)
        rho = 0.1 if normalization in ("none", "gradient") else 0.05
        exact = (l2_max if p == 2 else linf_max)(T[:, None] * A * T[None], T * g, rho)
        r = worst_case_sharpness(obj, rho, geometry=Geometry(p=p, normalization=normalization), seed=seed)
        assert 0.99 <= r.sharpness / exact <= 1 + 1e-10, (normalization, p, seed, r.sharpness / exact)
        assert r.perturbation_norm <= rho * (1 + 1e-12)


def test_linf_quadratic_at_a_minimum_matches_vertex_enumeration():
    rho = 0.1
    for cond in (10.0, 1e3):
        for seed in range(3):
            A = spd(spectrum(4, cond, seed), seed)
            r = worst_case_sharpness(quadratic(A), rho, geometry=Geometry(p=math.inf), seed=seed)
            assert r.sharpness == pytest.approx(linf_max(A, torch.zeros(4, dtype=F64), rho), rel=1e-12)
            assert float(r.perturbation.abs().max()) == pytest.approx(rho, rel=1e-12)


# ----------------------------------------------------------------------------- GNR's cos examples
@pytest.mark.parametrize("k, t0, rho", [(1, 0.0, 1.0), (3, 0.0, 1.0), (3, 0.1, 1.0), (1, 0.1, 0.5), (3, 0.05, 0.3)])
def test_cos_examples(k, t0, rho):
    """L(t) = cos(k pi t + pi) = -cos(k pi t): the maximum of -cos(k pi t) over [t0 - rho, t0 + rho] is 1 where
    the interval holds an odd multiple of 1/k, else at its end farther from an even one."""
    obj = FunctionObjective(lambda w: torch.cos(k * math.pi * w[0] + math.pi), torch.tensor([t0], dtype=F64))
    grid = torch.linspace(t0 - rho, t0 + rho, 200001, dtype=F64)
    exact = float((-torch.cos(k * math.pi * grid)).max()) + math.cos(k * math.pi * t0)
    odd = [j / k for j in range(-5, 6, 2) if abs(j / k - t0) <= rho]
    if odd:
        exact = 1 + math.cos(k * math.pi * t0)
    r = worst_case_sharpness(obj, rho)
    assert r.work["grads"] <= 20
    assert r.sharpness >= 0.995 * exact and r.sharpness <= exact + 1e-12


# ------------------------------------------------------------- m-sharpness and corruption, exactly
@pytest.fixture(scope="module")
def regression():
    """``L(w) = mean_i (x_i . w - y_i)^2``: Hessian ``2 X^T X / N`` and gradient ``2 X^T (X w - y) / N``."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 4, generator=g, dtype=F64) * torch.tensor([3.0, 1.0, 0.3, 0.1], dtype=F64)
    y = torch.randn(48, generator=g, dtype=F64)
    torch.manual_seed(0)
    model = nn.Linear(4, 1, bias=False).double()
    return Objective(model, x, y, task="regression", batch_size=48)


def _exact(x: torch.Tensor, y: torch.Tensor, w: torch.Tensor, rho: float, p: float) -> float:
    A = 2 * x.T @ x / len(x)
    b = 2 * x.T @ (x @ w - y) / len(x)
    return (l2_max if p == 2 else linf_max)(A, b, rho)


def test_m_sharpness_is_the_mean_of_exact_batch_maxima(regression):
    obj, w = regression, regression.w0
    for rho in (0.05, 0.5):
        r = worst_case_sharpness(obj, rho, batch_size=12, seed=1)
        batches = obj.minibatches(12, seed=1)
        exact = sum(_exact(*b.source.data, w, rho, 2.0) for b in batches) / len(batches)
        assert r.num_batches == 4 and 0.99 * exact <= r.sharpness <= exact * (1 + 1e-12)
        assert len(r.trace) == 1 and len(r.trace[0]) == 21 and r.trace[0][-1] == pytest.approx(r.sharpness)
        assert r.converged and r.start == "gradient 4"


def test_adversarial_corruption_reaches_the_exact_maximum(regression):
    obj, w = regression, regression.w0
    x, y = obj.source.data
    r = corruption_robustness(obj, {"2": [0.1, 1.0], "inf": [0.05]}, draws=0)
    for row in r.rows:
        p = 2.0 if row["p"] == "2" else math.inf
        exact = _exact(x, y, w, row["eps"], p)
        assert 0.99 * exact <= row["objective"]["loss_increase"] <= exact * (1 + 1e-12)
        assert row["converged"] and len(row["trace"][0]) == 21
    assert r.work["grads"] == 3 * 20


# ------------------------------------------------------------------------------ surrogate gap
def test_surrogate_gap_is_gsams_step_unless_the_gradient_vanishes():
    A = spd([10.0, 3.0, 1.0, 0.3, 0.1])
    w0 = torch.tensor([0.02, -0.01, 0.03, 0.0, 0.01], dtype=F64)
    obj = quadratic(A, w0=w0)
    g = A @ w0
    rho = 0.05
    paper = obj.loss(w0 + rho * g / g.norm()) - obj.loss()
    r = surrogate_gap(obj, rho)
    assert r.method == "gradient" and not r.gradient_vanishes and r.gap == pytest.approx(paper, rel=1e-12)
    assert r.work["grads"] == 1 and r.converged is None
    # more steps: the maximizer, the same ascent as worst-case sharpness
    many = surrogate_gap(obj, rho, steps=20)
    assert many.method == "ascent" and many.gap == pytest.approx(worst_case_sharpness(obj, rho).sharpness, rel=1e-12)
    assert many.gap == pytest.approx(l2_max(A, g, rho), rel=1e-6) and many.work["grads"] == 20
    # at a minimum g / ||g|| is undefined: it says so, and h is the maximum, 2h/rho^2 = lambda_max (not 6.6)
    at_min = surrogate_gap(quadratic(A), rho)
    assert at_min.gradient_vanishes and at_min.method == "ascent" and at_min.start == "random"
    assert at_min.estimate == pytest.approx(10.0, rel=1e-6)
    for k in (1, 3):  # cos(k pi t + pi) at 0, rho = 1: h = 2 (the old random probe gave 0.02)
        cos = FunctionObjective(lambda t: torch.cos(k * math.pi * t[0] + math.pi), torch.zeros(1, dtype=F64))
        h = surrogate_gap(cos, 1.0)
        assert h.gradient_vanishes and h.gap >= 0.995 * 2.0


# ------------------------------------------------------------------ vanishing gradients and the start
def test_a_vanishing_gradient_never_gives_a_silent_zero():
    A = spd([4.0, 2.5, 1.5, 1.0, 0.5, 0.2])
    lam, V = torch.linalg.eigh(A)
    obj = quadratic(A)
    # along the top eigenvector a single step is exact
    r = worst_case_sharpness(obj, 0.1, steps=1, direction=V[:, -1])
    assert r.start == "eigenvector" and r.sharpness == pytest.approx(0.5 * 0.01 * 4.0, rel=1e-12)
    r = worst_case_sharpness(obj, 0.1, steps=1)
    assert r.start == "random" and r.sharpness > 0
    # a gradient below rounding level (0 < ||g|| < 1e-12) is treated alike
    near = quadratic(A, w0=torch.full((6,), 1e-14, dtype=F64))
    assert 0 < float(near.grad().norm()) < 1e-12
    r = worst_case_sharpness(near, 0.1)
    assert r.start == "random" and r.sharpness == pytest.approx(0.02, rel=1e-6)
    # p = inf too
    assert worst_case_sharpness(obj, 0.1, geometry=Geometry(p=math.inf)).sharpness > 0


# -------------------------------------------------------------- monotone in steps, best point kept
@pytest.fixture(scope="module")
def mlp():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, generator=g, dtype=F64)
    y = torch.randint(3, (40,), generator=g)
    return Objective(small_mlp(hidden=8), x, y, batch_size=40)


@pytest.mark.parametrize("geometry, rho", [(Geometry(), 1.0), (Geometry(p=math.inf), 0.2),
                                           (Geometry(normalization="element"), 0.5)])
def test_value_never_decreases_as_steps_or_restarts_grow(mlp, geometry, rho):
    long = worst_case_sharpness(mlp, rho, geometry=geometry, steps=16, restarts=1, seed=3)
    values = [worst_case_sharpness(mlp, rho, geometry=geometry, steps=k, seed=3).sharpness for k in (1, 3, 8)]
    values.append(long.trace[0][-1])
    assert values == sorted(values) and values[0] < values[-1]
    for k, v in zip((1, 3, 8), values):  # a shorter run is the start of a longer one
        assert v == long.trace[0][k]
    assert long.sharpness >= values[-1] and long.sharpness == max(run[-1] for run in long.trace)


def test_best_point_is_kept_at_every_step_of_every_run(mlp):
    """The result is the best over *all* iterates, not over each run's last point: record every value the
    ascent evaluates and compare. On -cos(3 pi t) from t = 0.1 fixed steps of 0.15 overshoot the peak at 1/3
    and swing back, so runs end below their best."""
    obj = FunctionObjective(lambda w: -torch.cos(3 * math.pi * w[0]), torch.tensor([0.1], dtype=F64))
    w0 = obj.w0
    region = Region.of(Geometry(), obj)
    seen: list[list[float]] = []

    def value_and_grad(e):
        v, g = obj.loss_and_grad(w0 + e)
        if not seen or len(seen[-1]) == 7:
            seen.append([])
        seen[-1].append(v)
        return v, g

    def value(e):
        v = obj.loss(w0 + e)
        seen[-1].append(v)
        return v

    r = projected_ascent(value_and_grad, region, 1.0, steps=6, restarts=2, schedule="constant", step_size=0.15,
                         value=value, seed=1)
    assert len(seen) == 3 and all(len(s) == 7 for s in seen)
    assert r.value > max(s[-1] for s in seen)  # the case that matters: the best is at no run's last point
    assert r.value == max(max(s) for s in seen)
    assert r.run_values == [max(s) for s in seen]
    assert r.trace == [[max(s[:k + 1]) for k in range(7)] for s in seen]
    assert obj.loss(w0 + r.perturbation) == r.value
    # the same through the measure (apgd): the perturbation's loss is the reported maximum
    w = worst_case_sharpness(mlp, 2.0, steps=8, restarts=1)
    assert mlp.loss(mlp.w0 + w.perturbation) == pytest.approx(w.perturbed_loss, rel=1e-13)


# ------------------------------------------------------------------------------ traces, convergence
def test_traces_and_the_converged_flag(mlp):
    r = worst_case_sharpness(mlp, 0.5, steps=12, restarts=2)
    assert len(r.trace) == 3 and all(len(t) == 13 for t in r.trace)
    assert all(a <= b for t in r.trace for a, b in zip(t, t[1:]))
    assert [t[-1] for t in r.trace] == pytest.approx([v - r.loss for v in r.run_values], abs=1e-15)
    assert r.trace[0][0] == 0.0 and r.to_dict()["trace"] == r.trace and "converged" in r.to_dict()
    # GA-SAM's fixed tiny steps travel 1.5 rho in all: still rising at the end, flagged
    slow = worst_case_sharpness(quadratic(spd([10.0, 1.0, 0.1]), w0=torch.tensor([0.01, 0.0, 0.0], dtype=F64)),
                                1.0, steps=40, schedule="constant", step_size=0.01)
    assert not slow.converged and slow.relative_change > 1e-3


def test_convergence_by_hand():
    # B = [0, 1, 1.5, 1.9, 2.0] (best over runs), 4 steps, window 1: (2.0 - 1.9) / |2.0 - 0|
    rel, ok = convergence([[0.0, 1.0, 1.5, 1.5, 1.5], [0.0, 0.5, 1.0, 1.9, 2.0]], 0.0, tol=0.01)
    assert rel == pytest.approx(0.05) and not ok
    assert convergence([[0.0, 1.0, 2.0, 2.0, 2.0]], 0.0) == (0.0, True)
    assert convergence([[0.0, 1.0]], 0.0)[1] is False  # one step: too short to tell
    # 8 steps: window 2
    rel, _ = convergence([[1.0, 2, 3, 4, 5, 6, 7, 8, 9]], 1.0)
    assert rel == pytest.approx((9 - 7) / 8)


def test_plain_auto_pgd_with_momentum_converges_too():
    """Without the subspace model (``memory=0``) and with Croce & Hein's momentum 0.25: slower, same maxima."""
    A = spd(spectrum(6, 1e3, 0), 0)
    obj = quadratic(A, w0=torch.full((6,), 0.01, dtype=F64))
    region = Region.of(Geometry(), obj)
    exact = l2_max(A, A @ obj.w0, 0.1)
    for momentum in (0.0, 0.25):
        r = projected_ascent(lambda e: obj.loss_and_grad(obj.w0 + e), region, 0.1, steps=60, memory=0,
                             momentum=momentum)
        assert (r.value - obj.loss()) / exact >= 0.999 and r.converged
    cube = Region.of(Geometry(p=math.inf), quadratic(A[:4, :4]))
    r = projected_ascent(lambda e: (0.5 * float(e @ A[:4, :4] @ e), A[:4, :4] @ e), cube, 0.1, steps=60,
                         momentum=0.25)
    assert r.value == pytest.approx(linf_max(A[:4, :4], torch.zeros(4, dtype=F64), 0.1), rel=1e-12)
    with pytest.raises(ValueError, match="momentum"):
        projected_ascent(lambda e: (0.0, e), region, 0.1, steps=2, momentum=1.0)


def test_gnr_defaults_reach_the_exact_maximum_gradient_norm():
    """max_{||e|| <= rho} ||A e|| = rho lambda_max at a minimum of a quadratic (GNR Prop. 2.1); on cos(k pi t + pi)
    at 0 with rho = 1, max |L'| = k pi. Both with the default 20 steps (at most 21 gradients and 20 HVPs)."""
    for cond in (10.0, 1e3):
        A = spd(spectrum(20, cond, 0), 0)
        r = gradient_norm_regularizer(quadratic(A), 0.1)
        assert 0.99 <= r.estimate / cond <= 1 + 1e-12 and r.start == "random"
        assert r.work["grads"] <= 21 and r.work["hvps"] <= 20
    for k in (1, 3):
        cos = FunctionObjective(lambda t: torch.cos(k * math.pi * t[0] + math.pi), torch.zeros(1, dtype=F64))
        r = gradient_norm_regularizer(cos, 1.0)
        assert r.R >= 0.995 * k * math.pi and r.R <= k * math.pi * (1 + 1e-12) and r.converged
