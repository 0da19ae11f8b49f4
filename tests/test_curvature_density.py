"""Stochastic Lanczos quadrature: quadrature identities, normalization, smoothing."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.integrate import trapezoid

from landscape.curvature.density import spectral_density
from landscape.curvature.operators import MatrixOperator
from landscape.curvature.trace import rademacher
from landscape.objective import Objective
from tests.curvature_helpers import assert_unchanged, bn_net, dense_hessian, snapshot
from tests.fixtures import blobs

# torch's forward-AD decompositions still call the deprecated torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def test_full_length_runs_recover_the_spectrum_and_weights():
    g = torch.Generator().manual_seed(0)
    values = torch.tensor([4.0, 2.5, 1.0, 0.5, 0.0, -0.3, -1.0, -2.0], dtype=torch.float64)
    U, _ = torch.linalg.qr(torch.randn(8, 8, generator=g, dtype=torch.float64))
    A = U @ torch.diag(values) @ U.T
    r = spectral_density(MatrixOperator(A), num_runs=3, num_steps=8, seed=4)
    v = rademacher(3, 8, torch.Generator().manual_seed(4))
    v = v / v.norm(dim=1, keepdim=True)
    for run in range(3):
        np.testing.assert_allclose(r.nodes[run], np.sort(values.numpy()), atol=1e-12)
        w = ((v[run] @ U) ** 2).numpy()[np.argsort(values.numpy())]  # weight of lambda_i is (u_i . v)^2
        np.testing.assert_allclose(r.weights[run], w, atol=1e-12)
    assert r.num_matvecs == 24 and r.num_passes == 8


def test_quadrature_moments_density_normalization_and_smoothing():
    d = blobs(n_train=40)
    model = bn_net()
    before = snapshot(model)
    x, y = d.x_train.double(), d.y_train
    H = dense_hessian(model, x, y)
    r = spectral_density(Objective(model, x, y), num_runs=2, num_steps=6, sigma=0.05, grid_size=4001)
    assert_unchanged(model, before)
    v = rademacher(2, H.shape[0], torch.Generator().manual_seed(0))
    v = v / v.norm(dim=1, keepdim=True)
    for p in range(2 * 6):  # Gauss quadrature with m nodes is exact for polynomials of degree < 2m
        exact = [float(vi @ torch.linalg.matrix_power(H, p) @ vi) for vi in v]
        np.testing.assert_allclose((r.weights * r.nodes**p).sum(1), exact, rtol=1e-8, atol=1e-12)
    np.testing.assert_allclose(r.weights.sum(1), 1.0, atol=1e-12)
    assert abs(trapezoid(r.density, r.grid) - 1.0) < 1e-12
    t = r.grid[1234]
    mix = (r.weights * np.exp(-0.5 * ((t - r.nodes) / 0.05) ** 2)).sum() / (2 * 0.05 * np.sqrt(2 * np.pi))
    assert abs(r.density[1234] - mix) < 1e-6 * max(mix, 1.0)  # renormalization changes it by < 1e-6
    assert abs(r.trace_estimate - H.shape[0] * float((v @ H * v).sum(1).mean())) < 1e-10
    assert r.grid[0] < r.nodes.min() - 4.9 * 0.05 and r.grid[-1] > r.nodes.max() + 4.9 * 0.05


def test_runs_go_in_turns_when_their_bases_do_not_fit_together():
    g = torch.Generator().manual_seed(1)
    A = torch.randn(40, 40, generator=g, dtype=torch.float64)
    A = A + A.T
    together = spectral_density(MatrixOperator(A), num_runs=5, num_steps=10)
    in_turns = spectral_density(MatrixOperator(A), num_runs=5, num_steps=10, basis_bytes=2 * 10 * 40 * 8)
    np.testing.assert_allclose(in_turns.nodes, together.nodes, atol=1e-12)
    np.testing.assert_allclose(in_turns.weights, together.weights, atol=1e-12)
    assert (together.num_passes, in_turns.num_passes) == (10, 30) and in_turns.num_matvecs == 50
