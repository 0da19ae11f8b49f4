"""The engineering contract of the sharpness-aware family (SAM, ASAM, GSAM, ASAM+ascent, GA-SAM,
Layer-SAM, the multi-step defense): state_dict and resume, zero radius, fp16 loss scaling, DDP (2 gloo
processes) against a per-shard simulation, torch.compile. Accumulation, clipping, the AdamW base, bf16
and the no-copies rule are tested over every method in tests/test_family_contract.py."""
from __future__ import annotations

import copy
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from landscape.checkpoint import load_checkpoint
from optimizers import build_optimizer
from optimizers.config import TrainConfig
from optimizers.trainer import Trainer, run_paths
from tests.optimizer_helpers import (FAMILY, LR, MOMENTUM, WD, assert_close, assert_equal, closure_for, flat,
                                     grad_at, params_of, sgd_reference, toy)

ROOT = Path(__file__).resolve().parents[1]
MODEL, DATA = "tests.fixtures:tiny_mlp", "tests.fixtures:blobs"

KW = {"base_kwargs": {"lr": LR, "momentum": MOMENTUM, "weight_decay": WD}}


def build(name: str, model, **over):
    return build_optimizer(name, model.parameters(), **KW, **{**FAMILY[name], **over})


# -- state ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILY)
def test_state_dict_round_trip_continues_bit_exactly(name):
    model, x, y = toy(0)
    opt = build(name, model)
    c = closure_for(model, x, y)
    for _ in range(2):
        opt.step(c)
    buf = io.BytesIO()
    torch.save(opt.state_dict(), buf)  # what the trainer's resume file holds
    state = torch.load(io.BytesIO(buf.getvalue()), weights_only=True)
    assert state["base"]["state"], "the base optimizer's momentum must be in the state"
    twin = copy.deepcopy(model)
    opt2 = build(name, twin)
    opt2.load_state_dict(state)
    opt.step(c)
    opt2.step(closure_for(twin, x, y))
    assert_equal(params_of(model), params_of(twin))


class Boom(Exception):
    pass


class KilledTrainer(Trainer):
    """Dies right after its third resume point (mid-epoch 2), as a SIGKILL there would."""

    saves = 0

    def _save_resume(self, *args):
        super()._save_resume(*args)
        self.saves += 1
        if self.saves == 3:
            raise Boom


def train_config(name: str, **over) -> TrainConfig:
    hp = dict(FAMILY[name])
    if name in ("ga_sam", "multistep_defense"):
        hp["start_epoch"] = 1  # set_epoch must survive the resume
    base = dict(model=MODEL, data=DATA, epochs=3, batch_size=16, lr=0.1, seed=3, eval_batch_size=96,
                optimizer=name, hparams=hp, schedule="cosine", min_lr_factor=0.1, save_every_steps=4)
    base.update(over)
    return TrainConfig(**base)


@pytest.mark.parametrize("name", FAMILY)
def test_resume_after_kill_is_bit_exact_through_the_trainer(tmp_path, name):
    Trainer(train_config(name), tmp_path / "full.pt", progress=False).run()
    with pytest.raises(Boom):
        KilledTrainer(train_config(name), tmp_path / "cut.pt", progress=False).run()
    assert torch.load(run_paths(tmp_path / "cut.pt")["resume"], weights_only=True)["step"] == 8
    Trainer(train_config(name), tmp_path / "cut.pt", progress=False).run()
    a, b = load_checkpoint(tmp_path / "full.pt"), load_checkpoint(tmp_path / "cut.pt")
    assert all(torch.equal(a.state_dict[k], b.state_dict[k]) for k in a.state_dict)
    assert a.optimizer == b.optimizer and a.optimizer["name"] == name


# -- the step -------------------------------------------------------------------------------------
@pytest.mark.parametrize("name", FAMILY)
def test_zero_radius_is_the_base_optimizer_bit_for_bit(name):
    zero = {k: 0.0 for k in FAMILY[name] if k.startswith("rho")}
    got = []
    for method, hp in ((name, {**FAMILY[name], **zero}), ("sgd", {})):
        model, x, y = toy(0)
        opt = build_optimizer(method, model.parameters(), **KW, **hp)
        c = closure_for(model, x, y)
        for _ in range(3):
            opt.step(c)
        got.append(params_of(model))
    assert_equal(*got)


@pytest.mark.parametrize("name", FAMILY)
def test_fp16_loss_scaling_equals_the_unscaled_step(name):
    results = []
    for scaled in (False, True):
        model, x, y = toy(0)
        opt = build(name, model)
        if scaled:
            opt.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**14)
        c = closure_for(model, x, y, scaler=opt.scaler)
        for _ in range(2):
            opt.step(c)
        results.append(params_of(model))
    assert_close(results[0], results[1], tol=1e-12)


# -- DDP ------------------------------------------------------------------------------------------
def _shards():
    from tests.ddp_optimizer_worker import batch

    return [batch(r, 2) for r in range(2)]


def _per_shard(direction):
    """Single-process simulation: each shard perturbs with its own gradient; the final gradients are averaged."""
    shards = _shards()
    model = toy(0)[0]

    def d(w, t):
        per = [direction(model, xs, ys, w) for xs, ys in shards]
        return {n: (per[0][n] + per[1][n]) / 2 for n in w}

    return d


def _full_batch(name, hp):
    x = torch.cat([s[0] for s in _shards()])
    y = torch.cat([s[1] for s in _shards()])
    model = toy(0)[0]
    opt = build_optimizer(name, model.parameters(), **KW, **hp)
    c = closure_for(model, x, y)
    out = []
    for _ in range(2):
        opt.step(c)
        out.append(params_of(model))
    return out


@pytest.mark.ddp
def test_ddp_two_gloo_processes_equal_the_per_shard_simulation(tmp_path):
    from tests.ddp_optimizer_worker import OVERFLOW, SCENARIOS
    from tests.test_optimizers_ga_sam import ga_sam_direction
    from tests.test_optimizers_gsam import asam_l2, gsam_direction, sam_l2

    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "tests" / "ddp_optimizer_worker.py"), str(tmp_path)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{i}.pt", weights_only=True) for i in range(2)]
    for key in [*SCENARIOS, *OVERFLOW]:  # replicas never diverge
        for a, b in zip(ranks[0][key]["params"], ranks[1][key]["params"]):
            assert_equal(a, b)
        assert ranks[0][key]["scale"] == ranks[1][key]["scale"]
    got = {k: v["params"] for k, v in ranks[0].items()}
    w0 = params_of(toy(0)[0])

    def sam(model, x, y, w):
        g = grad_at(model, w, x, y)
        norm = flat(g).norm()
        return grad_at(model, {n: w[n] + 0.3 * g[n] / norm for n in w}, x, y)

    def asam(model, x, y, w):
        g = grad_at(model, w, x, y)
        e = asam_l2(0.01)(w, g, 1.0)
        return grad_at(model, {n: w[n] + e[n] for n in w}, x, y)

    simulations = {
        "sam": sam,
        "asam": asam,
        "gsam": lambda m, x, y, w: gsam_direction(m, x, y, w, 0.3, 0.4, sam_l2),
        "ga_sam": lambda m, x, y, w: ga_sam_direction(m, x, y, w, rho=0.05, K=2, p=float("inf")),
    }
    for key, direction in simulations.items():
        for steps in (1, 2):
            assert_close(got[key][steps - 1], sgd_reference(w0, _per_shard(direction), steps))
    # per-replica and synchronized perturbations really differ here
    assert float((flat(got["sam"][1]) - flat(got["sam_sync"][1])).abs().max()) > 1e-6
    for key in ("sam_sync", "gsam_sync", "ga_sam_sync"):  # synchronized perturbation = full-batch method
        name, hp = SCENARIOS[key]
        for a, b in zip(got[key], _full_batch(name, {k: v for k, v in hp.items() if k != "sync_perturbation"})):
            assert_close(a, b, tol=1e-13)
    for key in OVERFLOW:  # rank 1 overflowed in its ascent pass: both ranks skip step 1, then go on
        assert_equal(got[key][0], w0)
        assert ranks[0][key]["skipped"] == ranks[1][key]["skipped"] == 1
        assert ranks[0][key]["scale"] == 2.0**9
        assert float((flat(got[key][1]) - flat(w0)).abs().max()) > 0


# -- torch.compile and the CLI --------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("name", ["sam", "ga_sam"])
def test_torch_compile_runs_the_family(tmp_path, name):
    over = dict(epochs=1, steps=3, save_every_steps=0, hparams=FAMILY[name])  # perturbing from step 1
    eager = Trainer(train_config(name, **over), tmp_path / "e.pt", progress=False).run()
    compiled = Trainer(train_config(name, compile=True, **over), tmp_path / "c.pt", progress=False).run()
    for k, v in eager.state_dict.items():
        torch.testing.assert_close(compiled.state_dict[k], v, rtol=1e-4, atol=1e-5)


def test_every_method_trains_from_the_command_line(tmp_path, capsys):
    from landscape.cli import main

    args = ["train", "--model", MODEL, "--data", DATA, "--epochs", "1", "--batch-size", "32", "--quiet"]
    assert main([*args, "--optimizer", "ga_sam", "--rho", "0.01", "--ascent-steps", "2", "--p", "2",
                 "--normalization", "weight_gradient", "--single-step", "true", "--out", str(tmp_path / "a.pt")]) == 0
    hp = load_checkpoint(tmp_path / "a.pt").optimizer["hparams"]
    assert hp["ascent_steps"] == 2 and hp["single_step"] is True and hp["normalization"] == "weight_gradient"
    assert main([*args, "--optimizer", "gsam", "--rho-max", "0.1", "--rho-min", "0.0", "--alpha", "0.2",
                 "--out", str(tmp_path / "b.pt")]) == 0
    assert load_checkpoint(tmp_path / "b.pt").optimizer["hparams"]["alpha"] == 0.2
    code = main([*args, "--optimizer", "gsam", "--ascent-steps", "2", "--out", str(tmp_path / "c.pt")])
    assert code == 2 and "ascent_steps" in capsys.readouterr().err
