"""Gradient norms per tensor / module, full-data and averaged over mini-batches."""
from __future__ import annotations

import math

import pytest
import torch

from landscape.curvature.gradients import gradient_norms
from landscape.losses import loss_fn
from landscape.objective import Objective
from tests.curvature_helpers import assert_unchanged, bn_net, full_loss, snapshot
from tests.fixtures import blobs

# torch's forward-AD decompositions still call the deprecated torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def data():
    d = blobs(n_train=30)
    return d.x_train.double(), d.y_train


def test_full_gradient_norms(data):
    x, y = data
    model = bn_net()
    before = snapshot(model)
    w0, f = full_loss(model, x, y)
    (g,) = torch.autograd.grad(f(w0.requires_grad_()), w0)
    r = gradient_norms(Objective(model, x, y, batch_size=7))
    assert r.norm == pytest.approx(float(g.norm()), rel=1e-12) and r.strength == pytest.approx(
        float(g.norm()) / math.sqrt(len(g)), rel=1e-12)
    start = 0
    for name, p in model.named_parameters():
        part = g[start:start + p.numel()]
        start += p.numel()
        assert r.groups[name]["norm"] == pytest.approx(float(part.norm()), rel=1e-12, abs=1e-15)
        assert r.groups[name]["numel"] == p.numel()
    by_module = gradient_norms(Objective(model, x, y), by="module")
    assert set(by_module.groups) == {"0", "1", "4"}
    assert by_module.groups["0"]["norm"] == pytest.approx(
        math.hypot(r.groups["0.weight"]["norm"], r.groups["0.bias"]["norm"]), rel=1e-12)
    assert_unchanged(model, before)


@pytest.mark.parametrize("batch_size", [1, 4])
def test_mini_batch_gradient_norms(data, batch_size):
    x, y = data
    model = bn_net()
    before = snapshot(model)
    obj = Objective(model, x, y, batch_size=8)
    r = gradient_norms(obj, batch_size=batch_size)
    loss = loss_fn("classification")
    norms, first = [], []
    for i in range(0, len(x) - batch_size + 1, batch_size):  # a trailing partial batch is left out
        model.eval()
        model.zero_grad()
        loss(model(x[i:i + batch_size]), y[i:i + batch_size]).backward()
        grads = [p.grad.detach().clone() for p in model.parameters()]
        norms.append(float(torch.cat([t.reshape(-1) for t in grads]).norm()))
        first.append(float(grads[0].norm()))
    model.zero_grad(set_to_none=True)
    model.train()
    assert r.num_batches == len(norms) == len(x) // batch_size
    assert r.norm == pytest.approx(sum(norms) / len(norms), rel=1e-12)
    assert r.groups["0.weight"]["norm"] == pytest.approx(sum(first) / len(first), rel=1e-12)
    assert_unchanged(model, before)


def test_layer_groups_split_stacked_rnn_layers():
    from landscape.curvature.gradients import parameter_group
    from landscape.models import build_model

    assert [parameter_group(n, "layer") for n in ("lstm.weight_ih_l1", "lstm.bias_hh_l0_reverse", "gru.weight_hr_l2",
                                                  "fc.weight", "scale", "rnn.weight_ih_l0")] == [
        "lstm.l1", "lstm.l0_reverse", "gru.l2", "fc", "scale", "rnn.l0"]
    assert parameter_group("lstm.weight_ih_l1", "module") == "lstm"
    assert parameter_group("blocks.3.attn.qkv.weight", lambda n: n.split(".")[1]) == "3"
    with pytest.raises(ValueError, match="by must be"):
        parameter_group("fc.weight", "block")
    torch.manual_seed(0)
    model = build_model("lstm_lm", input_shape=[6], num_outputs=11, vocab_size=11, embed_dim=4, hidden=4,
                        num_layers=2).double()
    x = torch.randint(11, (10, 6))
    obj = Objective(model, x, torch.randint(11, (10, 6)), task="language_model")
    per_tensor = gradient_norms(obj, batch_size=1).groups
    r = gradient_norms(obj, batch_size=1, by="layer")
    assert list(r.groups) == ["embedding", "lstm.l0", "lstm.l1", "decoder"]
    assert r.groups["lstm.l1"]["numel"] == sum(per_tensor[f"lstm.{k}_l1"]["numel"]
                                               for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    full = gradient_norms(obj, by="layer").groups  # one full-data gradient: group norm = hypot of its tensors
    tensors = gradient_norms(obj).groups
    assert full["lstm.l0"]["norm"] == pytest.approx(math.hypot(
        *(tensors[f"lstm.{k}_l0"]["norm"] for k in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))), rel=1e-12)
