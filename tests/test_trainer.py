"""The trainer: metrics, resume after a kill (bit-exact on CPU), DDP == single process, accumulation."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from landscape.checkpoint import load_checkpoint
from landscape.cli import main
from optimizers.config import TrainConfig
from optimizers.schedules import lr_factor
from optimizers.trainer import Trainer, TrainingDiverged, run_paths

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA = "tests.fixtures:tiny_mlp", "tests.fixtures:blobs"


def config(**over) -> TrainConfig:
    base = dict(model=MODEL, data=DATA, epochs=4, batch_size=16, lr=0.1, seed=3, eval_batch_size=32,
                model_kwargs={"dropout": 0.2})
    base.update(over)
    return TrainConfig(**base)


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def test_train_writes_checkpoint_and_metrics(tmp_path):
    ckpt = Trainer(config(), tmp_path / "r.pt", progress=False).run()
    c = load_checkpoint(tmp_path / "r.pt")
    assert c.step == 4 * (96 // 16) and c.epoch == 4
    rows = [json.loads(line) for line in run_paths(tmp_path / "r.pt")["metrics"].read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    for key in ("train_loss", "test_loss", "train_acc", "test_acc", "gen_gap", "lr", "step_time"):
        assert key in rows[-1]
    assert rows[-1]["train_loss"] < rows[0]["train_loss"]
    assert abs(c.metrics["gen_gap"] - (c.metrics["train_acc"] - c.metrics["test_acc"])) < 1e-12
    assert c.train_config == config().to_dict() and ckpt.metrics == c.metrics
    assert not run_paths(tmp_path / "r.pt")["resume"].exists()


class Boom(Exception):
    pass


def test_resume_after_interrupt_is_bit_exact(tmp_path):
    Trainer(config(), tmp_path / "full.pt", progress=False).run()

    def stop_after_2(row):
        if row["epoch"] == 2:
            raise Boom

    with pytest.raises(Boom):
        Trainer(config(), tmp_path / "cut.pt", progress=False, on_epoch=stop_after_2).run()
    assert run_paths(tmp_path / "cut.pt")["resume"].exists() and not (tmp_path / "cut.pt").exists()
    Trainer(config(), tmp_path / "cut.pt", progress=False).run()
    a, b = weights(tmp_path / "full.pt"), weights(tmp_path / "cut.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma = run_paths(tmp_path / "full.pt")["metrics"].read_text().splitlines()
    mb = run_paths(tmp_path / "cut.pt")["metrics"].read_text().splitlines()
    def strip(rows):
        return [{k: v for k, v in json.loads(r).items() if k != "step_time"} for r in rows]

    assert strip(ma) == strip(mb)


def _cli(out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "landscape", "train", "--model", MODEL, "--data", DATA, "--model-arg",
            "dropout=0.2", "--batch-size", "16", "--epochs", "3", "--seed", "5", "--quiet", "--log-steps",
            "--out", str(out), *extra]


def test_sigkill_mid_epoch_then_resume_equals_uninterrupted(tmp_path):
    """A real SIGKILL between resume points: nothing finished is lost, the result is bit-identical."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    slow = ["--model-arg", "delay=0.03", "--save-every-steps", "2"]
    ref = subprocess.run(_cli(tmp_path / "ref.pt", *slow), cwd=ROOT, env=env, capture_output=True, text=True)
    assert ref.returncode == 0, ref.stderr
    proc = subprocess.Popen(_cli(tmp_path / "cut.pt", *slow), cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    resume = run_paths(tmp_path / "cut.pt")["resume"]
    deadline = time.time() + 60
    while time.time() < deadline and not resume.exists():
        time.sleep(0.02)
    time.sleep(0.25)  # somewhere inside a later stretch of steps
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "cut.pt").exists(), "the run finished before it could be killed"
    state = torch.load(resume, weights_only=True)
    assert 0 < state["step"] < 18
    r = subprocess.run(_cli(tmp_path / "cut.pt", *slow), cwd=ROOT, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    a, b = weights(tmp_path / "ref.pt"), weights(tmp_path / "cut.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps_a = run_paths(tmp_path / "ref.pt")["steps"].read_text().splitlines()
    steps_b = run_paths(tmp_path / "cut.pt")["steps"].read_text().splitlines()
    assert steps_a == steps_b  # the step log has every step exactly once
    # A finished run is not redone.
    again = subprocess.run(_cli(tmp_path / "cut.pt", *slow), cwd=ROOT, env=env, capture_output=True, text=True)
    assert again.returncode == 0 and "already trained" in again.stdout


def test_gradient_accumulation_matches_full_batch(tmp_path):
    torch.set_default_dtype(torch.float64)
    try:
        c1 = config(model_kwargs={}, epochs=2)
        c2 = config(model_kwargs={}, epochs=2, accum_steps=4)
        Trainer(c1, tmp_path / "a.pt", progress=False).run()
        Trainer(c2, tmp_path / "b.pt", progress=False).run()
    finally:
        torch.set_default_dtype(torch.float32)
    a, b = weights(tmp_path / "a.pt"), weights(tmp_path / "b.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-12)


@pytest.mark.ddp
def test_ddp_two_gloo_processes_equal_single_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    args = ["--model", MODEL, "--data", DATA, "--batch-size", "16", "--epochs", "3", "--seed", "2", "--quiet",
            "--lr", "0.2"]
    single = subprocess.run([sys.executable, "-m", "landscape", "train", *args, "--out", str(tmp_path / "s.pt")],
                            cwd=ROOT, env=env, capture_output=True, text=True)
    assert single.returncode == 0, single.stderr
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          "-m", "landscape", "train", *args, "--out", str(tmp_path / "d.pt")],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    s, d = load_checkpoint(tmp_path / "s.pt"), load_checkpoint(tmp_path / "d.pt")
    for k in s.state_dict:
        torch.testing.assert_close(s.state_dict[k], d.state_dict[k], rtol=1e-5, atol=1e-6)
    for key in ("train_loss", "test_loss", "train_acc", "test_acc"):
        assert abs(s.metrics[key] - d.metrics[key]) < 1e-5


def test_divergence_is_reported(tmp_path, capsys):
    code = main(["train", "--model", MODEL, "--data", DATA, "--lr", "1e30", "--momentum", "0", "--epochs", "2",
                 "--batch-size", "16", "--quiet", "--out", str(tmp_path / "x.pt")])
    err = capsys.readouterr().err
    assert code == 3 and "diverged" in err and not (tmp_path / "x.pt").exists()
    rows = [json.loads(line) for line in run_paths(tmp_path / "x.pt")["metrics"].read_text().splitlines()]
    assert rows[-1]["diverged"] is True
    with pytest.raises(TrainingDiverged):
        Trainer(config(lr=1e30, momentum=0.0), tmp_path / "y.pt", progress=False).run()


def test_changed_config_refuses_resume_and_existing_output(tmp_path, capsys):
    Trainer(config(epochs=1), tmp_path / "r.pt", progress=False).run()
    code = main(["train", "--model", MODEL, "--data", DATA, "--epochs", "2", "--quiet", "--out",
                 str(tmp_path / "r.pt")])
    assert code == 2 and "different configuration" in capsys.readouterr().err


def test_trajectory_checkpoints(tmp_path):
    Trainer(config(checkpoint_every=2), tmp_path / "t.pt", progress=False).run()
    files = sorted(p.name for p in run_paths(tmp_path / "t.pt")["trajectory"].iterdir())
    assert files == ["epoch_0000.pt", "epoch_0002.pt", "epoch_0004.pt"]
    assert load_checkpoint(run_paths(tmp_path / "t.pt")["trajectory"] / "epoch_0002.pt").epoch == 2


def test_stop_rule(tmp_path):
    c = Trainer(config(epochs=50, stop_train_acc=0.5, model_kwargs={}), tmp_path / "s.pt", progress=False).run()
    assert c.epoch < 50 and c.metrics["train_acc"] >= 0.5 and c.metrics["stopped_by"] == "train_acc>=0.5"


def test_schedules():
    cos = lr_factor("cosine", 10, warmup=2)
    assert cos(0) == 0.5 and cos(1) == 1.0 and cos(2) == 1.0 and abs(cos(10)) < 1e-12
    assert abs(cos(6) - 0.5) < 1e-12
    step = lr_factor("step", 100, milestones=[0.5, 0.75], gamma=0.1)
    assert step(49) == 1 and abs(step(50) - 0.1) < 1e-15 and abs(step(75) - 0.01) < 1e-15
    lin = lr_factor("linear", 4, min_factor=0.2)
    assert [round(lin(t), 10) for t in range(5)] == [1.0, 0.8, 0.6, 0.4, 0.2]
    with pytest.raises(ValueError):
        lr_factor("bogus", 3)
