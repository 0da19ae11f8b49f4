"""Rerouted double backward (``landscape.objective.double_backward``). Convolutions of data: the products equal
the dense float64 Hessian, Gauss-Newton and Fisher on conv nets of every convolution option, and the unused
input gradient is really skipped. Weight normalization: products equal finite differences of the gradient
(PyTorch's own double backward of ``torch._weight_norm`` does not). Recurrent layers: the unrolled ones equal
PyTorch's, and products equal finite differences in both modes."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
from torch.nn.utils.parametrizations import weight_norm

from landscape.objective import Objective
from landscape.objective import double_backward
from landscape.objective.double_backward import _DataConv, rerouted, reroutes
from landscape.objective.double_backward import unrolled_recurrent as unrolled
from tests.curvature_helpers import dense_hessian, full_loss

CASES = {  # name: (first layer, input shape)
    "conv1d": (lambda: nn.Conv1d(2, 3, 3, padding=1), (2, 7)),
    "conv2d-stride-groups": (lambda: nn.Conv2d(2, 4, 3, stride=2, padding=1, groups=2), (2, 6, 6)),
    "conv2d-dilation-nobias": (lambda: nn.Conv2d(1, 3, 3, dilation=2, bias=False), (1, 7, 7)),
    "conv2d-circular": (lambda: nn.Conv2d(2, 3, 3, padding=1, padding_mode="circular"), (2, 5, 5)),
    "conv2d-same": (lambda: nn.Conv2d(2, 3, 3, padding="same"), (2, 5, 5)),  # string padding: not routed
    "conv3d": (lambda: nn.Conv3d(1, 2, 2, stride=(1, 2, 1)), (1, 3, 4, 3)),
}


def conv_net(name: str, seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    first, shape = CASES[name]
    layer = first()
    d = len(shape) - 1
    second = (nn.Conv1d, nn.Conv2d, nn.Conv3d)[d - 1](layer.out_channels, 2, 1)  # its input needs a gradient
    with torch.no_grad():
        out = second(layer(torch.zeros(1, *shape)))
    model = nn.Sequential(layer, nn.Tanh(), second, nn.Flatten(), nn.Linear(out.numel(), 3)).double()
    x = torch.randn(10, *shape, dtype=torch.float64)
    return model, x, torch.randint(0, 3, (10,))


@pytest.mark.parametrize("name", list(CASES))
def test_hessian_equals_dense(name):
    model, x, y = conv_net(name)
    H = dense_hessian(model, x, y)
    obj = Objective(model, x, y, batch_size=4)
    assert obj._reroutes == {"convolutions"}
    V = torch.randn(3, obj.num_params, dtype=torch.float64)
    torch.testing.assert_close(obj.hvp(V), V @ H, rtol=1e-10, atol=1e-12)  # on the kept graphs
    w0, f = full_loss(model, x, y)
    w = w0 + 1e-3
    Hw = torch.autograd.functional.hessian(f, w)
    torch.testing.assert_close(obj.hvp(V[0], w=w), Hw @ V[0], rtol=1e-10, atol=1e-12)  # built per product


@pytest.mark.parametrize("name", ["conv2d-stride-groups", "conv3d"])
@pytest.mark.parametrize("kind", ["ggn", "fisher"])
def test_ggn_and_fisher_unchanged(name, kind):
    model, x, y = conv_net(name)
    V = torch.randn(2, sum(p.numel() for p in model.parameters()), dtype=torch.float64)
    routed = Objective(model, x, y, batch_size=4)
    plain = Objective(model, x, y, batch_size=4)
    plain._reroutes = frozenset()
    torch.testing.assert_close(routed.mvp(kind, V), plain.mvp(kind, V), rtol=1e-12, atol=1e-14)


def test_routes_only_data_convolutions():
    """The first convolution (input without gradient) becomes a ``_DataConv``; the second, whose input
    needs a gradient, and string padding stay PyTorch's; outside the context nothing changes."""
    model, x, _ = conv_net("conv2d-stride-groups")
    used = []
    real = _DataConv.apply

    def spy(*args):
        used.append(args[1].shape)
        return real(*args)

    _DataConv.apply = spy
    try:
        with torch.enable_grad(), rerouted({"convolutions"}):
            out = model(x)
        assert used == [model[0].weight.shape]
        assert type(out.grad_fn).__name__ == "AddmmBackward0"
        model(x)  # outside: not routed
        assert len(used) == 1
        same, x_same, _ = conv_net("conv2d-same")
        with torch.enable_grad(), rerouted({"convolutions"}):
            same(x_same)
        with torch.no_grad(), rerouted({"convolutions"}):  # no graph: nothing to route
            model(x)
        assert len(used) == 1
    finally:
        _DataConv.apply = real


def test_skips_the_transposed_convolution():
    """The double backward of the routed first layer runs no transposed convolution of the batch (what
    PyTorch's convolution double backward computes for the input's unused gradient)."""
    torch.manual_seed(0)
    conv = nn.Conv2d(1, 4, 3, padding=1)
    x = torch.randn(8, 1, 6, 6)

    def second_backward_convs(routed: bool) -> list:
        with rerouted({"convolutions"} if routed else set()):
            g = torch.autograd.grad(conv(x).tanh().sum(), conv.weight, create_graph=True)[0]
        with torch.profiler.profile(record_shapes=True) as prof:
            torch.autograd.grad(g, conv.weight, torch.ones_like(g))
        return [e.input_shapes[0] for e in prof.events() if e.name == "aten::convolution"]

    assert [8, 4, 6, 6] in second_backward_convs(False)  # PyTorch: conv_transpose(g_y, V) of the whole batch
    assert second_backward_convs(True) == [[8, 1, 6, 6]]  # routed: only conv(x, V)


def test_batched_block_equals_loop():
    model, x, y = conv_net("conv2d-dilation-nobias")
    obj = Objective(model, x, y, batch_size=4)
    V = torch.randn(5, obj.num_params, dtype=torch.float64)
    block = obj.hvp(V)
    assert obj._mode_chosen["cached"] == "batched"
    torch.testing.assert_close(block, torch.stack([obj.hvp(v) for v in V]), rtol=1e-12, atol=1e-14)


def test_reroutes():
    assert reroutes(conv_net("conv1d")[0]) == {"convolutions"}
    assert reroutes(nn.Sequential(nn.Linear(2, 2))) == set()
    assert reroutes(nn.Sequential(weight_norm(nn.Linear(2, 2)))) == {"weight_norm"}
    with pytest.warns(FutureWarning):
        old = torch.nn.utils.weight_norm(nn.Conv1d(1, 2, 2))
    assert reroutes(old) == {"convolutions", "weight_norm"}


WEIGHT_NORMED = {  # name: (model, input shape)
    "linear-dim0": (lambda: nn.Sequential(weight_norm(nn.Linear(4, 5)), nn.Tanh(), nn.Linear(5, 3)), (4,)),
    "linear-dim1": (lambda: nn.Sequential(weight_norm(nn.Linear(4, 5), dim=1), nn.Tanh(), nn.Linear(5, 3)), (4,)),
    "conv-first": (lambda: nn.Sequential(weight_norm(nn.Conv1d(2, 3, 3, padding=1)), nn.Tanh(), nn.Flatten(),
                                         nn.Linear(21, 3)), (2, 7)),
    "old-hook": (lambda: nn.Sequential(nn.Linear(4, 5), nn.Tanh(), torch.nn.utils.weight_norm(nn.Linear(5, 3))),
                 (4,)),
}


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
@pytest.mark.parametrize("name", list(WEIGHT_NORMED))
@pytest.mark.parametrize("mode", ["auto", "forward"])
def test_weight_norm_products_equal_finite_differences(name, mode):
    """Hessian-vector products of weight-normalized models (both modes; PyTorch has no forward-mode rule
    for ``torch._weight_norm``) against central differences of the exact gradient, at the checkpoint and
    away from it."""
    torch.manual_seed(0)
    build, shape = WEIGHT_NORMED[name]
    model = build().double()
    x, y = torch.randn(12, *shape, dtype=torch.float64), torch.randint(0, 3, (12,))
    obj = Objective(model, x, y, batch_size=5, hvp_mode=mode)
    assert "weight_norm" in obj._reroutes
    V = torch.randn(2, obj.num_params, dtype=torch.float64)
    for w in (obj.w0, obj.w0 + 0.05 * torch.randn(obj.num_params, dtype=torch.float64)):
        at = None if w is obj.w0 else w
        eps = 1e-6
        fd = torch.stack([(obj.grad(w + eps * v) - obj.grad(w - eps * v)) / (2 * eps) for v in V])
        torch.testing.assert_close(obj.hvp(V, w=at), fd, rtol=1e-6, atol=1e-7)


def test_gnr_step_hvp_on_weight_norm():
    """The training closure's exact ``H v`` (GNR) reroutes weight normalization too."""
    from optimizers.closure import StepClosure

    torch.manual_seed(0)
    model = WEIGHT_NORMED["linear-dim0"][0]().double()
    x, y = torch.randn(12, 4, dtype=torch.float64), torch.randint(0, 3, (12,))
    closure = StepClosure(model, "classification")
    closure.set_batch(x, y)
    params = [p for p in model.parameters()]
    v = [torch.randn_like(p) for p in params]
    _, _, hv = closure.gradient_and_hvp(v, update_bn=False)
    obj = Objective(model, x, y, batch_size=12)
    flat_v = torch.cat([t.reshape(-1) for t in v])
    eps = 1e-6
    fd = (obj.grad(obj.w0 + eps * flat_v) - obj.grad(obj.w0 - eps * flat_v)) / (2 * eps)
    torch.testing.assert_close(torch.cat([t.reshape(-1) for t in hv]), fd, rtol=1e-6, atol=1e-7)


def test_wav2vec2_products_exact():
    """A HuggingFace wav2vec2 (raw audio through convolutions, a weight-normalized positional convolution):
    its Hessian-vector product against finite differences of the gradient, in float64. PyTorch's own double
    backward is off by ~2e-4 here (measured), the rerouted one by rounding."""
    transformers = pytest.importorskip("transformers")
    transformers.utils.logging.set_verbosity_error()
    torch.manual_seed(0)
    cfg = transformers.Wav2Vec2Config(
        hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, conv_dim=(8, 8),
        conv_stride=(5, 2), conv_kernel=(10, 3), num_conv_pos_embeddings=4, num_conv_pos_embedding_groups=2,
        num_labels=3, attn_implementation="eager", classifier_proj_size=8, mask_time_prob=0.0, layerdrop=0.0)
    model = transformers.Wav2Vec2ForSequenceClassification(cfg).double().eval()
    x, y = torch.randn(6, 200, dtype=torch.float64), torch.randint(0, 3, (6,))
    obj = Objective(model, x, y, batch_size=3)
    assert obj._reroutes == {"convolutions", "weight_norm"}
    v = torch.randn(obj.num_params, dtype=torch.float64)
    eps = 1e-6
    fd = (obj.grad(obj.w0 + eps * v) - obj.grad(obj.w0 - eps * v)) / (2 * eps)
    assert float((obj.hvp(v) - fd).abs().max() / fd.abs().max()) < 1e-8


RECURRENT = [(nn.LSTM, dict()), (nn.LSTM, dict(num_layers=2, batch_first=True)), (nn.LSTM, dict(bidirectional=True)),
             (nn.LSTM, dict(bias=False)),
             (nn.LSTM, dict(num_layers=2, bidirectional=True, proj_size=2, batch_first=True)),
             (nn.GRU, dict(num_layers=2, bidirectional=True)), (nn.GRU, dict(bias=False, batch_first=True)),
             (nn.RNN, dict(num_layers=2, bidirectional=True)), (nn.RNN, dict(nonlinearity="relu", batch_first=True))]


def _name(a: object) -> str:
    return a.__name__ if isinstance(a, type) else "-".join(f"{k}={v}" for k, v in a.items())


@pytest.mark.parametrize("cell, kw", RECURRENT, ids=_name)
def test_unrolled_equals_pytorch(cell, kw, monkeypatch):
    """The unrolled layer gives ``nn.LSTM``'s / ``GRU``'s / ``RNN``'s output and final states, from zero and
    from given states."""
    calls = []
    monkeypatch.setattr(double_backward, "unrolled_recurrent", lambda *a: calls.append(1) or unrolled(*a))
    torch.manual_seed(0)
    layer = cell(3, 4, **kw).double().eval()
    x = torch.randn(2, 5, 3, dtype=torch.float64) if kw.get("batch_first") else torch.randn(5, 2, 3,
                                                                                           dtype=torch.float64)
    states = (1 + kw.get("bidirectional", False)) * kw.get("num_layers", 1)
    h0 = torch.randn(states, 2, kw.get("proj_size", 0) or 4, dtype=torch.float64)
    hx = (h0, torch.randn(states, 2, 4, dtype=torch.float64)) if cell is nn.LSTM else h0
    for given in (None, hx):
        want = layer(x, given)
        with torch.enable_grad(), rerouted({"recurrent"}):
            got = layer(x, given)
        assert len(calls) == (1 if given is None else 2)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=lambda c: c.__name__)
def test_unrolled_inter_layer_dropout(cell, monkeypatch):
    """Training-mode dropout between layers is unrolled too: p = 1 zeroes the second layer's input in both
    implementations (deterministic, whatever the masks); p = 0.5 differs from eval mode."""
    calls = []
    monkeypatch.setattr(double_backward, "unrolled_recurrent", lambda *a: calls.append(1) or unrolled(*a))
    torch.manual_seed(0)
    x = torch.randn(5, 2, 3, dtype=torch.float64)
    for p in (1.0, 0.5):
        layer = cell(3, 4, num_layers=2, dropout=p).double().train()
        with torch.enable_grad(), rerouted({"recurrent"}):
            got = layer(x)[0]
        want = layer(x)[0] if p == 1.0 else layer.eval()(x)[0]
        assert torch.allclose(got, want, rtol=1e-12, atol=1e-12) == (p == 1.0)
    assert len(calls) == 2


class _Tagger(nn.Module):
    """Embedding -> 2-layer bidirectional recurrent layer -> per-token classes (third-party style)."""

    def __init__(self, cell: type) -> None:
        super().__init__()
        self.embed = nn.Embedding(11, 4)
        self.rnn = cell(4, 3, num_layers=2, bidirectional=True, batch_first=True)
        self.head = nn.Linear(6, 5)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.head(self.rnn(self.embed(tokens))[0])


@pytest.mark.parametrize("cell", [nn.LSTM, nn.GRU, nn.RNN], ids=lambda c: c.__name__)
@pytest.mark.parametrize("mode", ["auto", "forward"])
def test_recurrent_products_equal_finite_differences(cell, mode):
    """Recurrent models in both product modes (PyTorch's CPU LSTM has no forward-mode rule in float32):
    float64 products against central differences of the gradient; float32 products agree with float64."""
    torch.manual_seed(0)
    model = _Tagger(cell)
    x, y = torch.randint(0, 11, (8, 6)), torch.randint(0, 5, (8, 6))
    obj32 = Objective(model, x, y, task="language_model", batch_size=3, hvp_mode=mode)
    assert obj32._reroutes == {"recurrent"}
    obj = Objective(model, x, y, task="language_model", batch_size=3, hvp_mode=mode, dtype=torch.float64)
    v = torch.randn(obj.num_params, dtype=torch.float64)
    eps = 1e-6
    fd = (obj.grad(obj.w0 + eps * v) - obj.grad(obj.w0 - eps * v)) / (2 * eps)
    torch.testing.assert_close(obj.hvp(v), fd, rtol=1e-6, atol=1e-8)
    torch.testing.assert_close(obj32.hvp(v.float()).double(), fd, rtol=1e-3, atol=1e-4)


def test_packed_lstm_runs_as_is():
    """A packed sequence goes to PyTorch's own LSTM (the products stay right)."""
    from torch.nn.utils.rnn import pack_padded_sequence

    class Packed(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lstm, self.head = nn.LSTM(2, 3, batch_first=True), nn.Linear(3, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            _, (h, _) = self.lstm(pack_padded_sequence(x, [4, 3, 3, 2], batch_first=True))
            return self.head(h[-1])

    torch.manual_seed(0)
    model = Packed().double()
    x, y = torch.randn(4, 4, 2, dtype=torch.float64), torch.randint(0, 2, (4,))
    obj = Objective(model, x, y, batch_size=4)
    torch.testing.assert_close(obj.hvp(torch.eye(obj.num_params, dtype=torch.float64)), dense_hessian(model, x, y),
                               rtol=1e-9, atol=1e-11)


class _Bagged(nn.Module):
    """Token bags (2-D, or 1-D with offsets) through an embedding of each kind, then a linear head."""

    def __init__(self, mode: str, padding_idx: int | None = None, sparse: bool = False) -> None:
        super().__init__()
        self.bag = nn.EmbeddingBag(9, 3, mode=mode, padding_idx=padding_idx)
        self.embed = nn.Embedding(9, 3, sparse=sparse)
        self.head = nn.Linear(3, 4)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        flat, offsets = tokens.reshape(-1), torch.arange(0, tokens.numel(), tokens.shape[1])
        return self.head(torch.tanh(self.bag(tokens) + self.bag(flat, offsets) + self.embed(tokens).mean(1)))


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_bag_rerouted_equals_pytorch(mode):
    """The composite bag (2-D input, offsets, include_last_offset, padding, per-sample weights) gives PyTorch's
    values exactly."""
    torch.manual_seed(0)
    for pad in (None, 2):
        bag = nn.EmbeddingBag(10, 4, mode=mode, padding_idx=pad).double()
        x2, x1, off = torch.randint(0, 10, (5, 3)), torch.randint(0, 10, (9,)), torch.tensor([0, 2, 2, 5])
        for args in ((x2,), (x1, off)):
            torch.testing.assert_close(double_backward._embedding_bag(*args[:1], bag.weight, *args[1:], mode=mode,
                                                                      padding_idx=pad), bag(*args), rtol=0, atol=0)
        if mode == "sum":
            psw = torch.rand(9, dtype=torch.float64)
            torch.testing.assert_close(double_backward._embedding_bag(x1, bag.weight, off, per_sample_weights=psw,
                                                                      mode=mode, padding_idx=pad),
                                       bag(x1, off, per_sample_weights=psw), rtol=0, atol=0)
    last = nn.EmbeddingBag(10, 4, mode=mode, include_last_offset=True).double()
    off = torch.tensor([0, 2, 2, 5, 9])
    torch.testing.assert_close(double_backward._embedding_bag(x1, last.weight, off, mode=mode,
                                                              include_last_offset=True), last(x1, off), rtol=0, atol=0)


@pytest.mark.parametrize("mode", ["sum", "mean", "max"])
def test_embedding_products_equal_finite_differences_of_pytorch_gradient(mode):
    """``nn.EmbeddingBag`` has no double backward and a sparse ``nn.Embedding`` a sparse gradient: rerouted, the
    float64 products equal central differences of PyTorch's own (first-order) gradient of the same model."""
    torch.manual_seed(0)
    model = _Bagged(mode, padding_idx=1, sparse=True).double()
    x, y = torch.randint(0, 9, (10, 4)), torch.randint(0, 4, (10,))
    obj = Objective(model, x, y, batch_size=4)
    assert obj._reroutes == {"embeddings"}

    def pytorch_grad(w: torch.Tensor) -> torch.Tensor:
        ref = _Bagged(mode, padding_idx=1).double()
        torch.nn.utils.vector_to_parameters(w, ref.parameters())
        nn.functional.cross_entropy(ref(x), y).backward()
        return torch.cat([p.grad.reshape(-1) for p in ref.parameters()])

    v = torch.randn(obj.num_params, dtype=torch.float64)
    eps = 1e-6
    fd = (pytorch_grad(obj.w0 + eps * v) - pytorch_grad(obj.w0 - eps * v)) / (2 * eps)
    torch.testing.assert_close(obj.grad(), pytorch_grad(obj.w0), rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(obj.hvp(v), fd, rtol=1e-6, atol=1e-8)


def test_embedding_max_norm_leaves_the_weight_and_gives_pytorch_values():
    """``max_norm`` renormalizes rows in place in PyTorch's forward; rerouted, the objective's point (and the
    model) stay as they were, the loss is PyTorch's, and products equal differences of the gradient."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(9, 3, max_norm=0.5), nn.Flatten(), nn.Linear(12, 4)).double()
    with torch.no_grad():
        model[0].weight.mul_(3.0)  # rows beyond max_norm
    before = {k: t.clone() for k, t in model.state_dict().items()}
    x, y = torch.randint(0, 9, (10, 4)), torch.randint(0, 4, (10,))
    obj = Objective(model, x, y, batch_size=4)
    w0 = obj.w0.clone()
    loss = obj.loss()
    v = torch.randn(obj.num_params, dtype=torch.float64)
    eps = 1e-6
    fd = (obj.grad(obj.w0 + eps * v) - obj.grad(obj.w0 - eps * v)) / (2 * eps)
    torch.testing.assert_close(obj.hvp(v), fd, rtol=1e-6, atol=1e-8)
    assert torch.equal(obj.w0, w0) and all(torch.equal(t, before[k]) for k, t in model.state_dict().items())
    copy = nn.Sequential(nn.Embedding(9, 3, max_norm=0.5), nn.Flatten(), nn.Linear(12, 4)).double()
    copy.load_state_dict(before)
    with torch.no_grad():
        assert loss == pytest.approx(float(nn.functional.cross_entropy(copy(x), y)), rel=1e-12)
