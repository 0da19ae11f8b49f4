"""The general objective: DataLoaders and re-iterables of batches, dict batches, criteria and loss_fn, against
the in-memory objective and dense float64 references; bounded memory while streaming; one-line loss errors."""
from __future__ import annotations

import gc
import weakref
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from landscape.objective import DataError, LossError, Objective
from landscape.objective.loss import BatchLoss, Criterion, as_loss
from landscape.objective.products import gradient_graph, graph_bytes
from tests.curvature_helpers import assert_unchanged, bn_net, dense_hessian, snapshot

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    return torch.randn(50, 5, generator=g, dtype=torch.float64), torch.randint(0, 3, (50,), generator=g)


class Keyed(nn.Module):
    """``forward(features=...)``: the network called with a dict batch's keywords."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class DictBatches(IterableDataset):
    """Dict batches of ``size`` rows (the last one shorter), yielded whole."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, size: int) -> None:
        self.x, self.y, self.size = x, y, size

    def __iter__(self):
        for i in range(0, len(self.x), self.size):
            yield {"features": self.x[i:i + self.size], "labels": self.y[i:i + self.size]}


def _assert_same(a: Objective, b: Objective, kinds=("hessian", "ggn", "fisher"), rtol=1e-12) -> None:
    torch.manual_seed(3)
    w = a.params() + 0.05 * torch.randn(a.num_params, dtype=torch.float64)
    V = torch.randn(3, a.num_params, dtype=torch.float64)
    assert a.loss(w) == pytest.approx(b.loss(w), rel=rtol)
    torch.testing.assert_close(a.grad(w), b.grad(w), rtol=rtol, atol=1e-14)
    for kind in kinds:
        torch.testing.assert_close(a.mvp(kind, V, w), b.mvp(kind, V, w), rtol=rtol, atol=1e-14)
    torch.testing.assert_close(a.hvp(V), b.hvp(V), rtol=rtol, atol=1e-14)  # at w0: the graph cache
    ea, eb = a.evaluate_many(w[None].repeat(3, 1)), b.evaluate_many(w[None].repeat(3, 1))
    torch.testing.assert_close(torch.as_tensor(ea["loss"]), torch.as_tensor(eb["loss"]), rtol=rtol, atol=0)
    assert a.num_samples == b.num_samples and a.total_count == b.total_count


@pytest.mark.parametrize("cache_memory", [None, 0])
def test_shuffling_dataloader_equals_in_memory(data, cache_memory):
    x, y = data
    model = bn_net()
    before = snapshot(model)
    mem = Objective(model, x, y, batch_size=7)
    loader = DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True)  # seeded per pass: same order each time
    stream = Objective(model, loader, loss="classification", cache_memory=cache_memory)
    state = torch.random.get_rng_state()
    stream.loss(), stream.grad()
    assert torch.equal(torch.random.get_rng_state(), state)  # the caller's random state untouched
    _assert_same(stream, mem)
    assert stream.source.cached is (cache_memory is None) and stream.source.num_batches == 8
    H = dense_hessian(model, x, y)
    torch.testing.assert_close(stream.hessian.to_dense(), H, rtol=1e-12, atol=1e-13)
    assert_unchanged(model, before)


def test_dict_batches_with_a_criterion_and_a_loss_fn(data):
    x, y = data
    net = bn_net(seed=2)
    mem = Objective(net, x, y, batch_size=10)
    loader = DataLoader(DictBatches(x, y, 9), batch_size=None)
    crit = Objective(Keyed(net), loader, loss=nn.CrossEntropyLoss())
    _assert_same(crit, mem)
    assert crit.evaluate()["acc"] == pytest.approx(mem.evaluate()["acc"])

    def loss_fn(model, batch):  # per-sample losses: the empirical Fisher works too
        return F.cross_entropy(model(batch["features"]), batch["labels"], reduction="none"), len(batch["labels"])

    full = Objective(Keyed(net), loader, loss=loss_fn)
    _assert_same(full, mem, kinds=("hessian", "fisher"))
    assert full.evaluate()["acc"] is None  # a loss_fn without a correct count gives no accuracy
    with pytest.raises(LossError, match="Gauss-Newton matrix needs the model output"):
        full.gvp(full.params())


def test_masked_loss_fn_weighs_by_its_count(data):
    """A loss_fn whose count is a masked number of targets: the mean is over the unmasked ones only."""
    x, y = data
    net = bn_net(seed=4)
    keep = torch.arange(50) % 3 != 0

    def masked(model, batch):
        xb, yb, mb = batch
        losses = F.cross_entropy(model(xb), yb, reduction="none")
        return (losses * mb).sum(), mb.sum()

    obj = Objective(net, [(x[i:i + 8], y[i:i + 8], keep[i:i + 8].double()) for i in range(0, 50, 8)], loss=masked)
    ref = Objective(net, x[keep], y[keep], batch_size=1000)
    assert obj.loss() == pytest.approx(ref.loss(), rel=1e-13)
    assert obj.total_count == int(keep.sum()) and obj.num_samples == 50
    v = torch.randn(obj.num_params, dtype=torch.float64)
    torch.testing.assert_close(obj.hvp(v), ref.hvp(v), rtol=1e-12, atol=1e-14)
    with pytest.raises(LossError, match="empirical Fisher"):
        obj.fvp(v)


def test_group_gradients_and_minibatches_of_a_stream(data):
    x, y = data
    net = bn_net(seed=5)
    mem = Objective(net, x, y, batch_size=16)
    stream = Objective(net, DataLoader(TensorDataset(x, y), batch_size=7), loss="classification")
    for size in (1, 4):
        a, b = torch.cat(list(mem.group_gradients(size))), torch.cat(list(stream.group_gradients(size)))
        assert a.shape == (50 // size, mem.num_params)
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)
    parts = stream.minibatches(6, limit=5)
    assert len(parts) == 5
    assert parts[1].loss() == pytest.approx(Objective(net, x[6:12], y[6:12]).loss(), rel=1e-13)  # stream order


def test_a_source_that_changes_between_passes_raises(data):
    x, y = data
    loader = DataLoader(TensorDataset(x, y), batch_size=7, shuffle=True,
                        generator=torch.Generator().manual_seed(1))  # its own generator moves on each pass
    obj = Objective(bn_net(), loader, cache_memory=0)
    obj.loss()
    with pytest.raises(DataError, match="differs from the first pass"):
        obj.loss()
    with pytest.raises(DataError, match="one-shot iterator"):
        Objective(bn_net(), iter([(x, y)]))


def test_loss_fn_is_told_from_a_criterion_by_its_signature(data):
    """``(m, batch)``, ``(anything: nn.Module, ...)`` and ``(anything, batch)`` are loss_fns; a loss_fn the
    signature does not reveal fails as a criterion with a one-line error that says how to pass it."""
    x, y = data
    net = bn_net(seed=3)
    ref = Objective(net, x, y, batch_size=10).loss()

    def short(m, b):
        return F.cross_entropy(m(b[0]), b[1], reduction="sum"), len(b[1])

    def annotated(f: nn.Module, b):
        return short(f, b)

    def named(f, batch):
        return short(f, batch)

    for fn in (short, annotated, named, lambda net, b: short(net, b)):
        assert isinstance(as_loss(fn), BatchLoss)
        assert Objective(net, x, y, loss=fn, batch_size=10).loss() == pytest.approx(ref, rel=1e-6)
    assert isinstance(as_loss(lambda output, target: F.cross_entropy(output, target)), Criterion)

    def hidden(f, b):
        return short(f, b)

    with pytest.raises(LossError, match=r"criterion .*failed: TypeError.*landscape\.BatchLoss") as e:
        Objective(net, x, y, loss=hidden, batch_size=10).loss()
    assert "\n" not in str(e.value)
    assert Objective(net, x, y, loss=BatchLoss(hidden), batch_size=10).loss() == pytest.approx(ref, rel=1e-6)


@pytest.mark.parametrize("result, message", [
    (lambda out, y: (F.cross_entropy(out, y, reduction="none")[:, None].repeat(1, 2), 1), "must be a scalar"),
    (lambda out, y: 3.0, "returned float"),
    (lambda out, y: (out.sum() * float("nan"), len(y)), "non-finite loss"),
    (lambda out, y: (F.cross_entropy(out, y), 0), "count 0"),
])
def test_bad_loss_fn_is_a_one_line_error_naming_the_batch(data, result, message):
    x, y = data
    net = bn_net()

    def loss_fn(model, batch):
        return result(model(batch[0]), batch[1])

    obj = Objective(net, [(x[:20], y[:20]), (x[20:], y[20:])], loss=loss_fn)
    with pytest.raises(LossError, match=message) as e:
        obj.loss_and_grad()
    assert "batch 0" in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("form", ["mean", "output with .loss", "per-sample"])
def test_loss_fn_may_return_a_mean_a_model_output_or_per_sample_losses(data, form):
    """What users' loss functions return (``model(**batch).loss``, a HuggingFace output, per-sample losses) is
    taken as it is: a mean counts the batch's rows, so uneven batches (20 and 30 rows) still give the full-data
    mean, gradient and Hessian of ``(sum, count)``; per-sample losses also give the empirical Fisher."""
    from types import SimpleNamespace

    x, y = data
    net = bn_net()

    def reference(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1], reduction="none"), len(batch[1])

    def loss_fn(model, batch):
        losses = F.cross_entropy(model(batch[0]), batch[1], reduction="none")
        return {"mean": losses.mean(), "output with .loss": SimpleNamespace(loss=losses.mean(), logits=None),
                "per-sample": losses}[form]

    batches = [(x[:20], y[:20]), (x[20:], y[20:])]
    kinds = ("hessian", "fisher") if form == "per-sample" else ("hessian",)
    _assert_same(Objective(net, batches, loss=loss_fn), Objective(net, batches, loss=reference), kinds=kinds,
                 rtol=1e-10)


def test_non_scalar_criterion_and_wrong_batches_are_one_line_errors(data):
    x, y = data
    with pytest.raises(LossError, match="batch 0: criterion .*not a scalar"):
        Objective(bn_net(), [(x, y)], loss=nn.CrossEntropyLoss(reduction="none")).loss()
    with pytest.raises(LossError, match=r"batch 0: the built-in classification loss needs \(inputs, target\)"):
        Objective(bn_net(), [(x, y, y)]).loss()


def test_sequence_logits_under_the_classification_default_are_a_one_line_error_with_the_fix():
    """A causal LM's ``(N, T, V)`` logits against ``(N, T)`` labels under the default classification loss: a
    one-line error that names both shapes and the two ways out; ``language_model`` then scores them."""
    emb = nn.Embedding(7, 7).double()
    x, y = torch.randint(7, (4, 5)), torch.randint(7, (4, 5))
    with pytest.raises(LossError, match=r"logits \(4, 5, 7\) against target \(4, 5\).*language_model") as e:
        Objective(emb, [{"input": x, "labels": y}]).loss()
    assert "\n" not in str(e.value)
    ref = F.cross_entropy(emb(x).reshape(-1, 7), y.reshape(-1)).item()
    assert Objective(emb, [{"input": x, "labels": y}], loss="language_model").loss() == pytest.approx(ref, rel=1e-12)


def test_task_loss_takes_dict_batches_and_model_outputs(data):
    """The built-in losses read dict batches (the target under ``labels``, the rest the model's keywords) and
    a HuggingFace-style output's ``logits``, as a criterion does."""
    x, y = data
    plain = Objective(bn_net(), x, y, batch_size=9)
    keyed = Objective(Keyed(bn_net()), DataLoader(DictBatches(x, y, 9), batch_size=None))
    wrapped = Objective(Logits(bn_net()), x, y, batch_size=9)
    for other in (keyed, wrapped):
        a, b = other.evaluate(), plain.evaluate()
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-12) and a["acc"] == b["acc"] is not None
        v = torch.randn(plain.num_params, dtype=torch.float64)
        torch.testing.assert_close(other.hvp(v), plain.hvp(v), rtol=1e-10, atol=1e-12)


class Logits(nn.Module):
    """The network's output in a ``ModelOutput``-like object with a ``logits`` attribute."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> Any:
        return SimpleNamespace(logits=self.net(x))


class Generated(IterableDataset):
    """``batches`` batches of ``rows`` random rows made on the fly (nothing held), each tracked by weakref."""

    def __init__(self, batches: int, rows: int, dim: int) -> None:
        self.batches, self.rows, self.dim = batches, rows, dim
        self.alive: weakref.WeakSet = weakref.WeakSet()

    def __iter__(self):
        g = torch.Generator().manual_seed(7)
        for _ in range(self.batches):
            x = torch.randn(self.rows, self.dim, generator=g, dtype=torch.float64)
            self.alive.add(x)
            yield x, torch.randint(0, 3, (self.rows,), generator=g)


def test_streaming_ten_times_the_graph_budget_keeps_memory_bounded():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 3)).double()
    stream = Generated(batches=40, rows=32, dim=64)
    batch = next(iter(Generated(1, 32, 64)))
    per_batch = graph_bytes(gradient_graph(Objective(net, [batch]), batch)[1])  # one batch's graph
    budget = 4 * per_batch  # the data is 10x the budget
    obj = Objective(net, DataLoader(stream, batch_size=None), graph_memory=budget, cache_memory=0)
    V = torch.randn(2, obj.num_params, dtype=torch.float64)
    first = obj.hvp(V)
    gc.collect()
    assert obj._graph_bytes <= budget and len(obj._graphs) == 4
    assert len(stream.alive) <= len(obj._graphs) + 1  # the cached graphs hold their inputs; nothing else stays
    assert not obj.source.cached
    torch.testing.assert_close(obj.hvp(V), first, rtol=1e-13, atol=1e-15)  # cached prefix + fresh rest
    xs, ys = zip(*Generated(40, 32, 64))
    ref = Objective(net, torch.cat(xs), torch.cat(ys), batch_size=32, cache_graph=False)
    torch.testing.assert_close(first, ref.hvp(V), rtol=1e-12, atol=1e-14)


def test_cached_block_products_batched_or_looped_agree(data):
    """The kept graph's second backward, one vector at a time or vmap-ed over the block: the same H V."""
    x, y = data
    net = bn_net(seed=6)
    H = dense_hessian(net, x, y)
    V = torch.randn(4, H.shape[0], dtype=torch.float64)
    for mode in ("loop", "batched", None):
        obj = Objective(net, x, y, batch_size=16)
        if mode is not None:
            obj._mode_chosen["cached"] = mode
        torch.testing.assert_close(obj.hvp(V), V @ H, rtol=1e-12, atol=1e-13)
        assert obj._mode_chosen["cached"] in ((mode,) if mode else ("loop", "batched"))


def test_cached_block_products_are_chosen_by_the_graph_not_a_timing(monkeypatch):
    """The kept graph's block products: vmap-ed where the graph's nodes save few elements on average (many small
    operations, as a recurrent net's steps), looped where they save many (wide layers, large batches), whatever
    a timing would say; exact either way."""
    import landscape.objective.core as core

    torch.manual_seed(0)
    nets = {"conv": nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(6, 3)).double(),
            "mlp": nn.Sequential(nn.Flatten(), nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()}
    x, y = torch.randn(10, 1, 5, dtype=torch.float64), torch.randint(0, 3, (10,))
    for limit, mode in ((10_000, "batched"), (1, "loop")):
        monkeypatch.setattr(core, "BATCHED_MAX_ELEMENTS_PER_NODE", limit)
        for net in nets.values():
            obj = Objective(net, x, y, batch_size=4)
            H = dense_hessian(net, x, y)
            V = torch.randn(3, obj.num_params, dtype=torch.float64)
            torch.testing.assert_close(obj.hvp(V), V @ H, rtol=1e-12, atol=1e-13)
            assert obj._mode_chosen["cached"] == mode
            torch.testing.assert_close(obj.hvp(V), V @ H, rtol=1e-12, atol=1e-13)
    monkeypatch.undo()
    lstm = nn.LSTM(3, 4, batch_first=True)
    steps = Objective(nn.Sequential(lstm, _First(), nn.Flatten(), nn.Linear(40, 2)), torch.randn(8, 10, 3),
                      torch.randint(0, 2, (8,)))
    wide = Objective(nn.Sequential(nn.Linear(64, 256), nn.Tanh(), nn.Linear(256, 2)), torch.randn(512, 64),
                     torch.randint(0, 2, (512,)))
    for obj, mode in ((steps, "batched"), (wide, "loop")):
        obj.hvp(torch.randn(2, obj.num_params))
        assert obj._mode_chosen["cached"] == mode
    tight = Objective(steps.model, torch.randn(8, 10, 3), torch.randint(0, 2, (8,)), graph_memory=10 ** 9)
    tight.hvp(torch.randn(1, tight.num_params))  # keeps the graph (it fits 1 GB)
    tight.graph_memory = graph_bytes(tight._graphs[0][1]) * tight.max_block - 1
    tight.hvp(torch.randn(2, tight.num_params))
    assert tight._mode_chosen["cached"] == "loop"  # a block of every intermediate would not fit


class _First(nn.Module):
    """The output of a recurrent layer's ``(output, state)``."""

    def forward(self, out: tuple) -> torch.Tensor:
        return out[0]


def test_out_of_memory_halves_the_chunk(data, monkeypatch):
    """An injected out-of-memory error for chunks of more than 3 points: evaluate_many halves the chunk
    (16 -> 8 -> 4 -> 2), keeps 2 from then on, and gives the same numbers; the chunk race stops below it."""
    x, y = data
    obj = Objective(bn_net(), x, y, batch_size=16)
    W = obj.params() + 0.1 * torch.randn(7, obj.num_params, dtype=torch.float64, generator=torch.Generator())
    ref = np.array([obj.loss(w) for w in W])
    real = Objective._evaluate_chunk

    def limited(self, chunk, *args, **kwargs):
        if len(chunk) > 3:
            raise torch.OutOfMemoryError("injected")
        return real(self, chunk, *args, **kwargs)

    monkeypatch.setattr(Objective, "_evaluate_chunk", limited)
    with pytest.warns(UserWarning, match="out of memory with 7 points per pass"):
        got = obj.evaluate_many(W, chunk_size=16)["loss"]
    np.testing.assert_allclose(got, ref, rtol=1e-13)
    assert obj._chunk_cap == 2
    fresh = Objective(bn_net(), x, y, batch_size=16)
    assert fresh.auto_chunk_size() == 1  # 4 points raise: the race stops at 1


def test_a_fisher_pass_first_leaves_the_loss_count_to_the_loss(data):
    """The empirical Fisher divides by rows; its pass must not be taken for the loss's total count (here two
    targets per row)."""
    x, y = data
    net = bn_net(seed=7)

    def doubled(model, batch):  # every row counts as two targets: the mean loss is half the row mean
        return F.cross_entropy(model(batch[0]), batch[1], reduction="none"), 2 * len(batch[1])

    obj = Objective(net, [(x[i:i + 9], y[i:i + 9]) for i in range(0, 50, 9)], loss=doubled)
    obj.fvp(obj.params())
    assert obj.total_count == 100 and obj.num_samples == 50
    assert obj.loss() == pytest.approx(Objective(net, x, y).loss() / 2, rel=1e-13)


def test_activation_estimate_counts_intermediates_no_module_returns():
    """The chunk cap's activation estimate sees an attention-score matrix computed inside ``forward`` (no
    module returns it): at least the scores and their softmax, at most a few times that."""
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.o = nn.Linear(4, 4), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scores = torch.softmax(self.q(x) @ x.transpose(1, 2), -1)
            return self.o((scores @ x).mean(1))

    x, y = torch.randn(8, 64, 4), torch.randint(0, 3, (8,))
    obj = Objective(Attention(), x, y, batch_size=8)
    scores = 8 * 64 * 64 * 4
    assert 2 * scores <= obj._activation_bytes(obj.source.first()) <= 4 * scores


def test_regression_sums_stay_on_the_objective_device():
    """Issue 20, crash 2: the per-point rows of a regression loss (no accuracy: zeros for correct/predictions)
    are made on the objective's device. The model and batch moved to ``meta`` after construction; one point
    and a vmap-ed chunk. A CPU ``torch.zeros(())`` stacked with the device loss raised here."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 2))
    obj = Objective(net, torch.randn(10, 3), torch.randn(10, 2), task="regression", batch_size=5)
    meta = torch.device("meta")
    obj.model.to(meta)
    obj.device, obj.w0 = meta, obj.w0.to(meta)
    batch = tuple(t.to(meta) for t in obj.source.first())
    for n in (1, 3):
        rows = obj._evaluate_chunk(obj.w0.expand(n, -1), batch, 0)
        assert rows.shape == (n, 4) and rows.device == meta


def test_compiled_model_is_analyzed_through_its_original_module(data):
    """``torch.compile``'s graphs have no double backward: the objective uses the wrapped module (same
    parameters), so a compiled model gives the products of the plain one."""
    x, y = data
    net = bn_net()
    compiled = torch.compile(net)
    obj, plain = Objective(compiled, x, y, batch_size=9), Objective(net, x, y, batch_size=9)
    assert obj.model is net and obj.names == plain.names
    v = torch.randn(plain.num_params, dtype=torch.float64)
    torch.testing.assert_close(obj.hvp(v), plain.hvp(v), rtol=0, atol=0)


def test_activation_bytes_do_not_depend_on_the_allocator():
    """The activations measured for chunk sizes and merged point batches are the same on every call (memory freed
    and reused within the forward made them vary by up to 20%, and with them the merged batches' last bits)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(16 * 16, 10))
    obj = Objective(net, torch.randn(512, 1, 8, 8), torch.randint(0, 10, (512,)))
    batch = obj.source.first()
    assert len({obj._activation_bytes(batch) for _ in range(6)}) == 1
