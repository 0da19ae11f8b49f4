"""Models, losses and data that are legitimate but unusual: padded targets, summed criteria, tuple targets, soft
labels, unused or tied parameters, modules that keep tensors or update buffers in their forward, the attention
fast path; and the one-line errors for data that cannot work."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import landscape
from landscape.curvature.trace import TRACE_METHODS
from landscape.objective import Objective
from landscape.objective.loss import LossError
from landscape.objective.sources import DataError


def mlp(inputs: int = 4, outputs: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(inputs, 5), nn.Tanh(), nn.Linear(5, outputs)).double()


class Tagger(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed, self.head = nn.Embedding(11, 4), nn.Linear(4, 11)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.head(torch.tanh(self.embed(input_ids)))


def test_padded_targets_weigh_nothing():
    """``-100`` targets (PyTorch's and HuggingFace's ignore index) are not counted: the full-data loss and
    gradient are the mean over the real tokens, under the built-in task and under ``nn.CrossEntropyLoss``."""
    torch.manual_seed(0)
    model = Tagger().double()
    ids = torch.randint(0, 11, (12, 6))
    y = torch.randint(0, 11, (12, 6))
    y[:5, 3:] = -100  # uneven padding, all in the first batches
    y[3] = -100  # a sequence with no target at all
    ref = F.cross_entropy(model(ids).flatten(0, 1), y.flatten())
    g_ref = torch.cat([g.reshape(-1) for g in torch.autograd.grad(ref, list(model.parameters()))])
    task = Objective(model, ids, y, loss="language_model", batch_size=4)
    criterion = Objective(model, [(ids[i:i + 4], y[i:i + 4]) for i in range(0, 12, 4)], loss=_TokenCE())
    for obj in (task, criterion):
        assert obj.loss() == pytest.approx(float(ref.detach()), rel=1e-12)
        torch.testing.assert_close(obj.grad(), g_ref, rtol=1e-10, atol=1e-12)
        assert obj.total_count == int((y != -100).sum())


class _TokenCE(nn.CrossEntropyLoss):
    """``nn.CrossEntropyLoss`` on ``(N, T, V)`` logits: a criterion with an ``ignore_index``."""

    def forward(self, out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().forward(out.flatten(0, 1), y.flatten())


def test_summed_criterion_and_tuple_targets_weigh_by_rows():
    model = mlp()
    x = torch.randn(20, 4, dtype=torch.float64)
    y = torch.randint(0, 3, (20,))
    mean = Objective(model, x, y, loss=nn.CrossEntropyLoss(), batch_size=8)
    summed = Objective(model, x, y, loss=nn.CrossEntropyLoss(reduction="sum"), batch_size=8)
    assert summed.loss() == pytest.approx(mean.loss(), rel=1e-12)
    v = torch.randn(mean.num_params, dtype=torch.float64)
    torch.testing.assert_close(summed.hvp(v), mean.hvp(v), rtol=1e-10, atol=1e-12)

    def pair_loss(out: torch.Tensor, target: tuple) -> torch.Tensor:
        return F.cross_entropy(out, target[0]) + F.mse_loss(out[:, 0], target[1])

    extra = torch.randn(20, dtype=torch.float64)
    batches = [(x[i:i + 8], (y[i:i + 8], extra[i:i + 8])) for i in range(0, 20, 8)]  # rows 8, 8, 4
    with torch.no_grad():
        expected = float(pair_loss(model(x), (y, extra)))
    assert Objective(model, batches, loss=pair_loss).loss() == pytest.approx(expected, rel=1e-12)


def test_soft_labels_have_a_loss_and_no_accuracy():
    model = mlp()
    x = torch.randn(6, 4, dtype=torch.float64)
    probs = torch.softmax(torch.randn(6, 3, dtype=torch.float64), 1)
    result = Objective(model, x, probs, loss="classification").evaluate()
    assert result["acc"] is None
    assert result["loss"] == pytest.approx(float(F.cross_entropy(model(x), probs).detach()), rel=1e-12)


def test_in_memory_dict_counts_tokens():
    torch.manual_seed(0)
    ids, y = torch.randint(0, 11, (6, 8)), torch.randint(0, 11, (6, 8))
    obj = Objective(Tagger(), {"input_ids": ids, "labels": y}, loss="language_model")
    assert obj.total_count == 48


def test_labels_equal_to_inputs_are_refused_under_the_language_model_task():
    """HuggingFace's convention (labels = input_ids, shifted inside the model's own loss) would score each token
    against itself under the built-in task."""
    ids = torch.randint(0, 11, (6, 8))
    labels = ids.clone()
    labels[:, :2] = -100
    with pytest.raises(LossError, match="labels equal input_ids"):
        Objective(Tagger(), [{"input_ids": ids, "labels": labels}], loss="language_model").loss()


def test_scoring_errors_are_one_line():
    torch.manual_seed(0)
    ids = torch.randint(0, 11, (6, 8))
    with pytest.raises(LossError, match="one output per target"):
        Objective(Tagger(), ids, ids.double(), loss="regression").loss()
    with pytest.raises(LossError, match="language-model logits"):
        Objective(Tagger(), ids, ids, loss=nn.CrossEntropyLoss()).loss()


def test_numpy_counts_are_numbers():
    model, x, y = mlp(), torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))

    def loss_fn(model, batch):
        return F.cross_entropy(model(batch[0]), batch[1], reduction="sum"), np.int64(len(batch[1]))

    assert Objective(model, x, y, loss=loss_fn).loss() == pytest.approx(float(F.cross_entropy(model(x), y).detach()))


def test_parameters_the_loss_never_uses_have_zero_curvature():
    class WithUnused(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body, self.unused = mlp(), nn.Linear(2, 2).double()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x)

    x, y = torch.randn(8, 4, dtype=torch.float64), torch.randint(0, 3, (8,))
    model = WithUnused()
    obj = Objective(model, x, y, params="^unused")
    v = torch.randn(obj.num_params, dtype=torch.float64)
    assert not obj.grad().any() and not obj.hvp(v).any() and not obj.ggn.matvec(v).any()
    assert landscape.hessian_eigenvalues(obj, k=1).eigenvalues[0] == 0.0
    both = Objective(model, x, y)  # the used and unused parameters together
    assert not both.hvp(torch.ones(both.num_params, dtype=torch.float64))[-6:].any()


def test_tied_parameter_named_by_its_second_name():
    class Tied(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb, self.head = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False)
            self.head.weight = self.emb.weight

    with pytest.raises(ValueError, match="head.weight is emb.weight"):
        Objective(Tied(), torch.zeros(2, dtype=torch.long), torch.zeros(2, dtype=torch.long), params="head")


def test_weights_leave_out_rms_norms():
    model = nn.Sequential(nn.Linear(4, 8), nn.RMSNorm(8), nn.Linear(8, 2))
    assert Objective(model, torch.randn(3, 4), torch.zeros(3, dtype=torch.long), params="weights").names == [
        "0.weight", "2.weight"]


class RunningNorm(nn.Module):
    """Updates a buffer in its forward whatever the mode, and keeps a tensor attribute (as old weight_norm)."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 5), nn.Linear(5, 3)
        self.register_buffer("mean", torch.zeros(4))
        self.scale = torch.ones(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.mean.mul_(0.9).add_(0.1 * x.detach().mean(0))
        self.scale = torch.tanh(self.a.weight).sum(1)  # computed from the weights: holds their graph
        return self.b(self.a(x - self.mean).tanh() * self.scale)


@pytest.mark.filterwarnings("ignore:`torch.nn.utils.weight_norm` is deprecated")
def test_measures_leave_buffers_attributes_and_versions_alone():
    torch.manual_seed(0)
    model = RunningNorm()
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    state = {k: t.clone() for k, t in model.state_dict().items()}
    scale, versions = model.scale, [p._version for p in model.parameters()]
    loss = F.cross_entropy(model(x), y)  # a training step's forward, before the measures
    model.mean.copy_(state["mean"])
    scale = model.scale
    versions = [p._version for p in model.parameters()]
    for measure in (lambda: landscape.hessian_eigenvalues(model, nn.CrossEntropyLoss(), (x, y), k=1),
                    lambda: landscape.surface(model, nn.CrossEntropyLoss(), (x, y), dims=1, points=3),
                    lambda: landscape.sharpness_of(model, nn.CrossEntropyLoss(), (x, y), kind="average", samples=2),
                    lambda: landscape.sharpness_of(model, nn.CrossEntropyLoss(), (x, y), steps=2)):
        measure()
        assert all(torch.equal(t, state[k]) for k, t in model.state_dict().items())
        assert model.scale is scale and [p._version for p in model.parameters()] == versions
    loss.backward()  # still possible: the parameters' version counters did not move


def test_attention_fast_path_is_off_in_every_evaluation():
    """``nn.TransformerEncoder`` with a padding mask: without gradients PyTorch's fast path zeroes the padded
    positions (another function); the loss, its gradient's value and the surface's centre agree."""
    torch.manual_seed(0)

    class Encoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True)
            self.enc, self.head = nn.TransformerEncoder(layer, 1), nn.Linear(8, 2)

        def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            return self.head(self.enc(x, src_key_padding_mask=mask).sum(1))

    x, mask = torch.randn(6, 5, 8), torch.zeros(6, 5, dtype=torch.bool)
    mask[:, 3:] = True
    batches = [({"x": x, "mask": mask}, torch.randint(0, 2, (6,)))]

    def loss_fn(model, batch):
        return F.cross_entropy(model(**batch[0]), batch[1])

    model = Encoder().eval()
    obj = Objective(model, batches, loss=loss_fn)
    surface = landscape.surface(obj, dims=1, points=3)
    assert obj.loss() == pytest.approx(obj.loss_and_grad()[0], rel=1e-6)
    assert surface["train_loss"][1] == pytest.approx(obj.loss(), rel=1e-6)
    assert torch.backends.mha.get_fastpath_enabled()


@pytest.mark.parametrize("method", TRACE_METHODS)
def test_every_trace_method_is_exact_when_the_budget_covers_the_unit_vectors(method):
    model = mlp()
    obj = Objective(model, torch.randn(30, 4, dtype=torch.float64), torch.randint(0, 3, (30,)))
    exact = float(torch.trace(obj.hvp(torch.eye(obj.num_params, dtype=torch.float64))))
    op = obj.ggn if method == "xnystrace" else obj.hessian
    if method == "xnystrace":
        exact = float(torch.trace(obj.ggn.matvec(torch.eye(obj.num_params, dtype=torch.float64))))
    result = landscape.hessian_trace(op, method=method, max_samples=obj.num_params)
    assert result.trace == pytest.approx(exact, rel=1e-10) and result.stderr == 0.0


def test_data_mistakes_are_one_line_errors():
    model, x, y = mlp(), torch.randn(20, 4, dtype=torch.float64), torch.randint(0, 3, (20,))
    with pytest.raises(DataError, match="20 and 10 rows"):
        Objective(model, (x, y[:10]))
    with pytest.raises(DataError, match="no rows"):
        Objective(model, (x[:0], y[:0]))
    with pytest.raises(ValueError, match="max_iter"):
        landscape.hessian_eigenvalues(model, "classification", (x, y), k=1, method="power", max_iter=0)
    with pytest.raises(ValueError, match="rho"):
        landscape.sharpness_of(model, "classification", (x, y), rho=-1.0, kind="average")
    with pytest.raises(ValueError, match="operator"):
        landscape.surface(Objective(model, (x, y)).ggn)

    class Scaled(nn.Module):  # a 0-d tensor in a dict of in-memory data is shared by every row
        def __init__(self) -> None:
            super().__init__()
            self.body = mlp()

        def forward(self, x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
            return self.body(x) * scale

    obj = Objective(Scaled(), {"x": x, "scale": torch.tensor(2.0, dtype=torch.float64), "y": y}, batch_size=8)
    assert obj.loss() == pytest.approx(float(F.cross_entropy(2 * model(x), y).detach()), rel=1e-12)
