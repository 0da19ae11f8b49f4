"""Loss-landscape fixes: finished points of an interrupted point-by-point run are kept, a first layer called
with a keyword, result files keyed by data and loss, interpolations between BatchNorm checkpoints, the
directions cache keyed by dimension, and --data-arg / --model-arg applied to a checkpoint's own settings."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn as nn

import landscape
from landscape.cli import main
from landscape.landscapes.directions import random_directions
from landscape.landscapes.surface import Surface, axis, compute_surface
from landscape.objective import Objective
from optimizers.config import TrainConfig
from optimizers.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


class Counting(nn.Module):
    """Raises KeyboardInterrupt at forward call ``stop_at``; ``seen`` records the result file's finished points
    at that moment."""

    def __init__(self, path=None) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(4, 6), nn.Linear(6, 3)
        self.calls, self.stop_at, self.path, self.seen = 0, None, path, None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        if self.calls == self.stop_at:
            if self.path is not None and self.path.exists():
                self.seen = int(Surface.load(self.path).done.sum())
            raise KeyboardInterrupt
        return self.l2(torch.tanh(self.l1(x)))


@pytest.mark.parametrize("interval", [0.0, 1e9])
def test_interrupted_point_run_keeps_its_finished_points(tmp_path, interval):
    torch.manual_seed(0)
    x, y = torch.randn(20, 4), torch.randint(0, 3, (20,))
    path = tmp_path / "s.npz"
    model = Counting(path)
    obj = Objective(model, x, y, loss="classification")
    dirs = random_directions(obj, 2, seed=0)
    axes = [axis(-1, 1, 10)] * 2  # 100 points: the first run holds 64
    obj.evaluate()
    model.calls, model.stop_at = 0, 41  # one forward per point: 40 points finished inside the first run
    with pytest.raises(KeyboardInterrupt):
        compute_surface({"train": obj}, dirs, axes, chunk_size=1, path=path, save_interval=interval)
    if interval == 0.0:  # saved while the run went on (what a kill -9 leaves)
        assert model.seen == 40
    part = Surface.load(path)
    assert int(part.done.sum()) == 40 and part.done.reshape(-1)[:40].all()
    model.stop_at = None
    resumed = compute_surface({"train": Objective(model, x, y, loss="classification")}, dirs, axes, chunk_size=1,
                              path=path)
    assert resumed.meta["runtime"]["points_computed"] == 60
    full = compute_surface({"train": Objective(model, x, y, loss="classification")}, dirs, axes, chunk_size=1)
    for k in full.metrics:
        np.testing.assert_array_equal(resumed[k], full[k])


class KeywordFirst(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.l1, self.l2 = nn.Linear(8, 10), nn.Linear(10, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.l2(torch.relu(self.l1(input=x)))


def test_first_layer_called_with_a_keyword():
    torch.manual_seed(0)
    model, x, y = KeywordFirst().double(), torch.randn(20, 8, dtype=torch.float64), torch.randint(0, 3, (20,))
    obj = Objective(model, x, y, loss="classification", dtype=torch.float64)
    dirs = random_directions(obj, 2, seed=1)
    axes = [axis(-1, 1, 3)] * 2
    expect = np.array([[obj.loss(obj.w0 + a * dirs.vectors[0] + b * dirs.vectors[1]) for b in axes[1]]
                       for a in axes[0]])
    for chunk in (1, 4):
        s = compute_surface({"train": obj}, dirs, axes, chunk_size=chunk)
        np.testing.assert_allclose(s["train_loss"], expect, rtol=1e-10)
    assert obj._first_layers.served > 0  # the keyword call is served from products too
    assert "forward" not in model.l1.__dict__


def test_result_file_of_other_data_or_loss_is_refused(tmp_path):
    torch.manual_seed(0)
    m = nn.Sequential(nn.Linear(8, 16), nn.Tanh(), nn.Linear(16, 3))
    x, y = torch.randn(50, 8), torch.randint(0, 3, (50,))
    x2 = x.clone()
    x2[-1, -1] += 1.0  # one value past the first rows differs
    p = tmp_path / "s.npz"
    first = landscape.surface(m, "classification", (x, y), dims=1, points=5, path=p)
    again = landscape.surface(m, "classification", (x, y), dims=1, points=5, path=p)
    np.testing.assert_array_equal(first["train_loss"], again["train_loss"])
    for loss, data in (("classification", (x2, y)), ("classification", (x, (y + 1) % 3)),
                       (nn.MultiMarginLoss(), (x, y)), (nn.CrossEntropyLoss(label_smoothing=0.1), (x, y))):
        with pytest.raises(ValueError, match="computed with other settings .* pass --restart"):
            landscape.surface(m, loss, data, dims=1, points=5, path=p)


@pytest.fixture(scope="module")
def bn_ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("bn")
    paths = root / "a.pt", root / "b.pt"
    for seed, path in enumerate(paths):
        Trainer(TrainConfig(model="mlp", model_kwargs={"hidden": [8], "batchnorm": True}, data="synthetic",
                            data_kwargs={"n_train": 128, "n_test": 64, "dim": 5, "num_classes": 3}, epochs=2,
                            batch_size=32, lr=0.1, seed=seed), path, progress=False).run()
    return paths


def test_bn_interpolation_ends_are_the_checkpoints(bn_ckpts, tmp_path, capsys):
    a, b = bn_ckpts
    own = {}
    for name, ckpt in (("a", a), ("b", b)):
        code, _, err = run(["plot1d", ckpt, "--xpoints", "3", "--out", tmp_path / name, "--no-html", "--quiet"],
                           capsys)
        assert code == 0, err
        s = Surface.load(tmp_path / f"{name}.npz")
        own[name] = {k: s.value_at(k, 0.0) for k in ("train_loss", "test_loss")}
    code, out, err = run(["plot1d", a, "--to", b, "--xpoints", "5", "--out", tmp_path / "ab", "--no-html",
                          "--quiet"], capsys)
    assert code == 0 and "barrier" in out, err
    s = Surface.load(tmp_path / "ab.npz")
    for k in ("train_loss", "test_loss"):
        assert s.value_at(k, 0.0) == pytest.approx(own["a"][k], rel=1e-6)
        assert s.value_at(k, 1.0) == pytest.approx(own["b"][k], rel=1e-6)
    assert "bn_end" in s.meta and s.meta["bn"] == "frozen"
    code, _, err = run(["compare", a, b, "--no-measures", "--xpoints", "3", "--curve-points", "0",
                        "--interp-points", "3", "--out", tmp_path / "cmp", "--no-html", "--quiet"], capsys)
    assert code == 0, err
    c = Surface.load(next(tmp_path.glob("cmp.interp-*.npz")))
    assert c.value_at("train_loss", 1.0) == pytest.approx(own["b"]["train_loss"], rel=1e-6)


def test_plot2d_after_plot1d_on_the_same_stem(bn_ckpts, tmp_path, capsys):
    a = bn_ckpts[0]
    stem = tmp_path / "same"
    assert run(["plot1d", a, "--xpoints", "3", "--out", stem, "--no-html", "--quiet"], capsys)[0] == 0
    code, _, err = run(["plot2d", a, "--xpoints", "3", "--out", stem, "--no-html", "--quiet"], capsys)
    assert code == 2 and "computed with other settings" in err and "--restart" in err and len(err.splitlines()) == 1
    code, _, err = run(["plot2d", a, "--xpoints", "3", "--out", stem, "--no-html", "--quiet", "--restart"], capsys)
    assert code == 0, err
    assert Surface.load(f"{stem}.npz").shape == (3, 3)


def test_data_and_model_args_apply_to_the_checkpoint_settings(bn_ckpts, tmp_path, capsys):
    a = bn_ckpts[0]
    code, _, err = run(["plot1d", a, "--xpoints", "3", "--out", tmp_path / "d", "--no-html", "--quiet",
                        "--data-arg", "n_train=50"], capsys)
    assert code == 0, err
    s = Surface.load(tmp_path / "d.npz")
    assert s.meta["splits"]["train"]["samples"] == 50 and s.meta["splits"]["test"]["samples"] == 64
    assert s.meta["data"]["kwargs"]["n_train"] == 50 and s.meta["data"]["kwargs"]["dim"] == 5
    code, _, err = run(["plot1d", a, "--xpoints", "3", "--out", tmp_path / "m", "--no-html", "--quiet",
                        "--model-arg", "hidden=[7]"], capsys)
    assert code == 2 and "weights do not match the model" in err and len(err.splitlines()) == 1


def test_data_arg_of_an_entry_point_checkpoint_is_refused(tmp_path, capsys):
    path = tmp_path / "e.pt"
    Trainer(TrainConfig(model="tests.fixtures:tiny_mlp", data="tests.fixtures:blobs", epochs=1, batch_size=32),
            path, progress=False).run()
    code, _, err = run(["plot1d", path, "--xpoints", "3", "--out", tmp_path / "e", "--no-html", "--quiet",
                        "--data-arg", "n_train=50"], capsys)
    assert code == 2 and "entry point" in err and "--data tests.fixtures:blobs" in err
