"""Shared pieces of the optimizer tests: a float64 toy problem, a closure over it, and its gradient."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from optimizers.closure import StepClosure


def toy(seed: int = 0, bn: bool = False) -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    """A float64 MLP (optionally with BatchNorm) and one batch of 3-class data."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [nn.Linear(4, 6)]
    if bn:
        layers.append(nn.BatchNorm1d(6))
    layers += [nn.Tanh(), nn.Linear(6, 3)]
    model = nn.Sequential(*layers).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(3, (10,))
    return model, x, y


def closure_for(model: nn.Module, x: torch.Tensor, y: torch.Tensor, **kwargs) -> StepClosure:
    c = StepClosure(model, "classification", **kwargs)
    c.set_batch(x, y)
    return c


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def grad_at(model: nn.Module, w: dict[str, torch.Tensor], x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    """``grad L_B(w)`` by autograd on a functional call (train mode, buffers of ``model`` not touched)."""
    leaves = {n: t.detach().clone().requires_grad_(True) for n, t in w.items()}
    buffers = {n: b.detach().clone() for n, b in model.named_buffers()}
    loss = nn.functional.cross_entropy(functional_call(model, {**leaves, **buffers}, (x,)), y)
    grads = torch.autograd.grad(loss, list(leaves.values()))
    return dict(zip(leaves, grads))


def flat(d: dict[str, torch.Tensor]) -> torch.Tensor:
    return torch.cat([t.reshape(-1) for t in d.values()])


# -- hand-written references ----------------------------------------------------------------
LR, MOMENTUM, WD = 0.1, 0.9, 5e-4

# The single-pass-perturbation family, with hyper-parameters large enough that every perturbation
# matters on the toy problems (tests/test_optimizers_engineering.py, tests/test_family_contract.py).
FAMILY = {
    "sam": {"rho": 0.3},
    "asam": {"rho": 1.0},
    "gsam": {"rho_max": 0.3, "rho_min": 0.1, "alpha": 0.4},
    "asam_ascent": {"rho_max": 1.0, "rho_min": 0.5, "alpha": 0.4},
    "ga_sam": {"rho": 0.05, "ascent_steps": 2},
    "layer_sam": {"rho": 0.05},
    "multistep_defense": {"rho": 0.02, "ascent_steps": 2},
}


def sgd_reference(w: dict, grads_fn, steps: int, lrs: list[float] | None = None) -> dict:
    """SGD with momentum and L2 weight decay; ``grads_fn(w, t) -> the update gradient`` of step ``t``."""
    buf = None
    for t in range(steps):
        lr = LR if lrs is None else lrs[t]
        d = grads_fn(w, t)
        g = {n: d[n] + WD * w[n] for n in w}
        buf = g if buf is None else {n: MOMENTUM * buf[n] + g[n] for n in w}
        w = {n: w[n] - lr * buf[n] for n in w}
    return w


def dot(a: dict, b: dict) -> torch.Tensor:
    return flat(a) @ flat(b)


def assert_close(a: dict, b: dict, tol: float = 1e-10) -> None:
    diff = float((flat(a) - flat(b)).abs().max())
    assert diff <= tol, diff


def assert_equal(a: dict, b: dict) -> None:
    assert all(torch.equal(a[n], b[n]) for n in a), float((flat(a) - flat(b)).abs().max())


def run_steps(name: str, steps: int = 2, seed: int = 0, bn: bool = False, lrs: list[float] | None = None,
              group_keys: dict | None = None, closure_kwargs: dict | None = None, **hp):
    """Build ``name`` on the toy problem (SGD, LR/MOMENTUM/WD), take ``steps`` closure steps
    (the lr of step ``t`` is ``lrs[t]``); returns ``(model, x, y, w0, w_after, optimizer)``."""
    from optimizers import build_optimizer

    model, x, y = toy(seed, bn=bn)
    w0 = params_of(model)
    opt = build_optimizer(name, model.parameters(),
                          base_kwargs={"lr": LR, "momentum": MOMENTUM, "weight_decay": WD}, **hp)
    for group in opt.param_groups:
        group.update(group_keys or {})
    c = closure_for(model, x, y, **(closure_kwargs or {}))
    for t in range(steps):
        if lrs is not None:
            for group in opt.param_groups:
                group["lr"] = lrs[t]
        opt.step(c)
    return model, x, y, w0, params_of(model), opt
