"""Every optimizer of ``optimizers/`` on the ``meta`` device (device mixing and host reads show up as errors
there) and through an fp16 overflow (issue #20)."""
from __future__ import annotations

import math

import pytest
import torch

from optimizers import available_optimizers, build_optimizer
from optimizers.closure import StepClosure
from tests.optimizer_helpers import toy

METHODS = available_optimizers()
HPARAMS = {"looksam": {"k": 2}, "rst": {"prob": 0.5}, "ae_sam": {"c_start": 0.0}}
# A meta tensor has no data: a method that takes a host decision from a tensor cannot step there.
META_NEEDS_HOST = {
    "ae_sam": "SAM-or-ERM is decided on the host from ||g||^2 (one read per step, by design)",
    "lets_sam": "the hyper step reads its four scalars to the host (beta is a Python float)",
    "lets_asam": "the hyper step reads its four scalars to the host (beta is a Python float)",
}


def _optimizer(name: str, model: torch.nn.Module):
    base = {"lr": 0.01} if name == "adamw" else {"lr": 0.1, "momentum": 0.9}
    opt = build_optimizer(name, model.named_parameters(), base_kwargs=base, **HPARAMS.get(name, {}))
    if hasattr(opt, "configure_training"):
        opt.configure_training(total_steps=10, seed=0)
    return opt


@pytest.mark.parametrize("name", METHODS)
def test_steps_on_the_meta_device(name):
    """Every tensor a step creates must live on the model's device and no step may read one back: on ``meta``
    either is an error. Three steps cover LookSAM's SAM and reuse steps and RST's both kinds."""
    if name in META_NEEDS_HOST:
        pytest.skip(META_NEEDS_HOST[name])
    model, x, y = toy(0, bn=True)
    model = model.to("meta")
    opt = _optimizer(name, model)
    c = StepClosure(model, "classification", device="meta")
    c.set_batch(x, y)
    c.set_validation_batch(x, y)
    for _ in range(3):
        loss = opt.step(c)
    assert loss.device.type == "meta"
    assert all(p.device.type == "meta" for p in model.parameters())
    assert all(t.device.type == "meta" for s in opt.state.values() for t in s.values() if torch.is_tensor(t))
    assert all(t.device.type in ("meta", "cpu") for s in opt.base.state.values() for t in s.values())


def _finite_state(opt) -> bool:
    tensors = [t for s in (*opt.state.values(), *opt.base.state.values()) for t in s.values() if torch.is_tensor(t)]
    extra = opt.extra_state()  # what resumes (AE-SAM's logged ||g||^2 of the skipped step is inf, rightly)
    values = [*extra.values(), *(v for d in extra.values() if isinstance(d, dict) for v in d.values())]
    scalars = [v for v in values if isinstance(v, float)]
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point()) and all(
        math.isfinite(v) or v == -math.inf for v in scalars)


@pytest.mark.parametrize("where", ["first", "every"])
@pytest.mark.parametrize("name", METHODS)
def test_an_fp16_overflow_skips_the_step_and_leaves_no_nan(name, where):
    """An inf in a gradient (the first pass of a step, or every pass): the step is skipped, the weights and
    buffers stay as they were, the loss scale backs off, and no NaN/inf reaches the method's state."""
    model, x, y = toy(0, bn=True)
    opt = _optimizer(name, model)
    opt.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    c = StepClosure(model, "classification", scaler=opt.scaler)
    c.set_batch(x, y)
    c.set_validation_batch(x, y)
    armed = {"passes": 0}
    weight = model[0].weight

    def poison(g: torch.Tensor) -> torch.Tensor:
        if armed["passes"] > 0:
            armed["passes"] -= 1
            return torch.full_like(g, math.inf)
        return g

    weight.register_hook(poison)
    opt.step(c)  # a finite step first: momentum, g_v, beta, the EMA exist
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scale, skipped = opt.scaler.get_scale(), opt.skipped_steps
    armed["passes"] = 1 if where == "first" else 10**6
    opt.step(c)
    armed["passes"] = 0
    after = model.state_dict()
    for key, value in before.items():
        if "running" in key or "num_batches" in key:
            continue  # the statistics of the step's first forward are not part of the update
        assert torch.equal(after[key], value), key
    assert opt.skipped_steps == skipped + 1
    assert opt.scaler.get_scale() == scale / 2
    assert _finite_state(opt)
    opt.step(c)  # and training goes on
    assert opt.skipped_steps == skipped + 1
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
