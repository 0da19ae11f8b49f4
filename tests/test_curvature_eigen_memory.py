"""Low-memory top-k eigenvalues (no graph cache, three-vector or compact restarted Lanczos) and the deterministic
HVP mode, against dense float64 Hessians of tiny nets of each family and explicit spectra."""
from __future__ import annotations

import gc

import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape.curvature.lanczos import lanczos
from landscape.curvature.operators import MatrixOperator
from landscape.models.cnn import CNN
from landscape.models.lstm_lm import LSTMLanguageModel
from landscape.models.mlp import MLP
from landscape.models.resnet import CifarResNet
from landscape.objective import Objective, products
from tests.curvature_helpers import dense_hessian
from tests.test_curvature_eigen import spectrum_matrix


def _tiny(family: str):
    """A float64 net of ``family`` with a few hundred parameters, its data and its loss."""
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    if family == "lstm":
        model = LSTMLanguageModel(input_shape=[5], num_outputs=7, vocab_size=7, embed_dim=4, hidden=5, num_layers=1,
                                  dropout=0.0)
        x = torch.randint(7, (12, 5), generator=g)
        return model.double(), x, torch.randint(7, (12, 5), generator=g), "language_model"
    if family == "mlp":
        model, x = MLP(input_shape=[6], num_outputs=3, hidden=[8, 8]), torch.randn(24, 6, generator=g)
    elif family == "cnn":
        model, x = CNN(input_shape=[1, 6, 6], num_outputs=3, channels=[2, 3], hidden=6), torch.randn(16, 1, 6, 6,
                                                                                                       generator=g)
    else:
        model, x = CifarResNet([1, 6, 6], 3, (2, 3), (1, 1), "A", "resnet"), torch.randn(16, 1, 6, 6, generator=g)
        model.train()
        with torch.no_grad():  # BatchNorm running statistics away from (0, 1)
            model(x)
    return model.eval().double(), x.double(), torch.randint(3, (len(x),), generator=g), "classification"


def dense(obj: Objective) -> torch.Tensor:
    """The exact Hessian of the objective's full-data loss by ``torch.func.hessian`` (one micro-batch)."""
    (_, batch), = obj.source.batches()

    def loss(w: torch.Tensor) -> torch.Tensor:
        v = obj.call(obj.loss_spec.value, w, batch)
        return v.total / v.count

    return torch.func.hessian(loss)(obj.params())


def top(H: torch.Tensor, k: int) -> np.ndarray:
    return np.linalg.eigvalsh(H.numpy())[::-1][:k]


@pytest.mark.parametrize("family", ["mlp", "cnn", pytest.param("resnet-bn", marks=pytest.mark.slow), "lstm"])
def test_low_memory_lanczos_is_exact_and_keeps_no_graph(family):
    """memory="low": three-vector Lanczos (no reorthogonalization, the operator's dtype) on products that keep
    no gradient graph reaches the dense float64 Hessian's top 5 to 1e-12, and agrees with the default
    (graph-cached, float64 basis) to rounding; with vectors asked for, the restarted basis of wanted + 3 does."""
    model, x, y, task = _tiny(family)
    ev = top(dense(Objective(model, x, y, task=task)), 5)
    if family != "lstm":  # the loss protocol's Hessian is itself checked against a plain cross-entropy's
        np.testing.assert_allclose(ev, top(dense_hessian(model, x, y), 5), rtol=1e-10)
    low = Objective(model, x, y, task=task, batch_size=8, memory="low")
    r = lanczos(low, 5, tol=1e-12)
    assert low.low_memory and low.cache_graph is False
    assert not low._graphs and low._graph_bytes == 0  # the objective's own accounting: nothing kept
    assert r.converged and r.eigenvectors is None
    np.testing.assert_allclose(r.eigenvalues, ev, rtol=1e-12, atol=1e-13 * abs(ev[0]))
    v = lanczos(low, 5, tol=1e-12, return_vectors=True)
    assert v.num_iterations > 8  # more steps than the basis of 8 holds: it restarted
    np.testing.assert_allclose(v.eigenvalues, ev, rtol=1e-12, atol=1e-13 * abs(ev[0]))
    default = Objective(model, x, y, task=task, batch_size=8)
    d = lanczos(default, 5, tol=1e-12)
    assert not default.low_memory and default._graph_bytes > 0
    np.testing.assert_allclose(r.eigenvalues, d.eigenvalues, rtol=1e-12, atol=1e-13 * abs(ev[0]))


def test_low_memory_float32_agrees_to_rounding_and_auto_picks_it_when_graphs_do_not_fit():
    model, x, y, task = _tiny("resnet-bn")
    model.float()
    x = x.float()
    runs = {mem: lanczos(Objective(model, x, y, batch_size=8, memory=mem), 4) for mem in ("auto", "low")}
    ev = top(dense(Objective(model.double(), x.double(), y)), 4)
    for r in runs.values():  # both at float32 rounding of the exact values, within what they report
        assert np.all(np.abs(r.eigenvalues - ev) <= 3 * r.accuracy)
        np.testing.assert_allclose(r.eigenvalues, ev, rtol=1e-5)
    tight = Objective(model, x.double(), y, batch_size=8, graph_memory=1000)  # the graphs cannot fit: low
    assert tight.low_memory and tight.cache_graph is False and not tight._graphs
    model.train()  # the graph built to decide is the eval-mode one products reuse
    roomy = Objective(model, x.double(), y, batch_size=8)
    assert not roomy.low_memory and roomy.cache_graph is True and len(roomy._graphs) == 1  # the first, kept
    v = torch.randn(roomy.num_params, dtype=torch.float64)
    torch.testing.assert_close(roomy.hvp(v), Objective(model, x.double(), y, batch_size=8, cache_graph=False).hvp(v),
                               rtol=1e-12, atol=1e-14)
    model.eval()
    with pytest.raises(ValueError, match="memory"):
        Objective(model, x, y, memory="tiny")


def test_auto_hvp_mode_is_reverse_without_a_timing_trial(monkeypatch):
    """``hvp_mode="auto"`` away from the cached point is double backward, decided without timing (a forward-mode
    trial would call ``hvp_forward``): two fresh objectives give bit-identical products and eigenvalues."""
    model, x, y, _ = _tiny("cnn")
    monkeypatch.setattr(products, "hvp_forward", lambda *a, **k: pytest.fail("auto mode ran a forward-mode trial"))
    w = Objective(model, x, y).params() + 0.01
    V = torch.randn(3, len(w), dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    a, b = (Objective(model, x, y, batch_size=8).hvp(V, w) for _ in range(2))
    assert torch.equal(a, b)
    assert torch.equal(a, Objective(model, x, y, batch_size=8, hvp_mode="reverse").hvp(V, w))
    e1, e2 = (lanczos(Objective(model.float(), x.float(), y, cache_graph=False), 3).eigenvalues for _ in range(2))
    model.double()
    assert np.array_equal(e1, e2)


def test_cli_memory_flag_reaches_the_objective():
    from landscape.analysis import AnalysisContext, default_options
    from tests.fixtures import blobs

    data = blobs(n_train=20)
    net = nn.Sequential(nn.Linear(5, 3))
    assert AnalysisContext(net, data, default_options(device="cpu")).objective().memory == "auto"
    obj = AnalysisContext(net, data, default_options(device="cpu", memory="low")).objective()
    assert obj.memory == "low" and obj.low_memory and obj.cache_graph is False


def _live_tensors() -> list[torch.Tensor]:
    out = []
    for o in gc.get_objects():
        try:
            if isinstance(o, torch.Tensor):
                out.append(o)
        except ReferenceError:  # a dead weak proxy
            continue
    return out


class _LowMatrix(MatrixOperator):
    """An explicit matrix that asks solvers for the low-memory workspace, and records the largest number of
    ``P``-vectors alive (other than the matrix and tensors older than the operator) while a product runs."""

    low_memory = True

    def __init__(self, A: torch.Tensor) -> None:
        super().__init__(A)
        self.most_vectors = 0.0
        self._before = _live_tensors()  # held, so their ids stay unique
        self._before_ids = {id(t) for t in self._before}

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        if self.num_matvecs >= 20:  # the workspace is set by then (the restarted run has restarted)
            return super().matvec(v)
        P, storages = self.num_params, {}
        for t in (t for t in _live_tensors() if id(t) not in self._before_ids):
            if t is not self.A and t.numel() and t.numel() % P == 0 and t.numel() < P * P:
                s = t.untyped_storage()
                storages[s.data_ptr()] = s.nbytes() / (P * t.element_size())
        self.most_vectors = max(self.most_vectors, sum(storages.values()))
        return super().matvec(v)


def _spectrum(kind: str, P: int, rng: np.random.Generator) -> np.ndarray:
    if kind == "outliers":  # a Hessian's few large outliers over a bulk
        return np.concatenate([[100, 60, 40, 30, 25, 20, 18, 15, 12, 10], rng.uniform(-1, 2, P - 10)])
    if kind == "decay":  # power-law decay of both signs
        return 100 * np.arange(1, P + 1) ** -1.5 * rng.choice([1, 1, 1, -0.3], P)
    return np.concatenate([[50, 49.9, 49.8, 30, 29.99], rng.normal(0, 1, P - 5)])  # close pairs


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("kind", ["outliers", "decay", "close"])
def test_low_memory_lanczos_holds_three_vectors_and_reads_through_ghosts(kind, dtype):
    """On a low-memory operator, top-5 runs Lanczos without reorthogonalization: at most three
    ``P``-vectors alive during a product (the restarted basis holds wanted + 3 = 8), yet every eigenvalue within
    3x its reported accuracy of the dense answer after its copies ("ghosts") appear, converged in fewer than
    twice the products of the full-basis run; float64 reaches 1e-12."""
    P, rng = 400, np.random.default_rng(0)
    lam = _spectrum(kind, P, rng)
    U, _ = np.linalg.qr(rng.normal(size=(P, P)))
    A = torch.tensor((U * lam) @ U.T, dtype=dtype)
    s, tol = np.sort(lam), 1e-12 if dtype == torch.float64 else 1e-6
    exact = s[::-1][:5]
    op = _LowMatrix(A)
    r = lanczos(op, 5, tol=tol)
    full = lanczos(MatrixOperator(A), 5, tol=tol)
    assert r.converged and r.eigenvectors is None
    assert op.most_vectors <= 3
    assert np.all(np.abs(r.eigenvalues - exact) <= 3 * r.accuracy + 1e-14 * abs(exact).max())
    if dtype == torch.float64:
        np.testing.assert_allclose(r.eigenvalues, exact, rtol=0, atol=1e-12 * abs(exact).max())
    assert r.num_matvecs < 2 * full.num_matvecs + 10
    restarted = _LowMatrix(A)
    lanczos(restarted, 5, tol=tol, which="both")  # the other ends keep the compact restarted basis
    assert restarted.most_vectors >= 13


def test_low_memory_lanczos_restarts_with_a_basis_on_an_invariant_krylov_space():
    """A rank-3 operator's Krylov space is invariant after 3 steps, before 5 eigenvalues are found: the run
    continues with a restarted basis (its products counted) and returns the exact 5 (3 nonzero, 2 zeros)."""
    A = spectrum_matrix(np.concatenate([[5.0, 3.0, 2.0], np.zeros(77)]))
    r = lanczos(_LowMatrix(A), 5, tol=1e-12)
    assert r.converged and r.num_matvecs > 3
    np.testing.assert_allclose(r.eigenvalues, [5, 3, 2, 0, 0], atol=1e-12)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_low_memory_density_is_the_same_quadrature_in_three_blocks(dtype):
    """SLQ on a low-memory operator runs the three-term recurrence (no basis): at most three blocks of the runs
    (plus their starts) alive during a product, where the default holds runs x steps vectors; its Gauss rule
    still reproduces every run's moments ``v^T A^k v`` (k <= 6) to rounding, like the full-basis one, with the
    top node at the largest eigenvalue."""
    from landscape.curvature.density import spectral_density
    from landscape.curvature.trace import rademacher

    P, rng = 300, np.random.default_rng(1)
    lam = _spectrum("outliers", P, rng)
    U, _ = np.linalg.qr(rng.normal(size=(P, P)))
    A64 = (U * lam) @ U.T
    A = torch.tensor(A64, dtype=dtype)
    low_op = _LowMatrix(A)
    low = spectral_density(low_op, num_runs=4, num_steps=40, seed=3)
    full = spectral_density(MatrixOperator(A), num_runs=4, num_steps=40, seed=3)
    assert low_op.most_vectors <= 4 * 4  # q_{j-1}, q_j and the starts (4 runs each); full: 4 x 40
    V = rademacher(4, P, torch.Generator().manual_seed(3)).numpy() / np.sqrt(P)
    tol = 1e-9 if dtype == torch.float64 else 2e-5
    for k in range(1, 7):
        exact = np.einsum("rp,rp->r", V @ np.linalg.matrix_power(A64, k), V)
        for r in (low, full):
            got = (r.weights * r.nodes ** k).sum(1)
            np.testing.assert_allclose(got, exact, rtol=tol, atol=tol * lam.max() ** k)
    assert abs(low.nodes.max() - lam.max()) <= tol * lam.max()


@pytest.mark.parametrize("spectrum_seed, seed", [(3, 0), (4, 1)])
def test_low_memory_lanczos_keeps_a_converged_eigenvalue_while_its_copy_forms(spectrum_seed, seed):
    """While a ghost copy forms, the genuine Ritz value's residual rises above the float64 noise floor and both
    sit by an eigenvalue of T without its first row: the test for copies in transit must keep the genuine one
    (the heaviest start weight of its neighbourhood). These two power-law spectra lost their second and third
    eigenvalue when it did not; now the top 5 are exact."""
    P, rng = 800, np.random.default_rng(spectrum_seed)
    lam = _spectrum("decay", P, rng)
    U, _ = np.linalg.qr(rng.normal(size=(P, P)))
    r = lanczos(_LowMatrix(torch.tensor((U * lam) @ U.T)), 5, seed=seed, tol=1e-12)
    exact = np.sort(lam)[::-1][:5]
    np.testing.assert_allclose(r.eigenvalues, exact, rtol=0, atol=1e-12 * exact[0])


class _ThroughFloat32(MatrixOperator):
    """A float64 operator whose product runs in float32 (a float64 model that computes in float32 inside, as
    RMSNorm layers do): its noise is float32's, far above the dtype's rounding."""

    low_memory = True

    def matvec(self, v: torch.Tensor) -> torch.Tensor:
        V = v.reshape(-1, self.num_params)
        self._matvecs += len(V)
        self._passes += 1
        return (V.float() @ self.A.T.float()).double().reshape(v.shape)


def test_low_memory_lanczos_merges_copies_that_differ_by_the_operator_noise():
    """Copies of a converged eigenvalue carry the operator's noise each: reported once, not as two eigenvalues
    (a float64 operator computing in float32 gave 12.00000014 and 11.99999995 for 12 before)."""
    for seed in range(12):
        g = torch.Generator().manual_seed(seed)
        Q = torch.linalg.qr(torch.randn(300, 300, generator=g, dtype=torch.float64)).Q
        ev = torch.cat([torch.tensor([12.0, 9.5, 8.9, 8.6], dtype=torch.float64),
                        8.0 * torch.rand(296, generator=g, dtype=torch.float64)])
        r = lanczos(_ThroughFloat32((Q * ev) @ Q.T), 3, seed=seed)
        np.testing.assert_allclose(r.eigenvalues, [12.0, 9.5, 8.9], rtol=1e-5)
