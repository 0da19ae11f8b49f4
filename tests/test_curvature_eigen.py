"""Lanczos and power iteration against dense eigendecompositions, scipy and PyHessian."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape.curvature.fisher import fisher_eigenvalues
from landscape.curvature.lanczos import lanczos
from landscape.curvature.operators import MatrixOperator
from landscape.curvature.power import power_iteration
from landscape.objective import Objective
from tests.curvature_helpers import assert_unchanged, bn_net, dense_hessian, small_mlp, snapshot
from tests.fixtures import blobs

# torch's forward-AD decompositions still call the deprecated torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def problem():
    d = blobs(n_train=60)
    x, y = d.x_train.double(), d.y_train
    model = bn_net(hidden=6, seed=3)
    H = dense_hessian(model, x, y)
    return model, x, y, H, np.linalg.eigvalsh(H.numpy())


def spectrum_matrix(values: np.ndarray, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, _ = torch.linalg.qr(torch.randn(len(values), len(values), generator=g, dtype=torch.float64))
    return Q @ torch.diag(torch.as_tensor(values, dtype=torch.float64)) @ Q.T


@pytest.mark.parametrize("which", ["largest", "smallest", "both"])
def test_lanczos_matches_dense_hessian(problem, which):
    model, x, y, H, ev = problem
    before = snapshot(model)
    obj = Objective(model, x, y, batch_size=16)
    k = 4
    r = lanczos(obj, k, which=which, tol=1e-10, residuals=True, return_vectors=True)
    want = {"largest": ev[::-1][:k], "smallest": ev[:k], "both": np.concatenate([ev[::-1][:k], ev[:k]])}[which]
    assert r.converged and r.eigenvalues.shape == want.shape
    np.testing.assert_allclose(r.eigenvalues, want, rtol=1e-8, atol=0)
    scale = np.abs(ev).max()
    assert np.all(r.residuals < 1e-8 * scale) and np.all(r.residual_estimates < 1e-8 * scale)
    Y = r.eigenvectors
    torch.testing.assert_close(Y @ Y.T, torch.eye(len(want), dtype=torch.float64), atol=1e-10, rtol=0)
    torch.testing.assert_close(Y @ H @ Y.T, torch.diag(torch.as_tensor(want.copy())), atol=1e-9 * scale, rtol=0)
    # the counters: Krylov steps plus k for the true residuals, one block pass for those
    assert r.num_matvecs == r.num_iterations + len(want) == obj.counts["hessian"]
    assert r.num_passes == obj.counts["passes"] == r.num_iterations + 1
    assert_unchanged(model, before)


def test_lanczos_restarts_and_caps():
    values = np.concatenate([[10.0, 9.0, 8.5, 8.4, 8.3], np.linspace(-1, 1, 295)])
    op = MatrixOperator(spectrum_matrix(values))
    r = lanczos(op, 5, ncv=12, tol=1e-9, max_matvecs=5000)  # tight clusters need restarts with ncv=12
    assert r.converged and r.num_iterations > 12
    np.testing.assert_allclose(r.eigenvalues, values[:5], rtol=1e-8)
    capped = lanczos(MatrixOperator(spectrum_matrix(values)), 5, ncv=12, tol=1e-9, max_matvecs=20)
    assert not capped.converged and capped.num_matvecs == 20
    with pytest.raises(ValueError):
        lanczos(op, 5, ncv=6)
    with pytest.raises(ValueError):
        lanczos(op, 5, which="middle")


def test_lanczos_low_rank_and_full_space():
    values = np.array([3.0, 2.0, 1.0] + [0.0] * 17)
    r = lanczos(MatrixOperator(spectrum_matrix(values, seed=1)), 5, tol=1e-10, residuals=True)
    assert r.converged
    np.testing.assert_allclose(r.eigenvalues, [3, 2, 1, 0, 0], atol=1e-12)
    assert np.all(r.residuals < 1e-12)
    tiny = MatrixOperator(spectrum_matrix(np.array([2.0, -1.0, 0.5])))
    np.testing.assert_allclose(lanczos(tiny, 3).eigenvalues, [2.0, 0.5, -1.0], atol=1e-13)


def test_lanczos_float32_operator_with_float64_basis(problem):
    model, x, y, H, ev = problem
    obj = Objective(bn_net(hidden=6, seed=3).float(), x.float(), y)
    r = lanczos(obj, 3, tol=1e-5)
    assert r.converged
    np.testing.assert_allclose(r.eigenvalues, ev[::-1][:3], rtol=1e-5)


def test_lanczos_is_seeded(problem):
    model, x, y, _, _ = problem
    a = lanczos(Objective(model, x, y), 2, seed=7, tol=1e-3)
    b = lanczos(Objective(model, x, y), 2, seed=7, tol=1e-3)
    assert np.array_equal(a.eigenvalues, b.eigenvalues) and a.num_matvecs == b.num_matvecs


def test_lanczos_agrees_with_scipy_eigsh(problem):
    from scipy.sparse.linalg import eigsh

    model, x, y, _, _ = problem
    obj = Objective(model, x, y)
    ref = np.sort(eigsh(obj.hessian.to_scipy(), k=3, which="LA", tol=1e-13)[0])[::-1]
    np.testing.assert_allclose(lanczos(obj, 3, tol=1e-10).eigenvalues, ref, rtol=1e-9)


@pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")
@pytest.mark.parametrize("bs", [16, 24])  # 64 = 4 x 16; 64 = 24 + 24 + 16 (PyHessian weights batches by size too)
def test_power_iteration_matches_pyhessian_step_for_step(bs):
    pyhessian = pytest.importorskip("pyhessian")
    d = blobs(n_train=64)
    x, y = d.x_train.double(), d.y_train
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)  # PyHessian draws its vectors in the default dtype
    try:
        torch.manual_seed(1)
        model = small_mlp(hidden=6).train()
        before = snapshot(model)
        ours = power_iteration(Objective(model, x, y, batch_size=bs), 3, max_iter=50, tol=1e-4,
                               seed=5, return_vectors=True)
        assert_unchanged(model, before)
        loader = [(x[i:i + bs], y[i:i + bs]) for i in range(0, 64, bs)]
        H = pyhessian.hessian(model, torch.nn.CrossEntropyLoss(), dataloader=loader, cuda=False)
        calls, product = [0], H.dataloader_hv_product

        def counted(v):
            calls[0] += 1
            return product(v)

        H.dataloader_hv_product = counted
        torch.manual_seed(5)
        theirs, vectors = H.eigenvalues(maxIter=50, tol=1e-4, top_n=3)
    finally:
        torch.set_default_dtype(old)
    np.testing.assert_allclose(ours.eigenvalues, theirs, rtol=1e-12)
    V = torch.stack([torch.cat([t.reshape(-1) for t in v]) for v in vectors])
    torch.testing.assert_close(ours.eigenvectors, V, rtol=0, atol=1e-12)
    assert ours.num_matvecs == ours.num_iterations == calls[0]


def test_power_iteration_finds_largest_magnitude():
    op = MatrixOperator(spectrum_matrix(np.array([-5.0, 3.0, 1.0, 0.5, 0.1])))
    r = power_iteration(op, 2, max_iter=500, tol=1e-12, residuals=True)
    # PyHessian's v / (||v|| + 1e-6) leaves |v| = 1 / (1 + 1e-6): a relative bias of -2e-6
    np.testing.assert_allclose(r.eigenvalues, [-5.0 / (1 + 1e-6) ** 2, 3.0 / (1 + 1e-6) ** 2], rtol=1e-9)
    assert r.num_matvecs == r.num_iterations + 2


def test_fisher_and_ggn_top_eigenvalues_match_dense(problem):
    _, x, y, _, _ = problem
    obj = Objective(small_mlp(), x, y, batch_size=13)
    for kind in ("fisher", "ggn"):
        dense = np.linalg.eigvalsh(obj.operator(kind).to_dense().numpy())[::-1]
        r = fisher_eigenvalues(obj, 5, kind=kind, tol=1e-10)
        np.testing.assert_allclose(r.eigenvalues, dense[:5], rtol=1e-8)
    with pytest.raises(ValueError):
        fisher_eigenvalues(obj, 2, kind="hessian")


def test_fisher_gram_is_exact_and_pads_with_zeros(problem):
    """F = J^T J / N and J J^T / N share their non-zero eigenvalues: all of them, one data pass."""
    _, x, y, _, _ = problem
    obj = Objective(small_mlp(), x, y, batch_size=13)  # 57 parameters, 60 samples
    dense = np.linalg.eigvalsh(obj.fisher.to_dense().numpy())[::-1]
    r = fisher_eigenvalues(obj, obj.num_params, method="gram")
    np.testing.assert_allclose(r.eigenvalues, dense, rtol=1e-9, atol=1e-14)
    assert r.method == "gram" and r.converged and r.num_passes == 1 and r.num_matvecs == 0
    few = Objective(small_mlp(), x[:7], y[:7])  # rank <= 7: the rest are exact zeros
    r = fisher_eigenvalues(few, 10, method="gram")
    np.testing.assert_allclose(r.eigenvalues[:7], np.linalg.eigvalsh(few.fisher.to_dense().numpy())[::-1][:7],
                               rtol=1e-9)
    assert list(r.eigenvalues[7:]) == [0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="GGN"):
        fisher_eigenvalues(obj, 2, kind="ggn", method="gram")
    with pytest.raises(ValueError, match="max_memory"):
        fisher_eigenvalues(obj, 2, method="gram", max_memory=1000)
    with pytest.raises(ValueError, match="method"):
        fisher_eigenvalues(obj, 2, method="dense")


class NoisyOperator(MatrixOperator):
    """``(A + E) v`` with ``E`` a fixed non-symmetric matrix of independent ``N(0, noise^2)`` entries:
    a computed product whose error ``q . E q'`` has standard deviation ``noise`` for unit ``q, q'``."""

    def __init__(self, A: torch.Tensor, noise: float, seed: int = 0) -> None:
        super().__init__(A)
        g = torch.Generator().manual_seed(seed)
        self.E = noise * torch.randn(A.shape, generator=g, dtype=torch.float64)

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        return super().matvec(v) + (v.reshape(-1, self.num_params) @ self.E.T).reshape(v.shape)


def decaying_spectrum(n: int = 200) -> np.ndarray:
    return np.concatenate([[10.0, 8.0, 6.5, 5.0, 4.0], 3.0 * np.exp(-np.arange(n - 5) / 20.0)])


def test_noise_floor_is_estimated_from_symmetry_defects_and_stops_there():
    values = decaying_spectrum()
    A = spectrum_matrix(values, seed=2)
    noisy = NoisyOperator(A, noise=1e-6)
    r = lanczos(noisy, 4)
    # the defects measure E: the floor is its bilinear size, not the float64 rounding of A
    assert r.stopped_by == "noise" and r.converged
    assert 0.7e-6 < r.noise.min() <= r.noise.max() < 1.4e-6
    err = np.abs(r.eigenvalues - values[:4])
    long = lanczos(NoisyOperator(A, noise=1e-6), 4, tol=1e-12, precision_stop=False, max_matvecs=120)
    floor = np.abs(long.eigenvalues - values[:4])
    assert np.all(err <= floor + 0.2 * r.accuracy)  # at the floor: more iterations would not help
    assert np.all(err <= 3 * r.accuracy)  # the reported accuracy is honest
    assert r.num_matvecs < lanczos(NoisyOperator(A, noise=1e-6), 4, precision_stop=False).num_matvecs
    # exact products: the floor is float64 rounding, far below what tol=1e-6 gives (r^2 / gap ~ 1e-11)
    exact = lanczos(MatrixOperator(A), 4)
    assert exact.noise.max() < 1e-14 and exact.stopped_by == "tol"
    assert np.all(np.abs(exact.eigenvalues - values[:4]) <= exact.accuracy + 1e-13)  # 1e-13: rounding of Q D Q^T


def test_float64_still_converges_to_1e_12(problem):
    """Precision-aware stopping leaves float64 runs at float64 accuracy, with or without vectors."""
    _, _, _, H, ev = problem
    for vectors in (False, True):
        r = lanczos(MatrixOperator(H), 3, tol=1e-12, return_vectors=vectors, residuals=True)
        assert r.converged
        np.testing.assert_allclose(r.eigenvalues, ev[::-1][:3], rtol=1e-12)
        assert np.all(np.abs(r.eigenvalues - ev[::-1][:3]) <= r.accuracy + 1e-14)
        if vectors:  # the vectors' residuals reach the rounding floor too
            assert np.all(r.residuals < 1e-12 * np.abs(ev).max())


def test_float32_stops_near_its_floor_reports_it_and_hvp_counts(problem):
    """The float32 BN net's top 4: precision-aware stopping ends at the accuracy a long run reaches, says
    how accurate it is, and spends fewer HVPs (measured 30, and 14 on the noisy decaying spectrum) than
    the former rule (34 and 18): a change that costs more fails."""
    model, x, y, H, ev = problem
    want = ev[::-1][:4]

    def run(**kw):
        return lanczos(Objective(model.float(), x.float(), y), 4, **kw)

    try:
        r = run()
        old = run(precision_stop=False)
        long = run(tol=1e-12, precision_stop=False, max_matvecs=60)
    finally:
        model.double()
    err, floor = np.abs(r.eigenvalues - want), np.abs(long.eigenvalues - want)
    assert r.stopped_by == "noise" and old.stopped_by == "tol"
    eps = np.finfo(np.float32).eps
    assert np.all(r.noise >= eps * np.abs(r.eigenvalues))  # never claims more than float32 holds
    assert np.all(err <= 2 * floor + r.accuracy)  # near the floor: more iterations would not help
    assert np.all(err <= 3 * r.accuracy)  # the reported accuracy is honest
    assert r.to_dict()["accuracy"] == [float(a) for a in r.accuracy]
    A = spectrum_matrix(decaying_spectrum(), seed=2)
    noisy, noisy_old = (lanczos(NoisyOperator(A, 1e-6), 4, precision_stop=p) for p in (True, False))
    assert r.num_matvecs <= 31 and noisy.num_matvecs <= 15
    assert r.num_matvecs < old.num_matvecs and noisy.num_matvecs < noisy_old.num_matvecs


def test_lanczos_warm_start_from_nearby_eigenvectors():
    values = decaying_spectrum()
    A = spectrum_matrix(values, seed=2)
    g = torch.Generator().manual_seed(5)
    D = 1e-3 * torch.randn(A.shape, generator=g, dtype=torch.float64)
    B = A + (D + D.T) / 2  # a nearby checkpoint's Hessian
    prev = lanczos(MatrixOperator(A), 4, return_vectors=True)
    cold = lanczos(MatrixOperator(B), 4, tol=1e-10)
    warm = lanczos(MatrixOperator(B), 4, tol=1e-10, v0=prev.eigenvectors)
    np.testing.assert_allclose(warm.eigenvalues, cold.eigenvalues, rtol=1e-12)
    assert warm.num_matvecs < cold.num_matvecs


def test_eigenvalue_rows_show_the_accuracy_and_why_it_stopped():
    from landscape.curvature.measures import _eig_rows

    r = lanczos(NoisyOperator(spectrum_matrix(decaying_spectrum(), seed=2), 1e-6), 2)
    rows = dict(_eig_rows({"k": 2, **r.to_dict()}))
    assert rows["  accuracy (estimated |error|)"].endswith("(reached the HVP's rounding floor)")
    assert rows["  accuracy (estimated |error|)"].startswith(f"{r.accuracy[0]:.1e}, ")
    power = power_iteration(MatrixOperator(spectrum_matrix(decaying_spectrum(50))), 1)
    assert "  accuracy (estimated |error|)" not in dict(_eig_rows({"k": 1, **power.to_dict()}))


@pytest.mark.parametrize("which", ["smallest", "both"])
def test_lanczos_finds_every_zero_of_a_rank_deficient_hessian(which):
    """A rank-deficient operator's Krylov space turns invariant before it holds k zeros: every Ritz value then
    passes, yet the other zeros lie outside it; Lanczos goes on until a direction leaves the wanted values as
    they were (before: [0, 1.03, 1.22, 1.24, 1.34] reported as the five smallest, converged)."""
    rng = np.random.default_rng(1)
    Q = np.linalg.qr(np.random.default_rng(0).standard_normal((200, 200)))[0]
    A = torch.tensor(Q @ np.diag(np.r_[rng.uniform(1, 2, 8), np.zeros(192)]) @ Q.T)
    A = (A + A.T) / 2
    r = lanczos(MatrixOperator(A), 5, which=which)
    exact = np.linalg.eigvalsh(A.numpy())
    want = exact[:5] if which == "smallest" else np.r_[exact[::-1][:5], exact[:5]]
    assert r.converged
    np.testing.assert_allclose(r.eigenvalues, want, atol=1e-12)
