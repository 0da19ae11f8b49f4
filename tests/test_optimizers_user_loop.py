"""The optimizers in a training loop of the user's: ``torch.optim``-style closures (no keywords, in-place
``zero_grad``), schedulers and parameter groups, the manual API, parameters that a pass does not reach."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from optimizers import available_optimizers, build_optimizer
from optimizers.closure import StepClosure

PLAIN = {"esam": {"sds_fraction": 1.0}, "gnr": {"hvp": "central"}}  # without StepClosure's extra passes
USER_LOOP = [m for m in available_optimizers() if not m.startswith("lets")]


def toy(seed: int = 0) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    return model, torch.randn(16, 4, dtype=torch.float64), torch.randint(0, 3, (16,))


def run(name: str, closure_kind: str, steps: int = 3) -> torch.Tensor:
    model, x, y = toy()
    base = {"lr": 0.1} if name == "adamw" else {"lr": 0.1, "momentum": 0.9}
    opt = build_optimizer(name, model.named_parameters(), base_kwargs=base, **PLAIN.get(name, {}))
    if hasattr(opt, "configure_training"):
        opt.configure_training(total_steps=steps)
    if closure_kind == "step":
        closure = StepClosure(model, "classification")
        closure.set_batch(x, y)
    else:
        def closure():
            opt.zero_grad(set_to_none=closure_kind == "none")
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss
    for _ in range(steps):
        opt.step(closure)
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


@pytest.mark.parametrize("name", USER_LOOP)
def test_a_torch_optim_closure_gives_the_step_closures_update(name):
    """A zero-argument closure runs (the method's ``sync`` / ``update_bn`` keywords are dropped), and zeroing the
    gradients in place (``set_to_none=False``) does not reach the gradients a method keeps between passes."""
    reference = run(name, "step")
    for kind in ("none", "zeros"):
        torch.testing.assert_close(run(name, kind), reference, rtol=1e-11, atol=1e-13)


def test_lets_needs_its_validation_pass_before_it_updates():
    model, x, y = toy()
    opt = build_optimizer("lets_sam", model.named_parameters(), base_kwargs={"lr": 0.1})
    before = [p.detach().clone() for p in model.parameters()]

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    with pytest.raises(TypeError, match="validation"):
        opt.step(closure)
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before))


@pytest.mark.parametrize("name", ["sam", "gsam", "ga_sam"])
def test_schedulers_and_added_parameter_groups(name):
    model, x, y = toy()
    extra = nn.Linear(3, 3).double()
    opt = build_optimizer(name, model.named_parameters(), base_kwargs={"lr": 0.1, "momentum": 0.9})
    opt.add_param_group({"params": list(extra.named_parameters()), "lr": 0.01})
    assert set(opt.param_groups[1]) == set(opt.param_groups[0]) and opt.param_groups[1]["lr"] == 0.01
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.5, total_steps=10)  # cycles momentum too

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(extra(model(x)), y)
        loss.backward()
        return loss

    start = extra.weight.detach().clone()
    for _ in range(6):
        opt.step(closure)
        sched.step()
        if name == "gsam":
            assert opt.radius() <= opt.rho_max + 1e-15
    assert not torch.equal(extra.weight, start)


def test_sam_manual_api_equals_step():
    """``loss.backward(); first_step(); loss_at_w_plus_e.backward(); second_step()`` is one SAM step."""
    results = []
    for manual in (False, True):
        model, x, y = toy()
        opt = build_optimizer("sam", model.named_parameters(), base_kwargs={"lr": 0.1})

        def closure():
            opt.zero_grad()
            loss = F.cross_entropy(model(x), y)
            loss.backward()
            return loss

        if manual:
            closure()
            opt.first_step()
            F.cross_entropy(model(x), y).backward()
            opt.second_step(zero_grad=True)
        else:
            opt.step(closure)
        results.append(torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    torch.testing.assert_close(results[1], results[0], rtol=1e-13, atol=1e-15)


class Switching(nn.Module):
    """Block ``a`` on odd forward calls, ``b`` on even ones (stochastic depth, routing); ``idle`` never."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.inp, self.a, self.b = nn.Linear(5, 8), nn.Linear(8, 8), nn.Linear(8, 8)
        self.head, self.idle = nn.Linear(8, 3), nn.Linear(2, 2)
        self.calls = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        block = self.a if self.calls % 2 == 0 else self.b
        self.calls += 1
        return self.head(torch.tanh(block(torch.tanh(self.inp(x)))))


def test_gsam_decomposes_by_parameter_when_a_pass_reaches_other_ones():
    """GSAM's ``g_p - alpha (g - c g_p)`` with a missing ``g`` or ``g_p`` read as zero, parameter by parameter."""
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.arange(16) % 3
    model = Switching().double()
    alpha = 0.4
    opt = build_optimizer("gsam", model.named_parameters(), base_kwargs={"lr": 0.1}, alpha=alpha, rho_max=0.3,
                          rho_min=0.1)
    passes = []

    def closure(**kwargs):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        passes.append({n: torch.zeros_like(p) if p.grad is None else p.grad.clone()
                       for n, p in model.named_parameters()})
        return loss

    opt.compute_gradients(closure)
    g, gp = passes
    c = sum((g[n] * gp[n]).sum() for n in g) / sum((gp[n] ** 2).sum() for n in g)
    for n, p in model.named_parameters():
        if n.startswith("idle"):
            assert p.grad is None
        else:
            torch.testing.assert_close(p.grad, gp[n] - alpha * (g[n] - c * gp[n]), rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("name", ["ga_sam", "gnr", "sam"])
def test_parameters_a_step_does_not_reach_are_not_updated(name):
    x, y = torch.randn(16, 5, dtype=torch.float64), torch.arange(16) % 3
    model = Switching().double()
    opt = build_optimizer(name, model.named_parameters(), base_kwargs={"lr": 0.1, "weight_decay": 0.1},
                          **PLAIN.get(name, {}))

    def closure():
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return loss

    idle = model.idle.weight.detach().clone()
    opt.step(closure)
    assert torch.equal(model.idle.weight, idle)
