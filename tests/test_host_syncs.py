"""Host reads per training step (issue #20): every ``.item()``, ``float``/``bool``/``int`` of a tensor and
``tolist`` is a device synchronization on an accelerator. Counted on the CPU by wrapping those methods; the
accelerator branches are covered by the meta-device steps of tests/test_every_method_devices.py."""
from __future__ import annotations

import json
import math

import pytest
import torch

from optimizers import available_optimizers, build_optimizer
from optimizers.closure import StepClosure
from tests.optimizer_helpers import toy

READS = ("item", "__float__", "__bool__", "__int__", "__index__", "tolist")
# Host reads a step of the method needs (fp32/bf16, no clipping): the decision or state that lives on the host.
NEEDED = {
    "ae_sam": 1,  # ||g||^2 against its running threshold: SAM or ERM is a host decision
    "lets_sam": 1, "lets_asam": 1,  # the hyper step's four scalars: beta and its Adam state live on the host
    "rst": 1, "esam": 1,  # a draw from the optimizer's CPU generator (no device sync)
    "looksam": 2,  # the reuse steps' CPU-only branch (scalars on the host are free there; meta runs the other)
}


@pytest.fixture
def reads(monkeypatch):
    """``reads["n"]``: host reads of tensors since reset, except those in ``reads["ignore"]`` (ids)."""
    state = {"n": 0, "ignore": set()}
    for name in READS:
        original = getattr(torch.Tensor, name)

        def counted(self, *args, _original=original, **kwargs):
            if id(self) not in state["ignore"]:
                state["n"] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, counted)
    return state


def _steps(name: str, reads: dict, *, steps: int = 7, scaler: bool = False, clip: float | None = None) -> list[int]:
    model, x, y = toy(0, bn=True)
    base = {"lr": 0.01} if name == "adamw" else {"lr": 0.1, "momentum": 0.9}
    opt = build_optimizer(name, model.named_parameters(), base_kwargs=base, max_grad_norm=clip)
    if hasattr(opt, "configure_training"):
        opt.configure_training(total_steps=steps, seed=0)
    if scaler:
        opt.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    c = StepClosure(model, "classification", scaler=opt.scaler)
    c.set_batch(x, y)
    c.set_validation_batch(x, y)
    per_step = []
    for _ in range(steps):
        # AdamW's step counters are CPU tensors whatever the device (torch reads them without a device sync)
        reads["ignore"] = {id(s["step"]) for s in opt.base.state.values() if "step" in s}
        reads["n"] = 0
        opt.step(c)
        per_step.append(reads["n"])
    return per_step[1:]  # the first step creates the base optimizer's state


@pytest.mark.parametrize("name", available_optimizers())
def test_a_step_reads_the_host_only_where_the_method_must(name, reads):
    assert max(_steps(name, reads)) <= NEEDED.get(name, 0)


@pytest.mark.parametrize("name", ["sgd", "sam", "gsam", "ga_sam"])
def test_clipping_and_the_fp16_scaler_add_one_read_each(name, reads):
    """Skipping a step on an inf/NaN gradient is a host decision: one read (clipping in fp32; the scaler's own
    found-inf check in fp16). Counting the skipped steps adds none."""
    assert max(_steps(name, reads, clip=1.0)) == 1
    assert max(_steps(name, reads, scaler=True)) == 1


def test_the_training_loop_reads_the_loss_once_per_interval(reads, tmp_path, monkeypatch):
    """The loop used to read every step's loss (``float(loss)``) and check it: one sync per step. Now the losses
    are read together every SYNC_EVERY steps and at the epoch's end; every step is still logged."""
    from optimizers import trainer as T
    from optimizers.config import TrainConfig

    monkeypatch.setattr(T, "SYNC_EVERY", 10)
    for method in ("_setup", "_evaluate", "checkpoint"):  # set-up, evaluation and saving are not the steps
        original = getattr(T.Trainer, method)

        def uncounted(self, *args, _original=original, **kwargs):
            n = reads["n"]
            out = _original(self, *args, **kwargs)
            reads["n"] = n
            return out

        monkeypatch.setattr(T.Trainer, method, uncounted)
    cfg = TrainConfig(model="tests.fixtures:tiny_mlp", data="tests.fixtures:blobs", epochs=1, batch_size=4,
                      lr=0.05, seed=0, eval_batch_size=64, optimizer="sam", device="cpu", log_steps=True)
    trainer = T.Trainer(cfg, tmp_path / "r.pt", progress=False)
    reads["n"] = 0
    trainer.run()
    steps = trainer.steps_per_epoch
    assert steps == 24 and reads["n"] == 3  # steps 10, 20 and the epoch's end
    rows = [json.loads(line) for line in (tmp_path / "r.steps.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    assert all(math.isfinite(r["loss"]) for r in rows)


@pytest.mark.parametrize("name", available_optimizers())
def test_fp16_adds_only_the_scalers_own_read(name, reads):
    """The loss scale is divided out as a device tensor (GNR, LETS, LookSAM, AE-SAM, the HVP pass used to read it
    on the host once per pass); the scaler's found-inf check is the one read fp16 adds."""
    assert max(_steps(name, reads, scaler=True)) <= NEEDED.get(name, 0) + 1
