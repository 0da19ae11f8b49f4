"""The Objective against dense float64 references: weighting, micro-batching, eval mode, products, state."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from torch.func import functional_call

from landscape.curvature.lanczos import lanczos
from landscape.evaluation import evaluate
from landscape.losses import loss_fn
from landscape.models import build_model
from landscape.objective import Objective, eval_mode, select_parameters, subset_indices
from landscape.objective.products import gradient_graph, graph_bytes
from tests.curvature_helpers import assert_unchanged, bn_net, dense_hessian, full_loss, small_mlp, snapshot
from tests.fixtures import blobs
from tests.test_models import CASES, make_batch, task_of

# torch's forward-AD decompositions still call the deprecated torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data():
    d = blobs(n_train=50, n_test=20)
    return d.x_train.double(), d.y_train


@pytest.mark.parametrize("mode, cache", [("reverse", False), ("forward", False), ("auto", False), ("auto", True)])
def test_hessian_equals_dense_with_uneven_micro_batches(data, mode, cache):
    x, y = data
    model = bn_net()
    before = snapshot(model)
    H = dense_hessian(model, x, y)
    # 50 = 7 * 7 + 1: a last batch of one
    obj = Objective(model, x, y, batch_size=7, hvp_mode=mode, cache_graph=cache)
    torch.testing.assert_close(obj.hessian.to_dense(), H, rtol=1e-12, atol=1e-13)
    V = torch.randn(3, obj.num_params, dtype=torch.float64)
    torch.testing.assert_close(obj.hvp(V), V @ H, rtol=1e-12, atol=1e-13)  # a block equals row by row
    torch.testing.assert_close(obj.hvp(V[0]), H @ V[0], rtol=1e-12, atol=1e-13)
    assert_unchanged(model, before)


class _FixedBatch(nn.Module):
    """A model written for one batch size (``reshape(8, ...)``): it fails on any other number of rows."""

    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.reshape(8, 5))


def test_a_model_that_fails_on_all_rows_keeps_one_graph_per_micro_batch(data):
    """The one graph of all rows is an optimization: a model that cannot take them keeps the micro-batches'."""
    x, y = data[0][:48], data[1][:48]
    model = _FixedBatch()
    obj = Objective(model, x, y, batch_size=8)
    V = torch.randn(2, obj.num_params, dtype=torch.float64)
    got = obj.hvp(V)
    assert obj._group_rows is None and len(obj._graphs) == 6
    torch.testing.assert_close(got, Objective(model, x, y, batch_size=8, cache_graph=False).hvp(V),
                               rtol=1e-12, atol=1e-14)


def test_losses_not_additive_over_rows_keep_the_micro_batches(data):
    """A per-batch mean over something else than rows (a class-weighted cross-entropy, a loss_fn's bare mean over
    tokens) defines the loss micro-batch by micro-batch: products and point evaluations keep them (a graph of all
    rows gave a Hessian 15-19% off), while an additive loss merges."""
    x, y = data
    model = small_mlp()
    weighted = nn.CrossEntropyLoss(weight=torch.tensor([1.0, 5.0, 0.2], dtype=torch.float64))

    def bare_mean(m, batch):
        return nn.functional.cross_entropy(m(batch[0]), batch[1], weight=weighted.weight)

    V = torch.randn(2, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    for loss, additive in ((weighted, False), (bare_mean, False), (nn.CrossEntropyLoss(), True)):
        obj = Objective(model, x, y, loss=loss, batch_size=8)
        plain = Objective(model, x, y, loss=loss, batch_size=8, cache_graph=False)
        torch.testing.assert_close(obj.hvp(V), plain.hvp(V), rtol=1e-12, atol=1e-14)
        assert (obj._group_rows is not None) == additive
        W = obj.params()[None] + 0.01 * V
        pointwise_loss = obj.evaluate_many(W, chunk_size=1)["loss"]  # point by point in the module
        np.testing.assert_allclose(pointwise_loss, plain.evaluate_many(W, chunk_size=2)["loss"], rtol=1e-12)


def test_kept_graphs_merge_micro_batches_up_to_a_size(data, monkeypatch):
    """On a CPU, micro-batches merge into kept graphs of at most GRAPH_GROUP_BYTES (large graphs were slower
    merged); the products are the micro-batches' to rounding."""
    import landscape.objective.core as core

    x, y = data
    model = bn_net()
    ref = Objective(model, x, y, batch_size=8, cache_graph=False)
    V = torch.randn(3, ref.num_params, dtype=torch.float64)
    with eval_mode(model):
        one = graph_bytes(gradient_graph(ref, ref.source.first())[1])
    monkeypatch.setattr(core, "GRAPH_GROUP_BYTES", int(2.5 * one))
    obj = Objective(model, x, y, batch_size=8)
    torch.testing.assert_close(obj.hvp(V), ref.hvp(V), rtol=1e-13, atol=1e-15)
    assert obj._group_rows == 16 and len(obj._graphs) == 4  # 50 rows: 16 + 16 + 16 + 2
    obj.release_graphs()
    torch.testing.assert_close(obj.hvp(V), ref.hvp(V), rtol=1e-13, atol=1e-15)  # rebuilt in the same groups
    assert len(obj._graphs) == 4


def test_gradient_graph_cache(data):
    x, y = data
    model = bn_net()
    plain = Objective(model, x, y, batch_size=8, cache_graph=False)
    V = torch.randn(4, plain.num_params, dtype=torch.float64)
    ref = plain.hvp(V)
    auto = Objective(model, x, y, batch_size=8)
    torch.testing.assert_close(auto.hvp(V), ref, rtol=1e-13, atol=1e-15)
    assert auto.cache_graph is True and auto._group_rows == 56 and len(auto._graphs) == 1  # tiny: one of all rows
    per_batch = Objective(model, x, y, batch_size=8, cache_graph=True, graph_memory=10 ** 9)
    with eval_mode(model):
        per_batch.graph_memory = 2 * graph_bytes(gradient_graph(per_batch, per_batch.source.first())[1]) * 7 - 1
    torch.testing.assert_close(per_batch.hvp(V), ref, rtol=1e-13, atol=1e-15)  # merged would not fit twice
    assert per_batch._group_rows is None and len(per_batch._graphs) == 7
    torch.testing.assert_close(auto.hvp(V), ref, rtol=1e-13, atol=1e-15)  # reused
    w = auto.params() + 0.1
    torch.testing.assert_close(auto.hvp(V, w), Objective(model, x, y, cache_graph=False).hvp(V, w))  # elsewhere: fresh
    auto.release_graphs()
    assert not auto._graphs
    small = Objective(model, x, y, batch_size=8, graph_memory=100)  # budget too small: not cached
    torch.testing.assert_close(small.hvp(V), ref, rtol=1e-13, atol=1e-15)
    assert small.cache_graph is False and not small._graphs
    with pytest.raises(ValueError):
        Objective(model, x, y, cache_graph="sometimes")


def test_micro_batched_equals_full_batch(data):
    x, y = data
    model = bn_net(seed=1)
    full = Objective(model, x, y, batch_size=10_000)
    micro = Objective(model, x, y, batch_size=3, max_block=2)
    w = full.params() + 0.1 * torch.randn(full.num_params, dtype=torch.float64)
    V = torch.randn(5, full.num_params, dtype=torch.float64)
    assert abs(full.loss(w) - micro.loss(w)) < 1e-14
    torch.testing.assert_close(micro.grad(w), full.grad(w), rtol=1e-12, atol=1e-14)
    for kind in ("hessian", "ggn", "fisher"):
        torch.testing.assert_close(micro.mvp(kind, V, w), full.mvp(kind, V, w), rtol=1e-12, atol=1e-14)
    assert micro.counts["hessian"] == 5 and micro.counts["passes"] > full.counts["passes"]


def test_loss_grad_and_eval_mode_policy(data):
    x, y = data
    model = bn_net()
    before = snapshot(model)
    w0, f = full_loss(model, x, y)
    obj = Objective(model, x, y, batch_size=8)
    loss, g = obj.loss_and_grad()
    ref = f(w0.requires_grad_())
    (g_ref,) = torch.autograd.grad(ref, w0)
    assert abs(loss - float(ref.detach())) < 1e-14
    torch.testing.assert_close(g, g_ref, rtol=1e-12, atol=1e-14)
    # eval mode: dropout off, BatchNorm on running statistics; evaluate() agrees with landscape.evaluation
    ev = evaluate(model, x, y, "classification", batch_size=8)
    assert abs(obj.evaluate()["loss"] - ev["loss"]) < 1e-14 and obj.evaluate()["acc"] == ev["acc"]
    assert_unchanged(model, before)
    assert model.training and model[3].training


def test_evaluate_many_matches_single_points(data):
    x, y = data
    obj = Objective(bn_net(), x, y, batch_size=16)
    W = obj.params() + 0.3 * torch.randn(5, obj.num_params, dtype=torch.float64)
    many = obj.evaluate_many(W, chunk_size=2)
    for i, w in enumerate(W):
        one = obj.evaluate(w)
        assert abs(many["loss"][i] - one["loss"]) < 1e-13 and abs(many["acc"][i] - one["acc"]) < 1e-15


def test_at_writes_and_restores_bit_exactly(data):
    x, y = data
    model = bn_net()
    before = snapshot(model)
    obj = Objective(model, x, y)
    w = obj.params() + 1.0
    with obj.at(w) as m:
        assert torch.equal(torch.cat([p.detach().reshape(-1) for p in m.parameters()]), w)
        with torch.no_grad():
            out = loss_fn("classification")(m.eval()(x), y)
        m.train()
    assert abs(float(out) - obj.loss(w)) < 1e-14
    assert_unchanged(model, before)


def test_parameter_filters(data):
    x, y = data
    model = bn_net()
    assert select_parameters(model, "weights") == ["0.weight", "4.weight"]
    assert select_parameters(model, r"^4\.") == ["4.weight", "4.bias"]
    assert select_parameters(model, ["1.bias"]) == ["1.bias"]
    assert select_parameters(model, lambda n, p: p.dim() == 1) == ["0.bias", "1.weight", "1.bias", "4.bias"]
    for bad in ("nothing-matches", ["no.such"], "("):
        with pytest.raises(ValueError):
            select_parameters(model, bad)
    names = ["0.weight", "4.weight"]
    obj = Objective(model, x, y, params="weights", batch_size=9)
    assert obj.names == names and obj.num_params == 5 * 4 + 4 * 3
    torch.testing.assert_close(obj.hessian.to_dense(), dense_hessian(model, x, y, names=names), rtol=1e-12,
                               atol=1e-13)


def test_float32_model_analyzed_in_float64(data):
    x, y = data
    m32 = small_mlp().float()
    obj = Objective(m32, x.float(), y, dtype=torch.float64)
    assert obj.dtype == torch.float64 and next(m32.parameters()).dtype == torch.float32
    H = dense_hessian(small_mlp().float().double(), x, y)
    torch.testing.assert_close(obj.hessian.to_dense(), H, rtol=1e-12, atol=1e-13)


def test_regression_and_language_model_weighting():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(23, 4, generator=g, dtype=torch.float64), torch.randn(23, generator=g, dtype=torch.float64)
    reg = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 1)).double()
    obj = Objective(reg, x, y, task="regression", batch_size=5)
    torch.testing.assert_close(obj.hessian.to_dense(), dense_hessian(reg, x, y, "regression"), rtol=1e-12, atol=1e-13)
    assert obj.evaluate()["acc"] is None
    # language model: every token counts once, whatever the micro-batching
    torch.manual_seed(0)
    lm = nn.Sequential(nn.Embedding(7, 3), nn.Linear(3, 7)).double()
    tokens = torch.randint(7, (11, 4), generator=g)
    targets = torch.randint(7, (11, 4), generator=g)
    obj = Objective(lm, tokens, targets, task="language_model", batch_size=4)
    assert obj.total_count == 44 and obj.num_samples == 11
    torch.testing.assert_close(obj.hessian.to_dense(), dense_hessian(lm, tokens, targets, "language_model"),
                               rtol=1e-12, atol=1e-13)


def test_ggn_and_fisher_equal_dense_matrices(data):
    x, y = data
    model = small_mlp()
    obj = Objective(model, x, y, batch_size=7)
    w0, _ = full_loss(model, x, y)
    names = [n for n, _ in model.named_parameters()]
    sizes = [p.numel() for p in model.parameters()]
    shapes = [p.shape for p in model.parameters()]

    def out_fn(w):
        return functional_call(model, {n: t.view(s) for n, t, s in zip(names, w.split(sizes), shapes)}, (x,))

    J = torch.autograd.functional.jacobian(out_fn, w0)  # (N, C, P)
    p = torch.softmax(out_fn(w0), dim=1)
    H_out = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]  # cross-entropy Hessian in the logits
    G = torch.einsum("ncp,ncd,ndq->pq", J, H_out, J) / len(x)
    torch.testing.assert_close(obj.ggn.to_dense(), G, rtol=1e-11, atol=1e-13)

    def sample_loss(w, i):
        return loss_fn("classification")(out_fn(w)[i:i + 1], y[i:i + 1])

    per_sample = torch.stack([torch.func.grad(sample_loss)(w0, i) for i in range(len(x))])
    F = per_sample.T @ per_sample / len(x)
    torch.testing.assert_close(obj.fisher.to_dense(), F, rtol=1e-11, atol=1e-13)


def test_ggn_equals_hessian_for_a_linear_model(data):
    x, y = data
    torch.manual_seed(0)
    model = nn.Linear(5, 3).double()
    obj = Objective(model, x, y, batch_size=11)
    torch.testing.assert_close(obj.ggn.to_dense(), obj.hessian.to_dense(), rtol=1e-12, atol=1e-14)


def test_scipy_view_and_input_checks(data):
    from scipy.sparse.linalg import eigsh

    x, y = data
    obj = Objective(small_mlp(), x, y)
    H = dense_hessian(small_mlp(), x, y).numpy()
    top = eigsh(obj.hessian.to_scipy(), k=2, which="LA", tol=1e-12)[0]
    np.testing.assert_allclose(np.sort(top), np.linalg.eigvalsh(H)[-2:], rtol=1e-10)
    with pytest.raises(ValueError):
        obj.hvp(torch.zeros(obj.num_params + 1))
    with pytest.raises(ValueError):
        obj.loss(torch.zeros(3))
    with pytest.raises(ValueError):
        obj.mvp("laplacian", torch.zeros(obj.num_params))


def test_subset_is_fixed_and_seeded():
    a, b, c = subset_indices(100, 10, 0), subset_indices(100, 10, 0), subset_indices(100, 10, 1)
    assert torch.equal(a, b) and not torch.equal(a, c) and len(set(a.tolist())) == 10
    assert torch.equal(subset_indices(5, None), torch.arange(5)) and torch.equal(subset_indices(5, 9), torch.arange(5))


@pytest.mark.ddp
def test_two_gloo_processes_equal_single_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = [str(ROOT / "tests" / "ddp_objective_worker.py")]
    single = subprocess.run([sys.executable, *worker, str(tmp_path / "s.json")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *worker, str(tmp_path / "d.json")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    s, d = json.loads((tmp_path / "s.json").read_text()), json.loads((tmp_path / "d.json").read_text())
    assert d["world_size"] == 2 and s["world_size"] == 1
    for key in ("loss", "acc", "grad", "hv", "ggn_v", "fisher_v", "eigenvalues", "trace"):
        np.testing.assert_allclose(d[key], s[key], rtol=1e-10, atol=1e-12, err_msg=key)
    for key in ("loss", "hv", "fisher_v"):  # a stream sharded by batches equals the in-memory data
        np.testing.assert_allclose(d[f"stream_{key}"], s[key], rtol=1e-10, atol=1e-12, err_msg=key)
    assert d["stream_samples"] == s["stream_samples"] == 41


BUILTIN = [CASES[i] for i in (1, 4, 7, 12, 14, 16, 18)]  # one small configuration per architecture


@pytest.mark.parametrize("case", BUILTIN, ids=[c[0] for c in BUILTIN])
def test_every_builtin_architecture(case):
    """Reverse, forward and cached HVPs agree on each architecture; a measure leaves it untouched."""
    name, kwargs = case
    torch.manual_seed(0)
    model = build_model(name, **kwargs).double()
    x, y = make_batch(kwargs, n=5)
    x = x.double() if x.is_floating_point() else x
    before = snapshot(model)
    task = task_of(name, kwargs)
    v = torch.randn(sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    hv = {mode: Objective(model, x, y, task=task, batch_size=2, hvp_mode=mode, cache_graph=cache).hvp(v)
          for mode, cache in (("reverse", False), ("forward", False), ("auto", True))}
    scale = float(hv["reverse"].norm())
    for mode in ("forward", "auto"):
        torch.testing.assert_close(hv[mode], hv["reverse"], rtol=1e-9, atol=1e-11 * scale)
    obj = Objective(model, x, y, task=task, batch_size=2)
    assert lanczos(obj, 1, tol=1e-8).converged
    assert np.isfinite(obj.evaluate_many(obj.params() + 0.01 * torch.randn(2, obj.num_params,
                                                                           dtype=torch.float64))["loss"]).all()
    assert_unchanged(model, before)
