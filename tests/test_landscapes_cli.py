"""``landscape plot1d / plot2d / compare / shift`` end to end, their errors, and the interactive HTML
rendered by headless Chromium."""
from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from landscape.cli import main
from landscape.landscapes.surface import Surface
from landscape.objective import Objective
from landscape.checkpoint import open_checkpoint
from optimizers.config import TrainConfig
from optimizers.trainer import Trainer
from tests.browser import needs_chromium, screenshot

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

MODEL, DATA = "tests.fixtures:tiny_mlp", "tests.fixtures:blobs"
ENTRY = ["--model", MODEL, "--data", DATA]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("landscapes")
    a, b, c = root / "sgd.pt", root / "sgd_small_lr.pt", root / "sgd_seed3.pt"
    Trainer(TrainConfig(model=MODEL, data=DATA, epochs=4, batch_size=16, lr=0.1, seed=1, checkpoint_every=1), a,
            progress=False).run()
    Trainer(TrainConfig(model=MODEL, data=DATA, epochs=4, batch_size=16, lr=0.03, seed=1), b, progress=False).run()
    Trainer(TrainConfig(model=MODEL, data=DATA, epochs=4, batch_size=16, lr=0.1, seed=3), c, progress=False).run()
    return a, b, c


def run(args, capsys):
    code = main([str(a) for a in args])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_plot2d_writes_files_and_resumes(ckpts, tmp_path, capsys):
    a = ckpts[0]
    stem = tmp_path / "p2"
    args = ["plot2d", a, *ENTRY, "--xrange", "-1", "0.5", "--xpoints", "7", "--ypoints", "4", "--out", stem,
            "--quiet", "--log", "--format", "png", "pdf"]
    code, out, err = run(args, capsys)
    assert code == 0, err
    for suffix in (".npz", ".directions.pt", ".contour.png", ".filled.png", ".surface.png", ".contour.pdf", ".html"):
        assert Path(f"{stem}{suffix}").stat().st_size > 0, suffix
    s = Surface.load(f"{stem}.npz")
    assert s.shape == (7, 4) and s.complete and s.meta["directions"]["kind"] == "random"
    assert s.axes[1].tolist() == [-1.0, -0.5, 0.0, 0.5]  # y defaults to x's points and the default range
    assert len(s.meta["checkpoint"]["sha256"]) == 64 and s.meta["checkpoint"]["path"] == str(a)
    _, model, data = open_checkpoint(a, model=MODEL, data=DATA)
    expect = Objective.from_bundle(model, data, "train").loss()
    assert s.value_at("train_loss", 0.0, 0.0) == pytest.approx(expect, rel=1e-5)
    assert "at the checkpoint: train_loss" in out
    before = Path(f"{stem}.npz").read_bytes()
    code, _, _ = run(args, capsys)  # same command again: nothing recomputed, the finished file untouched
    assert code == 0 and Path(f"{stem}.npz").read_bytes() == before
    code, _, err = run([*args, "--seed", "9"], capsys)  # other settings, same output: refused
    assert code == 2 and "other settings" in err and "--restart" in err and len(err.strip().splitlines()) == 1
    code, _, err = run([*args, "--seed", "9", "--restart"], capsys)
    assert code == 0 and Surface.load(f"{stem}.npz").meta["directions"]["seed"] == 9


@pytest.mark.parametrize("kind", ["pca", "eigen", "plane"])
def test_plot2d_direction_kinds(ckpts, tmp_path, capsys, kind):
    a, b, c = ckpts
    extra = {"pca": [], "eigen": ["--xrange", "-0.5", "0.5"], "plane": ["--through", b, c]}[kind]
    code, out, err = run(["plot2d", a, *ENTRY, "--directions", kind, *extra, "--xpoints", "5", "--ypoints", "4",
                          "--plots", "filled", "--no-html", "--out", tmp_path / kind, "--quiet", "--split", "train"],
                         capsys)
    assert code == 0, err
    s = Surface.load(tmp_path / f"{kind}.npz")
    assert s.meta["directions"]["kind"] == kind and s.metrics == ["train_loss", "train_acc"]
    if kind == "pca":
        assert len(s.meta["directions"]["path"]) == 5  # epochs 0..4
    if kind == "plane":
        assert [m["coords"][:1] for m in s.meta["directions"]["markers"][:2]] == [[0.0], [1.0]]
    assert (tmp_path / f"{kind}.filled.png").exists() and not (tmp_path / f"{kind}.html").exists()


def test_plot1d_interpolation_prints_barriers(ckpts, tmp_path, capsys):
    a, b, _ = ckpts
    code, out, err = run(["plot1d", a, *ENTRY, "--to", b, "--out", tmp_path / "i", "--quiet"], capsys)
    assert code == 0, err
    s = Surface.load(tmp_path / "i.npz")
    assert s.shape == (31,) and s.meta["directions"]["kind"] == "interpolation"
    assert "train loss barrier" in out and "test loss barrier" in out
    assert (tmp_path / "i.png").exists() and (tmp_path / "i.html").exists()
    _, model_b, data = open_checkpoint(b, model=MODEL, data=DATA)
    assert s.value_at("test_loss", 1.0) == pytest.approx(Objective.from_bundle(model_b, data, "test").loss(), rel=1e-5)
    code, _, err = run(["plot1d", a, *ENTRY, "--out", tmp_path / "r", "--quiet", "--bn", "recompute",
                        "--xpoints", "5", "--norm", "layer"], capsys)
    assert code == 0, err
    r = Surface.load(tmp_path / "r.npz")
    assert r.meta["bn"] == "recompute" and r.meta["directions"]["norm"] == "layer" and r.complete


def test_compare_side_by_side_and_interpolation(ckpts, tmp_path, capsys):
    a, b, c = ckpts
    stem = tmp_path / "cmp"
    code, out, err = run(["compare", a, b, c, *ENTRY, "--labels", "SGD", "slow SGD", "seed 3", "--xpoints", "5",
                          "--interp-points", "11", "--out", stem, "--quiet"], capsys)
    assert code == 0, err
    summary = json.loads(Path(f"{stem}.json").read_text())["landscapes"]
    assert [c_["label"] for c_ in summary["checkpoints"]] == ["SGD", "slow SGD", "seed 3"]
    assert len(summary["interpolations"]) == 2
    bar = summary["interpolations"][0]["barriers"]["train"]
    assert bar["barrier_linear"] >= bar["barrier"] >= 0
    for f in ("cmp.png", "cmp.interp.png", "cmp.html", "cmp.SGD.npz", "cmp.slow_SGD.npz",
              "cmp.interp-SGD-slow_SGD.npz"):
        assert (tmp_path / f).exists(), f
    sa, sb = Surface.load(tmp_path / "cmp.SGD.npz"), Surface.load(tmp_path / "cmp.slow_SGD.npz")
    assert [x.tolist() for x in sa.axes] == [x.tolist() for x in sb.axes]  # shared axes
    assert sa.meta["directions"]["seed"] == sb.meta["directions"]["seed"] == 0
    assert "interpolation barriers" in out


def test_shift_gasam_curves(ckpts, tmp_path, capsys):
    a = ckpts[0]
    code, out, err = run(["shift", a, *ENTRY, "--finetune-steps", "30", "--range", "-0.5", "1.5", "--per-unit", "4",
                          "--out", tmp_path / "sh", "--quiet"], capsys)
    assert code == 0, err
    res = json.loads((tmp_path / "sh.json").read_text())
    assert res["t"][0] == -0.5 and res["t"][-1] == 1.5 and len(res["shifted"]) == len(res["t"]) == 9
    ft = res["theta_star"]["finetune"]
    assert ft["steps"] == 30 and ft["test_loss_after"] < ft["test_loss_before"]
    s = Surface.load(tmp_path / "sh.npz")
    i0, i1 = list(s.axes[0]).index(0.0), list(s.axes[0]).index(1.0)
    assert res["constant"] == pytest.approx(s["test_loss"][i1] - s["train_loss"][i0])
    k = res["t"].index(1.0)
    assert res["shifted"][k] == pytest.approx(s["test_loss"][i1])  # at theta* the shifted curve meets the test loss
    assert (tmp_path / "sh.png").exists() and "||delta||" in out and "best constant" in out
    assert 0 <= res["rms_test_vs_shifted_best_constant"] <= res["rms_test_vs_shifted"]


@pytest.mark.parametrize("command", ["plot1d", "plot2d", "shift"])
def test_bad_checkpoint_is_one_line_exit_2(tmp_path, capsys, command):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    code, _, err = run([command, bad, "--quiet"], capsys)
    assert code == 2 and err.startswith("landscape: error:") and len(err.strip().splitlines()) == 1


def test_compare_errors(ckpts, tmp_path, capsys):
    a = ckpts[0]
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage")
    code, _, err = run(["compare", a, bad, *ENTRY, "--quiet"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    code, _, err = run(["compare", a, *ENTRY, "--quiet"], capsys)
    assert code == 2 and "at least two" in err
    wrong = tmp_path / "wrong.pt"
    torch.save(torch.nn.Linear(5, 3).state_dict(), wrong)
    code, _, err = run(["plot1d", a, *ENTRY, "--to", wrong, "--quiet"], capsys)
    assert code == 2 and "same architecture" in err and len(err.strip().splitlines()) == 1


@needs_chromium
def test_html_renders_offline_in_headless_chromium(ckpts, tmp_path, capsys):
    from matplotlib.image import imread

    stem = tmp_path / "h"
    code, _, err = run(["plot2d", ckpts[0], *ENTRY, "--xpoints", "15", "--ypoints", "11", "--plots", "filled",
                        "--out", stem, "--quiet"], capsys)
    assert code == 0, err
    html = Path(f"{stem}.html")
    text = html.read_text()
    tags = re.findall(r"<script\b[^>]*>", text)
    assert tags and not any("src=" in t for t in tags)  # plotly.js is inlined: nothing to fetch
    assert len(text) > 1_000_000
    png = tmp_path / "shot.png"
    screenshot(html, png, tmp_path)
    img = imread(png)[..., :3]
    h, w, _ = img.shape
    contour = img[int(0.15 * h):int(0.85 * h), int(0.55 * w):int(0.9 * w)]  # the contour panel
    colours = np.unique((contour * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"contour area nearly blank ({len(colours)} colours)"
    assert contour.std() > 0.05
    surface = img[int(0.15 * h):int(0.85 * h), int(0.05 * w):int(0.45 * w)]  # the WebGL 3-D panel
    assert len(np.unique((surface * 255).astype(np.uint8).reshape(-1, 3), axis=0)) > 50


@pytest.mark.ddp
def test_plot2d_under_torchrun_equals_single_process(ckpts, tmp_path):
    import os
    import sys

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    args = ["-m", "landscape", "plot2d", str(ckpts[0]), *ENTRY, "--xpoints", "6", "--ypoints", "5", "--plots",
            "filled", "--no-html", "--quiet", "--dtype", "float64"]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *args, "--out", str(tmp_path / "d")], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    single = subprocess.run([sys.executable, *args, "--out", str(tmp_path / "s")], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    d, s = Surface.load(tmp_path / "d.npz"), Surface.load(tmp_path / "s.npz")
    assert d.complete and d.meta["runtime"]["world_size"] == 2 and (tmp_path / "d.filled.png").exists()
    for k in s.metrics:
        np.testing.assert_allclose(d[k], s[k], rtol=1e-12, atol=0, err_msg=k)
