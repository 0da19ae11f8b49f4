"""Hutchinson and Hutch++: exact in expectation, exact past the rank, standard errors, stopping rule."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape.curvature.operators import MatrixOperator
from landscape.curvature.trace import (DEFAULT_TRACE_METHOD, TRACE_METHODS, estimate_trace, hutchinson, hutchpp,
                                        rademacher, sphere, xnystrace, xtrace)
from landscape.objective import Objective
from tests.curvature_helpers import assert_unchanged, bn_net, dense_hessian, snapshot
from tests.fixtures import blobs

# torch's forward-AD decompositions still call the deprecated torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def data():
    d = blobs(n_train=40, dim=3, num_classes=2)
    return d.x_train.double(), d.y_train


def decaying(P: int = 120, seed: int = 0) -> torch.Tensor:
    """Symmetric matrix with eigenvalues 100 / i^2 (a few dominate, like a network's Hessian)."""
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
    return Q @ torch.diag(100.0 / torch.arange(1, P + 1, dtype=torch.float64) ** 2) @ Q.T


def test_hutchinson_is_exact_in_expectation(data):
    """Averaged over all 2^P sign vectors, z^T H z is tr(H) exactly; the samples are exactly z^T H z."""
    x, y = data
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()  # P = 8: 256 sign vectors
    obj = Objective(model, x, y, batch_size=9)
    H = dense_hessian(model, x, y)
    Z = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=obj.num_params)), dtype=torch.float64)
    values = (Z * obj.hvp(Z)).sum(1)
    assert abs(float(values.mean()) - float(torch.trace(H))) < 1e-14
    r = hutchinson(obj, max_samples=7, rtol=None, block=3, seed=3)  # below P: samples (at P: the exact trace)
    Zs = rademacher(7, obj.num_params, torch.Generator().manual_seed(3))
    np.testing.assert_allclose(r.samples, ((Zs @ H) * Zs).sum(1).numpy(), rtol=1e-12, atol=1e-15)
    assert r.num_matvecs == 7 and r.num_passes == 3 and r.trace == pytest.approx(r.samples.mean(), rel=1e-15)


def test_hutchinson_standard_error_and_coverage():
    A = decaying(420)  # more than the 400 samples: below P the estimate is stochastic
    var = 2 * (float((A**2).sum()) - float((torch.diagonal(A) ** 2).sum()))  # Rademacher variance per sample
    errors = []
    for seed in range(8):
        r = hutchinson(MatrixOperator(A), max_samples=400, rtol=None, seed=seed)
        assert r.stderr == pytest.approx(np.sqrt(var / 400), rel=0.3)
        errors.append((r.trace - float(torch.trace(A))) / r.stderr)
    assert np.all(np.abs(errors) < 4)


def test_stopping_rule_on_relative_standard_error():
    A = decaying(60) + 0.5 * torch.eye(60, dtype=torch.float64)
    r = hutchinson(MatrixOperator(A), max_samples=10_000, rtol=0.02, min_samples=10, block=4)
    assert r.converged and r.stderr <= 0.02 * abs(r.trace) and r.num_matvecs < 10_000
    shorter = r.samples[:-4]  # the rule did not hold one block earlier
    assert len(shorter) < 10 or shorter.std(ddof=1) / np.sqrt(len(shorter)) > 0.02 * abs(shorter.mean())
    r2 = hutchinson(MatrixOperator(A), max_samples=12, rtol=1e-6)
    assert not r2.converged and r2.num_matvecs == 12


def test_hutchpp_is_exact_once_the_sketch_covers_the_rank(data):
    x, y = data
    model = bn_net(dim=3, hidden=3, out=2)
    before = snapshot(model)
    obj = Objective(model, x, y, batch_size=7)
    H = dense_hessian(model, x, y)
    r = hutchpp(obj, max_samples=200)  # rank 66 >= P = 29: Q spans everything
    assert r.rank == obj.num_params and r.stderr == 0.0
    assert abs(r.trace - float(torch.trace(H))) < 1e-13
    assert_unchanged(model, before)
    # the empirical Fisher of 6 samples has rank <= 6: a sketch of 8 makes the deflated rest zero
    few = Objective(model, x[:6], y[:6])
    F = few.fisher.to_dense()
    r = hutchpp(few.fisher, max_samples=40, rank=8, rtol=1e-3, block=5)
    assert abs(r.trace - float(torch.trace(F))) < 1e-12 * float(torch.trace(F))
    assert abs(r.low_rank_trace - float(torch.trace(F))) < 1e-12 * float(torch.trace(F))
    assert r.converged and r.num_matvecs == 16 + 10


@pytest.mark.parametrize("sketch", ["random", "lanczos"])
def test_hutchpp_beats_hutchinson_on_a_decaying_spectrum(sketch):
    A = decaying(120)
    tr = float(torch.trace(A))
    err_h = [abs(hutchinson(MatrixOperator(A), max_samples=60, rtol=None, seed=s).trace - tr) for s in range(10)]
    runs = [hutchpp(MatrixOperator(A), max_samples=60, sketch=sketch, rtol=None, seed=s) for s in range(10)]
    assert np.mean([abs(r.trace - tr) for r in runs]) < 0.2 * np.mean(err_h)
    spread = np.sqrt(np.mean([(r.trace - tr) ** 2 for r in runs]))  # the stderr is first checked against it
    assert 0.5 * spread < np.mean([r.stderr for r in runs]) < 2 * spread
    assert all(abs(r.trace - tr) < 5 * r.stderr + 1e-9 for r in runs)
    r = runs[0]
    rank, samples = (20, 20) if sketch == "random" else (30, 30)
    assert r.rank == rank and r.num_matvecs == 60 and len(r.samples) == samples and r.method == f"hutchpp-{sketch}"


def spectrum(P: int, values: torch.Tensor, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
    return Q @ torch.diag(values.to(torch.float64)) @ Q.T


@pytest.mark.parametrize("sketch", ["lanczos", "block"])
def test_adaptive_sketch_reaches_rtol_with_fewer_products(sketch):
    """With ``rtol``, the sketch stops growing once a product saves less than a Hutchinson sample: on 30 outliers
    over a flat bulk it keeps the outliers (about 30 steps, not half of the 299-product budget), reaches the
    requested standard error in fewer products than the fixed half split, and its stderr covers the error."""
    bulk = 0.3 + 0.1 * torch.rand(270, generator=torch.Generator().manual_seed(1))
    A = spectrum(300, torch.cat([100.0 / torch.arange(1, 31) ** 0.5, bulk]))
    tr = float(torch.trace(A))
    runs = [hutchpp(MatrixOperator(A), max_samples=299, sketch=sketch, rtol=0.01, seed=s) for s in range(40)]
    fixed = [hutchpp(MatrixOperator(A), max_samples=299, sketch=sketch, rank=150, rtol=0.01, seed=s) for s in range(5)]
    assert all(r.converged and r.stderr <= 0.01 * abs(r.trace) for r in runs + fixed)
    assert all(30 <= r.rank <= 50 for r in runs)
    assert np.mean([r.num_matvecs for r in runs]) < 0.5 * np.mean([r.num_matvecs for r in fixed])
    err = np.array([r.trace - tr for r in runs])
    assert np.mean(np.abs(err) <= 2 * np.array([r.stderr for r in runs])) >= 0.8
    assert abs(err.mean()) < 3 * err.std(ddof=1) / np.sqrt(len(err))  # unbiased: Q never sees the final vectors


def test_adaptive_sketch_stays_small_on_a_flat_spectrum_and_grows_with_the_outliers():
    """A flat spectrum gains nothing from a sketch: the pilot's 8 steps and the patience window only; more
    outliers, a deeper sketch; a low-rank operator is exact once its range is in the sketch."""
    flat = spectrum(200, 1.0 + 0.1 * torch.rand(200, generator=torch.Generator().manual_seed(1)))
    r = estimate_trace(MatrixOperator(flat), max_samples=199, rtol=0.01)
    assert r.rank == 8 + 3 and r.converged
    ranks = [estimate_trace(MatrixOperator(spectrum(300, torch.cat([20.0 * torch.ones(k), torch.ones(300 - k)]))),
                            max_samples=299, rtol=0.005).rank for k in (5, 20, 40)]
    assert ranks[0] < ranks[1] < ranks[2] and ranks[2] >= 40
    r = estimate_trace(MatrixOperator(low_rank(100, [4.0, 3.0, 2.0, -1.0])), max_samples=60, rtol=0.01)
    assert abs(r.trace - 8.0) < 1e-10 and r.converged and r.rank <= 8 + 3


def test_lanczos_sketch_is_exact_on_an_invariant_krylov_space():
    g = torch.Generator().manual_seed(2)
    U, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    A = U[:, :4] @ torch.diag(torch.tensor([4.0, 3.0, 2.0, -1.0], dtype=torch.float64)) @ U[:, :4].T
    r = hutchpp(MatrixOperator(A), max_samples=30, rank=6, sketch="lanczos", rtol=1e-6, block=5)
    assert abs(r.low_rank_trace - 8.0) < 1e-12 and abs(r.trace - 8.0) < 1e-12 and r.converged
    assert np.all(np.abs(r.samples) < 1e-12)


def test_block_sketch_is_exact_on_an_invariant_krylov_space_in_few_passes():
    A = low_rank(100, [4.0, 3.0, 2.0, -1.0])
    r = hutchpp(MatrixOperator(A), max_samples=80, rank=64, sketch="block", rtol=None)
    assert abs(r.low_rank_trace - 8.0) < 1e-12 and abs(r.trace - 8.0) < 1e-12 and np.all(np.abs(r.samples) < 1e-12)
    # blocks of min(8, 64 // 32) = 2: 32 block products, then 16 Hutchinson vectors in blocks of 8
    assert r.rank == 64 and r.num_matvecs == 80 and r.num_passes == 32 + 2 and r.method == "hutchpp-block"
    r = hutchpp(MatrixOperator(decaying(150)), max_samples=120, rank=96, sketch="block", rtol=None)
    assert r.rank == 96 and r.num_passes == 32 + 3 and r.num_matvecs == 120  # blocks of 3, 24 samples in 3 passes
    r = hutchpp(MatrixOperator(decaying(100)), max_samples=60, sketch="block", rtol=None)
    assert r.rank == 30 and r.num_passes == 30 + 4  # the default half: Lanczos (b = 1), 30 samples in 4 passes


def test_hutchpp_checks_its_budget():
    with pytest.raises(ValueError):
        hutchpp(MatrixOperator(decaying(30)), max_samples=10, rank=5)
    with pytest.raises(ValueError):
        hutchpp(MatrixOperator(decaying(30)), max_samples=10, rank=9, sketch="lanczos")
    with pytest.raises(ValueError):
        hutchpp(MatrixOperator(decaying(30)), sketch="sobol")


# ------------------------------------------------------------------ XTrace / XNysTrace
def low_rank(P: int, values: list[float], seed: int = 2) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    U, _ = torch.linalg.qr(torch.randn(P, P, generator=g, dtype=torch.float64))
    k = len(values)
    return U[:, :k] @ torch.diag(torch.tensor(values, dtype=torch.float64)) @ U[:, :k].T


def test_x_estimators_are_exact_once_the_budget_covers_the_dimension(data):
    x, y = data
    model = bn_net(dim=3, hidden=3, out=2)
    before = snapshot(model)
    obj = Objective(model, x, y, batch_size=7)
    H = dense_hessian(model, x, y)
    r = xtrace(obj, max_samples=obj.num_params)
    assert abs(r.trace - float(torch.trace(H))) < 1e-13 and r.stderr == 0.0 and r.num_matvecs == obj.num_params
    G = obj.ggn.to_dense()
    r = xnystrace(obj.ggn, max_samples=40)
    assert abs(r.trace - float(torch.trace(G))) < 1e-13 and r.method == "xnystrace"
    assert_unchanged(model, before)


def xtrace_by_definition(A: torch.Tensor, Om: torch.Tensor, normalise: bool = True) -> np.ndarray:
    """tr(Pi_i A Pi_i) + (P-m+1) u_i^T A u_i / ||u_i||^2 (normalised; else + u_i^T A u_i), Pi_i projecting on
    range(A Omega_-i), u_i = (I - Pi_i) omega_i."""
    m, n = Om.shape
    out = []
    for i in range(m):
        Qi = torch.linalg.qr(A @ Om[torch.arange(m) != i].T).Q
        Pi = Qi @ Qi.T
        u = Om[i] - Pi @ Om[i]
        rest = (n - m + 1) * (u @ A @ u) / (u @ u) if normalise else u @ A @ u
        out.append(float(torch.trace(Pi @ A @ Pi) + rest))
    return np.array(out)


def nystrom_by_definition(A: torch.Tensor, Om: torch.Tensor) -> np.ndarray:
    """tr(N_i) + omega_i^T (A - N_i) omega_i, N_i the Nystrom approximation from the other vectors."""
    m = len(Om)
    out = []
    for i in range(m):
        others = Om[torch.arange(m) != i].T
        Y = A @ others
        N = Y @ torch.linalg.solve(others.T @ Y, Y.T)
        out.append(float(torch.trace(N) + Om[i] @ (A - N) @ Om[i]))
    return np.array(out)


def jackknife_by_definition(estimates, A: torch.Tensor, Om: torch.Tensor) -> float:
    m = len(Om)
    T = np.array([estimates(A, Om[torch.arange(m) != j]).mean() for j in range(m)])
    return float(np.sqrt((m - 1) / m * ((T - T.mean()) ** 2).sum()))


@pytest.mark.parametrize("vectors", ["rademacher", "sphere"])
def test_xtrace_estimates_and_jackknife_follow_their_definitions(vectors):
    A = decaying(30) - 0.3 * torch.eye(30, dtype=torch.float64)  # indefinite
    m = 5
    r = xtrace(MatrixOperator(A), max_samples=2 * m, rtol=None, seed=4, block=3, vectors=vectors)
    gen = torch.Generator().manual_seed(4)
    draw = rademacher if vectors == "rademacher" else sphere
    Om = torch.cat([draw(3, 30, gen), draw(2, 30, gen)])

    def definition(A: torch.Tensor, Om: torch.Tensor) -> np.ndarray:
        return xtrace_by_definition(A, Om, normalise=vectors == "sphere")

    expected = definition(A, Om)
    np.testing.assert_allclose(r.samples, expected, rtol=1e-10)
    assert r.trace == pytest.approx(expected.mean(), rel=1e-12) and r.num_matvecs == 2 * m and r.num_passes == 4
    assert r.stderr_exchangeable == pytest.approx(expected.std(ddof=1) / np.sqrt(m), rel=1e-9)
    assert r.stderr == pytest.approx(jackknife_by_definition(definition, A, Om), rel=1e-9)
    with pytest.raises(ValueError, match="vectors"):
        xtrace(MatrixOperator(A), vectors="gaussian")


def test_xnystrace_estimates_and_jackknife_follow_their_definitions():
    A = decaying(25) + 0.1 * torch.eye(25, dtype=torch.float64)
    m = 6
    r = xnystrace(MatrixOperator(A), max_samples=m, rtol=None, seed=1)
    Om = sphere(m, 25, torch.Generator().manual_seed(1))
    expected = nystrom_by_definition(A, Om)
    np.testing.assert_allclose(r.samples, expected, rtol=1e-8)  # the code's rounding shift nu ~ 1e-15 ||A||
    assert r.num_matvecs == m and r.trace == pytest.approx(expected.mean(), rel=1e-8)
    assert r.stderr == pytest.approx(jackknife_by_definition(nystrom_by_definition, A, Om), rel=1e-6)


def test_x_estimators_are_exact_on_low_rank_operators():
    """With more test vectors than the rank, every leave-one-out sketch spans range(A): no error at all."""
    A = low_rank(80, [4.0, 3.0, 2.0, -1.0, 0.5])
    r = xtrace(MatrixOperator(A), max_samples=20, rtol=None)
    assert abs(r.trace - 8.5) < 1e-12 and r.stderr < 1e-12
    B = low_rank(80, [4.0, 3.0, 2.0, 1.0, 0.5])
    r = xnystrace(MatrixOperator(B), max_samples=8, rtol=None)
    assert abs(r.trace - 10.5) < 1e-10 and r.stderr < 1e-10


XTRACE_SPHERE = pytest.param("xtrace", {"vectors": "sphere"}, id="xtrace-sphere")


@pytest.mark.parametrize("method, options", [("xtrace", {}), XTRACE_SPHERE, ("xnystrace", {}), ("hutchpp-block", {})])
def test_x_estimators_are_unbiased(method, options):
    """The mean over 600 seeds is within 4 standard errors of tr(A), that standard error taken from the spread
    of the 600 estimates (not from the estimator's own stderr)."""
    A = decaying(30) + (0.5 if method == "xnystrace" else -0.2) * torch.eye(30, dtype=torch.float64)
    tr = float(torch.trace(A))
    budget = {"hutchpp-block": 12}.get(method, 6)
    est = np.array([estimate_trace(MatrixOperator(A), method, max_samples=budget, rtol=None, seed=s, **options).trace
                    for s in range(600)])
    se = est.std(ddof=1) / np.sqrt(len(est))
    assert abs(est.mean() - tr) < 4 * se and se < 0.05 * abs(tr)


@pytest.mark.parametrize("method, options", [("xtrace", {}), XTRACE_SPHERE, ("xnystrace", {})])
def test_x_standard_error_covers_the_error(method, options):
    """Over 150 seeds |estimate - tr| <= 2 stderr at least 93% of the time (the jackknife errs on the safe side;
    the exchangeable estimates' spread would not), and the stderr's RMS is within [1, 3] x the RMS error."""
    A = decaying(120) + 0.05 * torch.eye(120, dtype=torch.float64)
    tr = float(torch.trace(A))
    runs = [estimate_trace(MatrixOperator(A), method, max_samples=24, rtol=None, seed=s, **options) for s in range(150)]
    err = np.array([r.trace - tr for r in runs])
    se = np.array([r.stderr for r in runs])
    assert np.mean(np.abs(err) <= 2 * se) >= 0.93
    assert 1.0 < np.sqrt(np.mean(se**2) / np.mean(err**2)) < 3
    exch = np.array([r.stderr_exchangeable for r in runs])
    assert np.all(exch < se)


def test_default_standard_error_covers_the_error():
    """The default's stderr (Hutchinson's on the deflated rest: 15 samples at budget 30) covers the error at
    Student's t_14 rate (|t| <= 2: 93.5%) over 300 seeds, within 3 binomial standard deviations."""
    A = decaying(120) + 0.05 * torch.eye(120, dtype=torch.float64)
    tr = float(torch.trace(A))
    runs = [estimate_trace(MatrixOperator(A), max_samples=30, rtol=None, seed=s) for s in range(300)]
    assert all(len(r.samples) == 15 for r in runs)
    err = np.array([r.trace - tr for r in runs])
    se = np.array([r.stderr for r in runs])
    assert np.mean(np.abs(err) <= 2 * se) >= 0.935 - 3 * np.sqrt(0.935 * 0.065 / 300)
    assert 0.7 < np.sqrt(np.mean(se**2) / np.mean(err**2)) < 1.4


def test_x_estimators_stop_at_the_requested_relative_error():
    A = decaying(200) + 0.2 * torch.eye(200, dtype=torch.float64)
    for method in ("xtrace", "xnystrace"):
        r = estimate_trace(MatrixOperator(A), method, max_samples=190, rtol=0.02, block=4)
        assert r.converged and r.stderr <= 0.02 * abs(r.trace) and r.num_matvecs < 190
        assert abs(r.trace - float(torch.trace(A))) < 4 * r.stderr
        cost = 2 if method == "xtrace" else 1
        assert r.num_matvecs == cost * r.rank and r.rank % 4 == 0
        short = estimate_trace(MatrixOperator(A), method, max_samples=r.num_matvecs - 4 * cost, rtol=0.02, block=4)
        assert not short.converged  # the rule did not hold one block earlier
        r = estimate_trace(MatrixOperator(A), method, max_samples=24, rtol=1e-9)
        assert not r.converged and r.num_matvecs == 24


def test_trace_methods_check_their_input():
    with pytest.raises(ValueError, match="positive semi-definite"):
        xnystrace(MatrixOperator(decaying(50) - 2 * torch.eye(50, dtype=torch.float64)), max_samples=20)
    with pytest.raises(ValueError, match="max_samples"):
        xtrace(MatrixOperator(decaying(50)), max_samples=3)
    with pytest.raises(ValueError, match="trace method"):
        estimate_trace(MatrixOperator(decaying(50)), "hutch")
    assert estimate_trace(MatrixOperator(decaying(50)), "hutchpp-random", max_samples=30).method == "hutchpp-random"
    assert DEFAULT_TRACE_METHOD in TRACE_METHODS


@pytest.mark.parametrize("method", ["hutchpp-random", "hutchpp-lanczos", "hutchpp-block"])
def test_hutchpp_is_exact_on_tiny_operators_within_budget(method):
    """``max_samples >= P`` gives the exact trace for every P, also below Hutch++'s smallest sketch (it raised)."""
    for P in (1, 2, 3):
        A = torch.diag(torch.tensor([-3.0, 1.0, 2.5], dtype=torch.float64)[:P])
        r = estimate_trace(MatrixOperator(A), method, max_samples=P, rtol=None)
        assert r.trace == pytest.approx(float(torch.trace(A)), abs=1e-12) and r.stderr == 0.0


def test_hutchpp_rank_covering_the_dimension_still_keeps_the_budget():
    """``rank >= P`` with ``max_samples < P`` would spend P products: refused like any sketch beyond the budget."""
    A = torch.diag(torch.arange(1.0, 21.0, dtype=torch.float64))
    for rank in (20, 500):
        with pytest.raises(ValueError, match=f"rank={rank}"):
            hutchpp(MatrixOperator(A), max_samples=10, rank=rank)
    assert hutchpp(MatrixOperator(A), max_samples=20, rank=20).trace == pytest.approx(210.0)
