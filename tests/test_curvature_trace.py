"""Hutchinson and Hutch++: exact in expectation, exact past the rank, standard errors, stopping rule."""
from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape.curvature.operators import MatrixOperator
from landscape.curvature.trace import hutchinson, hutchpp, rademacher
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
    r = hutchinson(obj, max_samples=20, rtol=None, block=6, seed=3)
    Zs = rademacher(20, obj.num_params, torch.Generator().manual_seed(3))
    np.testing.assert_allclose(r.samples, ((Zs @ H) * Zs).sum(1).numpy(), rtol=1e-12, atol=1e-15)
    assert r.num_matvecs == 20 and r.num_passes == 4 and r.trace == pytest.approx(r.samples.mean(), rel=1e-15)


def test_hutchinson_standard_error_and_coverage():
    A = decaying(60)
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
    rank, samples = (20, 20) if sketch == "random" else (40, 20)
    assert r.rank == rank and r.num_matvecs == 60 and len(r.samples) == samples and r.method == f"hutchpp-{sketch}"


def test_lanczos_sketch_is_exact_on_an_invariant_krylov_space():
    g = torch.Generator().manual_seed(2)
    U, _ = torch.linalg.qr(torch.randn(30, 30, generator=g, dtype=torch.float64))
    A = U[:, :4] @ torch.diag(torch.tensor([4.0, 3.0, 2.0, -1.0], dtype=torch.float64)) @ U[:, :4].T
    r = hutchpp(MatrixOperator(A), max_samples=30, rank=6, sketch="lanczos", rtol=1e-6, block=5)
    assert abs(r.low_rank_trace - 8.0) < 1e-12 and abs(r.trace - 8.0) < 1e-12 and r.converged
    assert np.all(np.abs(r.samples) < 1e-12)


def test_hutchpp_checks_its_budget():
    with pytest.raises(ValueError):
        hutchpp(MatrixOperator(decaying(30)), max_samples=10, rank=5)
    with pytest.raises(ValueError):
        hutchpp(MatrixOperator(decaying(30)), max_samples=10, rank=9, sketch="lanczos")
    with pytest.raises(ValueError):
        hutchpp(MatrixOperator(decaying(30)), sketch="sobol")
