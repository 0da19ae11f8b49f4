"""GNR, LETS, ESAM, LookSAM, RST and AE-SAM through the trainer and the CLI: exact resume after an
interruption (RNG streams, EMAs, g_v, beta + Adam state), LETS's hold-out and per-step rho log, fp16."""
from __future__ import annotations

import json

import pytest
import torch

from landscape.cli import main
from landscape.checkpoint import load_checkpoint
from optimizers import build_optimizer
from optimizers.config import TrainConfig
from optimizers.trainer import Trainer, holdout_split, run_paths
from tests.family_helpers import BASE, run
from tests.optimizer_helpers import closure_for, flat, params_of, toy

MODEL, DATA = "tests.fixtures:tiny_mlp", "tests.fixtures:blobs"
METHODS = [
    ("gnr", {"gnr_fraction": 0.5, "oracle": "sam", "alpha": 0.5}),
    ("gnr", {"hvp": "forward"}),
    ("lets_sam", {"beta_lr": 0.01}),
    ("lets_asam", {"beta_lr": 0.01, "val_fraction": 0.0}),
    ("esam", {}),
    ("looksam", {"k": 2}),
    ("rst", {"prob_schedule": "linear", "prob": 0.9}),
    ("ae_sam", {}),
]
IDS = [f"{n}-{i}" for i, (n, _) in enumerate(METHODS)]


def config(name, hp, **over) -> TrainConfig:
    base = dict(model=MODEL, data=DATA, epochs=3, batch_size=16, lr=0.1, seed=3, eval_batch_size=48,
                model_kwargs={"dropout": 0.2}, optimizer=name, hparams=dict(hp), log_steps=True, save_every_steps=5)
    base.update(over)
    return TrainConfig(**base)


class Boom(Exception):
    pass


@pytest.mark.parametrize("name, hp", METHODS, ids=IDS)
def test_resume_after_interrupt_is_bit_exact(tmp_path, name, hp):
    Trainer(config(name, hp), tmp_path / "full.pt", progress=False).run()

    def stop(row):
        if row["epoch"] == 2:
            raise Boom

    with pytest.raises(Boom):
        Trainer(config(name, hp), tmp_path / "cut.pt", progress=False, on_epoch=stop).run()
    state = torch.load(run_paths(tmp_path / "cut.pt")["resume"], weights_only=True)
    assert state["batch"] != 0  # the resume point is inside an epoch
    Trainer(config(name, hp), tmp_path / "cut.pt", progress=False).run()
    a, b = load_checkpoint(tmp_path / "full.pt").state_dict, load_checkpoint(tmp_path / "cut.pt").state_dict
    assert all(torch.equal(a[k], b[k]) for k in a)
    sa = run_paths(tmp_path / "full.pt")["steps"].read_text().splitlines()
    sb = run_paths(tmp_path / "cut.pt")["steps"].read_text().splitlines()
    assert sa == sb  # every step's metrics (rho, decisions, EMAs) identical


def test_lets_holds_out_data_and_logs_rho_every_step(tmp_path):
    cfg = config("lets_sam", {"beta_lr": 0.01, "val_fraction": 0.25}, save_every_steps=0)
    trainer = Trainer(cfg, tmp_path / "l.pt", progress=False)
    ckpt = trainer.run()
    assert len(trainer.data.x_train) == 72 and len(trainer.val_loader.x) == 24  # 96 blobs, a quarter held out
    fit, held = holdout_split(96, 0.25, cfg.seed)
    from tests.fixtures import blobs

    full = blobs()
    assert torch.equal(trainer.data.x_train, full.x_train[fit])
    assert torch.equal(trainer.val_loader.x, full.x_train[held])
    assert set(fit.tolist()).isdisjoint(held.tolist()) and len(fit) + len(held) == 96
    rows = [json.loads(r) for r in run_paths(tmp_path / "l.pt")["steps"].read_text().splitlines()]
    assert len(rows) == ckpt.step == 3 * (72 // 16)
    rhos = [r["rho"] for r in rows]
    assert all("hypergrad" in r and "val_gap" in r for r in rows)
    assert all(a != b for a, b in zip(rhos, rhos[1:]))  # rho moves every step
    assert ckpt.metrics["rho"] == rhos[-1]


def test_holdout_split_is_a_function_of_the_seed():
    a, b = holdout_split(50, 0.1, 0), holdout_split(50, 0.1, 0)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and len(a[1]) == 5
    assert not torch.equal(holdout_split(50, 0.1, 1)[1], a[1])


@pytest.mark.parametrize("name", ["gnr", "lets_sam", "lets_asam", "esam", "looksam", "rst", "ae_sam"])
def test_cli_train(tmp_path, name, capsys):
    code = main(["train", "--model", MODEL, "--data", DATA, "--optimizer", name, "--epochs", "1", "--batch-size",
                 "16", "--quiet", "--log-steps", "--out", str(tmp_path / "m.pt")])
    assert code == 0, capsys.readouterr().err
    ckpt = load_checkpoint(tmp_path / "m.pt")
    assert ckpt.optimizer["name"] == name and ckpt.metrics["train_loss"] > 0
    rows = run_paths(tmp_path / "m.pt")["steps"].read_text().splitlines()
    assert rows and all("rho" in json.loads(r) for r in rows)


@pytest.mark.parametrize("name, hp", [("looksam", {"k": 2}), ("ae_sam", {"c_start": 0.0, "c_end": 0.0}),
                                      ("rst", {}), ("esam", {}), ("lets_sam", {"beta_lr": 0.01}),
                                      ("gnr", {"oracle": "weight_decay", "gnr_fraction": 0.5})])
def test_fp16_loss_scale_gives_the_unscaled_steps(name, hp):
    def setup(opt, c):
        c.set_validation_batch(*toy(4)[1:])

    _, _, _, plain = run(name, steps=4, setup=setup, **hp)
    model, x, y = toy(0)
    opt = build_optimizer(name, model.parameters(), base_kwargs=dict(BASE), **hp)
    opt.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    c = closure_for(model, x, y, scaler=opt.scaler)
    setup(opt, c)
    for _ in range(4):
        opt.step(c)
    assert (flat(params_of(model)) - plain).abs().max() < 1e-12


@pytest.mark.ddp
def test_ddp_replicas_stay_identical_and_synced_methods_equal_one_process(tmp_path):
    """Two gloo ranks: every method leaves identical weights and scalars on both ranks (one decision, one
    all-reduced update); LookSAM, AE-SAM and RST with a synced ascent equal one process on the union batch."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    worker = [str(root / "tests" / "ddp_family_worker.py")]
    single = subprocess.run([sys.executable, *worker, str(tmp_path / "s.json")], cwd=root, env=env,
                            capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr[-3000:]
    ddp = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                          *worker, str(tmp_path / "d.json")], cwd=root, env=env, capture_output=True, text=True,
                         timeout=300)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    s, d = json.loads((tmp_path / "s.json").read_text()), json.loads((tmp_path / "d.json").read_text())
    assert d["world_size"] == 2
    for name in ("looksam", "ae_sam", "rst", "gnr", "lets_sam", "esam"):
        assert d[name]["same_on_all_ranks"], name
    for name in ("looksam", "ae_sam", "rst"):
        torch.testing.assert_close(torch.tensor(d[name]["w"]), torch.tensor(s[name]["w"]), rtol=0, atol=1e-12)
