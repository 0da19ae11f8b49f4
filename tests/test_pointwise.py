"""One point at a time in the module itself (landscape.objective.pointwise): equal to the functional evaluation
on an MLP, a CNN with BatchNorm, an LSTM, tied weights and a GPT-2; parameters restored and buffers untouched
bit-exactly; the first-layer decomposition exact where it applies and not used where it does not."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

from landscape.landscapes.directions import random_directions
from landscape.landscapes.surface import axis, compute_surface, grid_points
from landscape.objective import Objective, pointwise
from landscape.objective.loss import LossError
from tests.curvature_helpers import assert_unchanged, snapshot


def functional_losses(obj: Objective, W: torch.Tensor) -> np.ndarray:
    """Reference: each point through ``functional_call`` (the path used before the module was written)."""
    out = []
    with torch.no_grad():
        for w in W:
            rows = sum(obj._evaluate_chunk(w[None], b, i)[0] for i, b in obj.source.batches())
            out.append(float(rows[0] / rows[1]))
    return np.array(out)


def plane(obj: Objective, n: int = 5, seed: int = 1):
    dirs = random_directions(obj, 2, seed=seed)
    coords = np.stack(np.meshgrid(axis(-1, 1, n), axis(-0.5, 1, n), indexing="ij"), -1).reshape(-1, 2)
    base, D = obj.w0.double(), dirs.vectors
    return grid_points(base, D, coords, obj.dtype), (base, D, coords), dirs


class Tied(nn.Module):
    """Embedding and output layer sharing one weight (as GPT-2's wte / lm_head)."""

    def __init__(self, vocab: int = 11, dim: int = 6) -> None:
        super().__init__()
        self.emb, self.mix, self.out = nn.Embedding(vocab, dim), nn.Linear(dim, dim), nn.Linear(dim, vocab, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.mix(self.emb(ids))))


def cnn_bn() -> nn.Module:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Flatten(),
                        nn.Linear(3 * 6 * 6, 4))
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
    return net.eval()


class LSTMNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.lstm, self.head = nn.Embedding(9, 5), nn.LSTM(5, 7, batch_first=True), nn.Linear(7, 9)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.emb(ids))[0])


def seq_ce(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def make(kind: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, dict]:
    g = torch.Generator().manual_seed(3)
    if kind == "mlp":
        torch.manual_seed(0)
        return (nn.Sequential(nn.Linear(5, 8), nn.Tanh(), nn.Linear(8, 3)), torch.randn(30, 5, generator=g),
                torch.randint(0, 3, (30,), generator=g), {})
    if kind == "cnn-bn":
        return cnn_bn(), torch.randn(30, 1, 6, 6, generator=g), torch.randint(0, 4, (30,), generator=g), {}
    if kind == "lstm":
        return (LSTMNet(), torch.randint(0, 9, (20, 6), generator=g), torch.randint(0, 9, (20, 6), generator=g),
                {"loss": seq_ce})
    if kind == "tied":
        torch.manual_seed(0)
        return (Tied(), torch.randint(0, 11, (20, 5), generator=g), torch.randint(0, 11, (20, 5), generator=g),
                {"loss": seq_ce})
    raise KeyError(kind)


@pytest.mark.parametrize("kind", ["mlp", "cnn-bn", "lstm", "tied"])
@pytest.mark.parametrize("with_plane", [False, True])
def test_module_path_equals_functional_and_restores(kind, with_plane):
    model, x, y, kw = make(kind)
    obj = Objective(model, x, y, batch_size=7, **kw)
    W, pl, _ = plane(obj)
    before = snapshot(model)
    versions = [b._version for b in model.buffers()]
    assert pointwise.supported(obj)
    got = obj.evaluate_many(W, chunk_size=1, plane=pl if with_plane else None)["loss"]
    np.testing.assert_allclose(got, functional_losses(obj, W), rtol=2e-6, atol=1e-7)
    assert_unchanged(model, before)
    assert [b._version for b in model.buffers()] == versions  # buffers never written
    assert not any("forward" in m.__dict__ for m in model.modules())
    served = getattr(obj, "_first_layers", None)
    if with_plane and kind in ("mlp", "cnn-bn"):
        assert served is not None and served.served > 0 and len(served.layers) == 1  # only the first layer
    elif with_plane:
        assert served is None or served.served == 0  # an embedding comes first: nothing to serve


def test_tied_weight_moves_both_uses():
    model, x, y, kw = make("tied")
    obj = Objective(model, x, y, batch_size=7, **kw)
    assert "out.weight" not in obj.names  # one tensor, one name
    W, _, _ = plane(obj)
    got = obj.evaluate_many(W[-1:], chunk_size=1)["loss"]
    with obj.at(W[-1]) as m, torch.no_grad():
        ref = seq_ce(m(x), y).item()
    assert got[0] == pytest.approx(ref, rel=1e-6)
    untied = copy.deepcopy(model)
    untied.out.weight = nn.Parameter(untied.emb.weight.detach().clone())  # the output layer left at w0
    with torch.no_grad():
        named = dict(untied.named_parameters())
        for n, t in obj.unflatten(W[-1]).items():
            named[n].copy_(t)
        assert abs(seq_ce(untied(x), y).item() - ref) > 1e-4  # the tie matters at this point


def test_first_layer_products_exact_on_a_surface():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv1d(2, 4, 3, padding=2, padding_mode="circular"), nn.ReLU(), nn.Flatten(),
                          nn.Linear(4 * 10, 3))
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(25, 2, 8, generator=g), torch.randint(0, 3, (25,), generator=g)
    for params in (None, "weights"):  # the bias moved with the points, or fixed
        obj = Objective(model, x, y, batch_size=10, params=params)
        dirs = random_directions(obj, 2, seed=2, bias_bn="include")
        s = compute_surface({"train": obj}, dirs, [axis(-1, 1, 5), axis(-1, 1, 4)], chunk_size=1)
        assert obj._first_layers.served > 0
        W = grid_points(obj.w0.double(), dirs.vectors, np.stack(np.meshgrid(axis(-1, 1, 5), axis(-1, 1, 4),
                                                                            indexing="ij"), -1).reshape(-1, 2),
                        obj.dtype)
        np.testing.assert_allclose(s["train_loss"].reshape(-1), functional_losses(obj, W), rtol=2e-6)


class Scaled(nn.Module):
    """The first Linear sees ``2 x``, not the raw input: no products may be used."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a, self.b = nn.Linear(5, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(2 * x)))


class InPlace(nn.Module):
    """Modifies its input in place before the first layer (the data changes each pass: no products kept)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.a = nn.Linear(5, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.a(x.mul_(1.0))


@pytest.mark.parametrize("make_model", [Scaled, InPlace, "hooked"])
def test_first_layer_falls_back_where_not_exact(make_model):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(20, 5, generator=g), torch.randint(0, 3, (20,), generator=g)
    if make_model == "hooked":
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 3))
        model[0].register_forward_hook(lambda m, i, o: o * 2)
    else:
        model = make_model()
    obj = Objective(model, x, y, batch_size=8)
    W, pl, _ = plane(obj)
    got = obj.evaluate_many(W, chunk_size=1, plane=pl)["loss"]
    np.testing.assert_allclose(got, functional_losses(obj, W), rtol=2e-6)
    first = getattr(obj, "_first_layers", None)
    if make_model is InPlace:  # products only while the input's version is the one they were made from
        assert first.served == len(first.products)  # each product used once: at the first point
    else:
        assert first is None or first.served == 0


def test_plane_must_match_the_points():
    model, x, y, _ = make("mlp")
    obj = Objective(model, x, y, batch_size=7)
    W, (base, D, coords), _ = plane(obj)
    before = snapshot(model)
    with pytest.raises(ValueError, match="not base"):
        obj.evaluate_many(W, chunk_size=1, plane=(base, D, coords[::-1].copy()))
    assert_unchanged(model, before)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_restored_after_an_error():
    model, x, y, _ = make("mlp")
    calls = {"n": 0}

    def loss_fn(model, batch):
        calls["n"] += 1
        if calls["n"] > 3:
            raise RuntimeError("boom")
        out = model(batch[0])
        return nn.functional.cross_entropy(out, batch[1], reduction="sum"), len(batch[1])

    obj = Objective(model, x, y, loss=loss_fn, batch_size=7)
    W, pl, _ = plane(obj)
    before = snapshot(model)
    with pytest.raises(LossError, match="RuntimeError: boom"):  # the first pass: a one-line error, batch named
        obj.evaluate_many(W, chunk_size=1, plane=pl)
    assert_unchanged(model, before)
    assert not any("forward" in m.__dict__ for m in model.modules())


def test_other_dtype_uses_the_functional_path():
    model, x, y, _ = make("mlp")
    obj = Objective(model, x, y, batch_size=7, dtype=torch.float64)  # a float32 model evaluated in float64
    assert not pointwise.supported(obj)
    W, pl, _ = plane(obj)
    before = snapshot(model)
    got = obj.evaluate_many(W, chunk_size=1, plane=pl)["loss"]
    np.testing.assert_allclose(got, functional_losses(obj, W), rtol=1e-12)
    assert_unchanged(model, before)


def test_gpt2_tied_embedding_equals_functional():
    pytest.importorskip("transformers")
    from tests.hf_models import tiny_gpt2, token_rows

    model = tiny_gpt2()
    ids = token_rows(12)
    data = [{"input_ids": ids[i:i + 4], "labels": ids[i:i + 4]} for i in range(0, 12, 4)]

    def lm_loss(model, batch):
        out = model(**batch)
        n = batch["labels"][:, 1:].numel()
        return out.loss * n, n

    obj = Objective(model, data, loss=lm_loss)
    assert pointwise.supported(obj) and "lm_head.weight" not in obj.names
    W, pl, _ = plane(obj, n=3)
    before = snapshot(model)
    got = obj.evaluate_many(W, chunk_size=1, plane=pl)["loss"]
    np.testing.assert_allclose(got, functional_losses(obj, W), rtol=2e-6)
    assert_unchanged(model, before)


def test_surface_point_by_point_matches_chunks():
    model, x, y, _ = make("cnn-bn")
    obj = Objective(model, x, y, batch_size=7)
    dirs = random_directions(obj, 2, seed=0)
    axes = [axis(-1, 1, 9), axis(-1, 1, 8)]  # 72 points: two runs of up to 64
    one = compute_surface({"train": obj}, dirs, axes, chunk_size=1)
    four = compute_surface({"train": Objective(model, x, y, batch_size=7)}, dirs, axes, chunk_size=4)
    np.testing.assert_allclose(one["train_loss"], four["train_loss"], rtol=2e-6)
    np.testing.assert_array_equal(one["train_acc"], four["train_acc"])


def test_point_by_point_surface_resumes_to_the_same_numbers(tmp_path):
    model, x, y, _ = make("mlp")
    obj = Objective(model, x, y, batch_size=7)
    dirs = random_directions(obj, 2, seed=0)
    axes = [axis(-1, 1, 10), axis(-1, 1, 9)]  # 90 points: runs of 64 and 26

    class Stop(Exception):
        pass

    def stop(surface):
        raise Stop

    with pytest.raises(Stop):
        compute_surface({"train": obj}, dirs, axes, chunk_size=1, path=tmp_path / "s.npz", on_chunk=stop)
    resumed = compute_surface({"train": Objective(model, x, y, batch_size=7)}, dirs, axes, chunk_size=1,
                              path=tmp_path / "s.npz")
    assert resumed.meta["runtime"]["points_computed"] == 26
    full = compute_surface({"train": Objective(model, x, y, batch_size=7)}, dirs, axes, chunk_size=1)
    np.testing.assert_array_equal(resumed["train_loss"], full["train_loss"])
