"""Smoke tests of the GA-SAM gallery scripts (gallery/gasam_*.py) in ``--quick`` mode, sharing one cache of runs."""
from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

GALLERY = Path(__file__).resolve().parents[1] / "gallery"

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


def script(name: str):
    if str(GALLERY) not in sys.path:
        sys.path.insert(0, str(GALLERY))
    return importlib.import_module(name)


@pytest.fixture(scope="module")
def dirs(tmp_path_factory):
    """``(work, out)``: one cache of quick runs for the three scripts; torch's thread count restored after."""
    threads = torch.get_num_threads()
    yield tmp_path_factory.mktemp("gasam-work"), tmp_path_factory.mktemp("gasam-out")
    torch.set_num_threads(threads)


def run(name: str, dirs, *extra: str) -> tuple[dict, Path]:
    work, out = dirs
    result = script(name).main(["--quick", "--work", str(work), "--out", str(out), *extra])
    png = out / f"{name}.png"
    assert png.stat().st_size < 250_000
    with Image.open(png) as im:
        assert im.size[0] > 800 and im.size[1] > 300
    assert (out / f"{name}.json").exists()
    return result, png


def test_runs_cache_and_resume(dirs):
    R = script("gasam_runs")
    work, _ = dirs
    path = R.checkpoint("mlp", quick=True, work=work)
    mtime = path.stat().st_mtime_ns
    assert R.checkpoint("mlp", quick=True, work=work) == path and path.stat().st_mtime_ns == mtime  # reused
    assert [e for e, _ in R.trajectory(path)] == [0, 1, 2, 3]  # epoch 0 = initialization
    assert R.config("textcnn", "ga_sam").hparams == {"rho": 1e-4, "p": "inf", "ascent_steps": 1}  # App. C.2.1
    assert R.method_label("lstm", "sam") == "SAM (L2, ε=0.005)"


def test_fig1_shift(dirs):
    out, _ = run("gasam_fig1_shift", dirs)
    for task, s in out["summary"].items():
        ft = s["theta_star"]["finetune"]
        assert ft["test_loss_after"] < ft["test_loss_before"] and s["delta_norm"] > 0
        c = out["curves"][task]
        t, test, shifted = map(np.asarray, (c["t"], c["test"], c["shifted"]))
        i = int(np.argmin(abs(t - 1.0)))  # at theta*: shifted = L(theta; D) + C = L(theta*; D*) by C's definition
        assert abs(t[i] - 1) < 1e-9 and shifted[i] == pytest.approx(test[i], rel=1e-4, abs=1e-5)
        assert s["rms_test_vs_shifted_best_constant"] <= s["rms_test_vs_shifted"] + 1e-12
    mlp = out["summary"]["mlp"]  # the theorem's regime: the shifted training loss follows the test loss
    assert mlp["rms_test_vs_shifted_best_constant"] < 0.5 * mlp["rms_test_vs_train_best_constant"]


def test_fig3_eigenvalues(dirs):
    out, _ = run("gasam_fig3_eigenvalues", dirs)
    assert set(out["runs"]) == {"textcnn", "lstm"}
    for task, by_method in out["runs"].items():
        assert set(by_method) == {"baseline", "sam", "ga_sam", "ga_sam_x3", "ga_sam_x10", "ga_sam_control"}
        for seeds in by_method.values():
            ev = np.asarray(seeds[0]["eigenvalues"])
            assert ev.shape == (50,) and ev[0] > 0 and (ev >= 0).all() and (np.diff(ev) <= 1e-12).all()
        assert out["summary"][task]["baseline"]["ratio_lambda_1"] == 1.0
        ratio = out["summary"][task]["ga_sam"]["ratio_lambda_1"]
        assert math.isfinite(ratio) and ratio > 0 and math.isfinite(out["summary"][task]["ga_sam"]["ratio_median"])
        # different optimizers, different minima
        assert by_method["ga_sam"][0]["eigenvalues"] != by_method["baseline"][0]["eigenvalues"]
        # GA-SAM's seed-0 run against the Fisher built from per-sample gradients taken one at a time
        exact = fisher_eigenvalues_by_loop(script("gasam_runs").checkpoint(task, "ga_sam", quick=True, work=dirs[0]))
        ev = np.asarray(by_method["ga_sam"][0]["eigenvalues"])
        assert np.abs(ev[:len(exact)] - exact[:50]).max() < 1e-5 * ev[0] and (ev[len(exact):] == 0).all()


def fisher_eigenvalues_by_loop(path: Path) -> np.ndarray:
    """The non-zero eigenvalues of the empirical Fisher F = (1/N) sum_i g_i g_i^T over the training rows, in
    float64 and eval mode: g_i by one backward pass per row (a language model's row loss: the mean over its
    tokens), then the squared singular values of [g_1 .. g_N]^T over N."""
    from landscape.checkpoint import open_checkpoint

    _, model, data = open_checkpoint(path)
    model = model.double().eval()
    params = list(model.parameters())
    rows = []
    for i in range(len(data.x_train)):
        out, y = model(data.x_train[i:i + 1]), data.y_train[i:i + 1]
        loss = torch.nn.functional.cross_entropy(out.flatten(0, -2), y.flatten())  # (1, C) or (1, T, V) logits
        rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
    J = torch.stack(rows)
    return (torch.linalg.svdvals(J) ** 2 / len(J)).numpy()


def test_fig45_gradients(dirs):
    out, _ = run("gasam_fig45_gradients", dirs, "--samples", "64")
    layers = {"textcnn": ["embedding", "convs.0", "convs.1", "convs.2", "fc"],
              "lstm": ["embedding", "lstm.l0", "lstm.l1", "decoder"]}
    for task, rows in out["results"].items():
        assert [r["epoch"] for r in rows] == [0, 1, 2, 3]
        assert {r["samples"] for r in rows} == ({64} if task == "textcnn" else {42})  # quick LSTM: 42 windows in all
        for r in rows:
            assert list(r["layers"]) == layers[task]
            n = sum(r["numel"].values())
            # per sample ||g|| >= ||g_(i)|| and ||g|| <= sum_i ||g_(i)||, so the same holds for the means
            norms = [r["layers"][k] * math.sqrt(r["numel"][k]) for k in layers[task]]
            assert max(norms) * (1 - 1e-6) <= r["G"] * math.sqrt(n) <= sum(norms) * (1 + 1e-6)
    # the output layer gets the largest per-parameter gradient of the LSTM (GA-SAM Fig. 5's pattern)
    assert out["summary"]["lstm"]["layer_order_final"][0] == "decoder"
