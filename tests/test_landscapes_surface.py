"""Landscape surfaces: grid layout (non-square, ranges through 0), vmap == loop, resume after a kill
without recomputation, settings checks, BatchNorm policies, the model left untouched, barriers and
the GA-SAM shift, two gloo ranks == one process."""
from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.optim.swa_utils import update_bn

from landscape.landscapes.directions import interpolation_direction, random_directions
from landscape.landscapes.interpolation import barrier_heights, finetune, shift_axis, shifted_curves
from landscape.landscapes.plots import plot_grid
from landscape.landscapes.surface import Surface, axis, compute_surface, grid_points, make_objectives
from landscape.objective import Objective, eval_mode
from tests.curvature_helpers import assert_unchanged, bn_net, small_mlp, snapshot
from tests.fixtures import blobs

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture()
def problem():
    d = blobs()
    model = small_mlp(seed=0)
    objs = make_objectives(model, d, ["train", "test"], dtype=torch.float64, batch_size=40)
    return model, d, objs, random_directions(objs["train"], 2, seed=4)


class Killed(Exception):
    pass


def test_axis_snaps_zero_and_checks_ranges():
    a = axis(-0.3, 0.3, 11)
    assert a[5] == 0.0 and a[0] == -0.3 and a[-1] == 0.3
    assert axis(-0.25, 1.25, 31)[[5, 25]].tolist() == [0.0, 1.0]
    assert axis(2.0, 3.0, 1).tolist() == [2.0]
    with pytest.raises(ValueError):
        axis(1.0, 0.0, 5)


def test_non_square_grid_with_zero_matches_direct_evaluation(problem):
    model, _, objs, dirs = problem
    x, y = axis(-1.0, 0.5, 7), axis(-0.4, 0.8, 4)  # 0 at x[4], y[1]
    s = compute_surface(objs, dirs, [x, y], chunk_size=5)
    assert s.shape == (7, 4) and s.complete and s["train_loss"].shape == (7, 4)
    train, test = objs["train"], objs["test"]
    assert s.value_at("train_loss", 0.0, 0.0) == pytest.approx(train.loss(), rel=1e-12)
    assert s.value_at("test_acc", 0.0, 0.0) == test.evaluate()["acc"]
    for i, j in [(0, 0), (6, 3), (2, 1), (5, 0), (0, 3)]:
        w = train.w0 + x[i] * dirs.vectors[0] + y[j] * dirs.vectors[1]
        assert s["train_loss"][i, j] == pytest.approx(train.loss(w), rel=1e-12)
        assert s["test_loss"][i, j] == pytest.approx(test.loss(w), rel=1e-12)
    X, Y, Z = plot_grid(s, "train_loss")  # the plotting layout: Z[j, i] at (x_i, y_j)
    assert Z.shape == (4, 7) and X[1, 6] == x[6] and Y[1, 6] == y[1] and Z[1, 6] == s["train_loss"][6, 1]


def test_vmap_equals_point_by_point_loop(problem):
    _, _, objs, dirs = problem
    axes = [axis(-1, 1, 5), axis(-1, 1, 6)]
    loop = compute_surface(objs, dirs, axes, chunk_size=1)
    batched = compute_surface(objs, dirs, axes, chunk_size=7)
    assert loop.meta["chunk_size"] == 1 and batched.meta["chunk_size"] == 7
    for k in loop.metrics:
        np.testing.assert_allclose(batched[k], loop[k], rtol=1e-12, atol=0, err_msg=k)
    d = blobs()  # float32 too, within float32 rounding
    objs32 = make_objectives(small_mlp(seed=0).float(), d, ["train"])
    dirs32 = random_directions(objs32["train"], 2, seed=4)
    a = compute_surface(objs32, dirs32, axes, chunk_size=1)["train_loss"]
    b = compute_surface(objs32, dirs32, axes, chunk_size="auto")["train_loss"]
    np.testing.assert_allclose(a, b, rtol=1e-5)


def test_resume_after_kill_gives_same_result_without_recomputation(problem, tmp_path):
    model, d, objs, dirs = problem
    axes = [axis(-1, 1, 6), axis(-0.5, 1, 5)]  # 30 points, chunks of 4 -> 8 chunks
    full = compute_surface(objs, dirs, axes, chunk_size=4, path=tmp_path / "full.npz")
    rounds = []

    def kill_after_three(surface):
        rounds.append(int(surface.done.sum()))
        if len(rounds) == 3:
            raise Killed

    fresh = make_objectives(model, d, ["train", "test"], dtype=torch.float64, batch_size=40)
    with pytest.raises(Killed):
        compute_surface(fresh, dirs, axes, chunk_size=4, path=tmp_path / "s.npz", on_chunk=kill_after_three,
                        save_interval=1e9)  # only the save on the way out keeps the work
    part = Surface.load(tmp_path / "s.npz")
    assert int(part.done.sum()) == 12 and not part.complete and not part.meta["complete"]
    assert np.isnan(part["train_loss"][~part.done]).all()

    again = make_objectives(model, d, ["train", "test"], dtype=torch.float64, batch_size=40)
    resumed = compute_surface(again, dirs, axes, chunk_size="auto", path=tmp_path / "s.npz")
    assert again["train"].counts["loss"] == 30 - 12 and again["test"].counts["loss"] == 30 - 12
    assert resumed.meta["chunk_size"] == 4 and resumed.meta["runtime"]["points_computed"] == 18
    for k in full.metrics:
        assert np.array_equal(resumed[k], full[k]), k
        assert np.array_equal(Surface.load(tmp_path / "s.npz")[k], full[k]), k
    third = make_objectives(model, d, ["train", "test"], dtype=torch.float64, batch_size=40)
    compute_surface(third, dirs, axes, path=tmp_path / "s.npz")
    assert third["train"].counts["loss"] == 0  # a finished file: nothing recomputed


def test_resume_refuses_other_settings(problem, tmp_path):
    _, _, objs, dirs = problem
    compute_surface(objs, dirs, [axis(-1, 1, 3), axis(-1, 1, 3)], path=tmp_path / "s.npz")
    with pytest.raises(ValueError, match="axes differs"):
        compute_surface(objs, dirs, [axis(-1, 1, 5), axis(-1, 1, 3)], path=tmp_path / "s.npz")
    other = random_directions(objs["train"], 2, seed=5)
    with pytest.raises(ValueError, match="directions differs"):
        compute_surface(objs, other, [axis(-1, 1, 3), axis(-1, 1, 3)], path=tmp_path / "s.npz")
    s = compute_surface(objs, other, [axis(-1, 1, 3), axis(-1, 1, 3)], path=tmp_path / "s.npz", resume=False)
    assert Surface.load(tmp_path / "s.npz").meta["directions"]["seed"] == 5 and s.complete
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="not a readable surface"):
        compute_surface(objs, other, [axis(-1, 1, 3), axis(-1, 1, 3)], path=tmp_path / "junk.npz")


def test_metadata_records_everything(problem, tmp_path):
    _, _, objs, dirs = problem
    compute_surface(objs, dirs, [axis(-1, 1, 3), axis(-2, 2, 5)], path=tmp_path / "s.npz",
                    header={"checkpoint": {"sha256": "abc"}})
    with np.load(tmp_path / "s.npz", allow_pickle=False) as z:
        meta = json.loads(str(z["meta"]))
        assert z["axis_1"].tolist() == [-2, -1, 0, 1, 2] and z["done"].all()
    assert meta["directions"]["seed"] == 4 and meta["directions"]["norm"] == "filter"
    assert len(meta["directions"]["sha256"]) == 64 and meta["checkpoint"]["sha256"] == "abc"
    assert meta["bn"] == "frozen" and meta["dtype"] == "float64" and meta["splits"]["test"]["samples"] == 48
    assert meta["complete"] and meta["axes"][1] == [-2, -1, 0, 1, 2]


def test_one_dimensional_interpolation_surface_and_barrier(tmp_path):
    d = blobs()
    a, b = small_mlp(seed=0), small_mlp(seed=1)
    objs = make_objectives(a, d, ["train"], dtype=torch.float64)
    wb = torch.cat([p.detach().reshape(-1) for p in b.parameters()])
    t = axis(-0.25, 1.25, 31)
    s = compute_surface(objs, interpolation_direction(objs["train"], wb), [t], chunk_size=8)
    other = Objective.from_bundle(b, d, "train", dtype=torch.float64)
    assert s.value_at("train_loss", 1.0) == pytest.approx(other.loss(), rel=1e-12)
    assert s.value_at("train_loss", 0.0) == pytest.approx(objs["train"].loss(), rel=1e-12)
    bar = barrier_heights(t, s["train_loss"])
    inside = s["train_loss"][(t >= 0) & (t <= 1)]
    assert bar["barrier"] == pytest.approx(inside.max() - max(bar["loss_start"], bar["loss_end"]))
    assert bar["barrier_linear"] >= bar["barrier"] >= 0


def test_barrier_definitions():
    t = np.linspace(0, 1, 11)
    t[[0, 10]] = [0.0, 1.0]
    loss = 1.0 + t + 2.0 * np.sin(np.pi * t)  # ends 1 and 2, peak above the line by 2 at t = 0.5
    b = barrier_heights(t, loss)
    assert b["barrier_linear"] == pytest.approx(2.0) and b["t_max_linear"] == 0.5
    assert b["barrier"] == pytest.approx(loss.max() - 2.0)
    assert barrier_heights(t, 3 - t)["barrier"] == 0.0  # monotone: no barrier
    with pytest.raises(ValueError, match="t = 0 and t = 1"):
        barrier_heights(t[1:], loss[1:])


def test_shifted_curves_recover_an_exact_shift():
    t = shift_axis(-0.5, 1.5, 10)
    assert t[0] == -1.5 and t[-1] == 1.5 and (t == 0).any() and (t == 1).any()
    train = (t - 0.1) ** 2
    test = (t - 1.1) ** 2 + 0.3  # exactly the train loss shifted by delta (t -> t - 1) plus C = 0.3
    c = shifted_curves(t, train, test, 10, -0.5, 1.5)
    assert c["constant"] == pytest.approx(0.3)
    np.testing.assert_allclose(c["shifted"], c["test"], atol=1e-12)
    assert c["t"][0] == -0.5 and c["t"][-1] == 1.5 and c["rms_test_vs_shifted"] < 1e-12 < c["rms_test_vs_train"]
    assert c["rms_test_vs_shifted_best_constant"] < 1e-12
    lifted = shifted_curves(t, train, train + 0.5, 10, -0.5, 1.5)  # same shape, other level: best constant 0.5
    assert lifted["rms_test_vs_train"] == pytest.approx(0.5) and lifted["rms_test_vs_train_best_constant"] < 1e-12


def test_finetune_lowers_the_loss_deterministically():
    d = blobs()
    obj = Objective.from_bundle(small_mlp(), d, "test", dtype=torch.float64)
    w1, losses = finetune(obj, 20, 0.1, 0.5)
    w2, _ = finetune(obj, 20, 0.1, 0.5)
    assert torch.equal(w1, w2) and losses[-1] < losses[0] and len(losses) == 21


def test_bn_recompute_matches_update_bn_and_leaves_model_untouched():
    d = blobs()
    net = bn_net()
    before = snapshot(net)
    objs = make_objectives(net, d, ["train", "test"], dtype=torch.float64, batch_size=32)
    dirs = random_directions(objs["train"], 2, seed=0, bias_bn="include")
    axes = [axis(-0.5, 0.5, 3), axis(-0.5, 0.5, 2)]
    frozen = compute_surface(objs, dirs, axes, bn="frozen")
    rec = compute_surface(objs, dirs, axes, bn="recompute", chunk_size=16)
    assert_unchanged(net, before)
    assert rec.meta["chunk_size"] == 1 and rec.meta["bn"] == "recompute"
    i, j = 2, 1
    w = objs["train"].w0 + axes[0][i] * dirs.vectors[0] + axes[1][j] * dirs.vectors[1]
    ref = copy.deepcopy(net)
    with torch.no_grad():
        for (n, p), v in zip(ref.named_parameters(), objs["train"].unflatten(w).values()):
            p.copy_(v)
    loader = [d.x_train[k:k + 32].double() for k in range(0, 96, 32)]
    with eval_mode(ref):  # dropout stays off; update_bn sets only BatchNorm layers to train mode
        update_bn(loader, ref)
    ref_obj = Objective.from_bundle(ref, d, "test", dtype=torch.float64)
    assert rec["test_loss"][i, j] == pytest.approx(ref_obj.loss(), rel=1e-12)
    assert rec["test_loss"][i, j] != pytest.approx(frozen["test_loss"][i, j], rel=1e-6)


def test_frozen_surface_leaves_bn_model_untouched(tmp_path):
    d = blobs()
    net = bn_net()
    before = snapshot(net)
    objs = make_objectives(net, d, ["train"], dtype=torch.float64)
    compute_surface(objs, random_directions(objs["train"], 1, seed=0), [axis(-1, 1, 9)], chunk_size="auto",
                    path=tmp_path / "s.npz")
    assert_unchanged(net, before)


def test_auto_chunk_size_respects_memory():
    d = blobs()
    obj = Objective.from_bundle(small_mlp(), d, "train", dtype=torch.float64)
    assert obj.auto_chunk_size(memory=1) == 1
    fresh = Objective.from_bundle(small_mlp(), d, "train", dtype=torch.float64)
    c = fresh.auto_chunk_size()
    assert c in (1, 4, 16, 64, 256) and fresh.auto_chunk_size() == c
    W = fresh.w0 + 0.01 * torch.randn(3, fresh.num_params, dtype=torch.float64)
    np.testing.assert_allclose(fresh.evaluate_many(W, chunk_size="auto")["loss"],
                               fresh.evaluate_many(W, chunk_size=1)["loss"], rtol=1e-12)


def test_grid_points_are_formed_in_float64():
    w0 = torch.tensor([1.0, 2.0], dtype=torch.float32)
    dirs = torch.tensor([[1e-9, 0.0], [0.0, 1.0]], dtype=torch.float64)
    W = grid_points(w0, dirs, np.array([[0.0, 0.0], [1.0, 1.0]]), torch.float32)
    assert torch.equal(W[0], w0) and W.dtype == torch.float32 and W[1, 1] == 3.0


@pytest.mark.ddp
def test_two_gloo_ranks_equal_one_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = [str(ROOT / "tests" / "ddp_surface_worker.py")]
    single = subprocess.run([sys.executable, *worker, str(tmp_path / "s.npz")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *worker, str(tmp_path / "d.npz")], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    s, d = Surface.load(tmp_path / "s.npz"), Surface.load(tmp_path / "d.npz")
    assert s.meta["runtime"]["world_size"] == 1 and d.meta["runtime"]["world_size"] == 2
    assert d.complete and json.loads((tmp_path / "d.npz.rank1.json").read_text())["complete"]
    for k in s.metrics:
        np.testing.assert_allclose(d[k], s[k], rtol=1e-12, atol=0, err_msg=k)
    sa, da = Surface.load(tmp_path / "s.npz.auto.npz"), Surface.load(tmp_path / "d.npz.auto.npz")
    assert da.complete and da.meta["chunk_size"] >= 1
    np.testing.assert_allclose(da["test_loss"], sa["test_loss"], rtol=1e-12, atol=0)
