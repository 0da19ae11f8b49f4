"""Tiny models and dense float64 references shared by the curvature tests."""
from __future__ import annotations

import torch
import torch.nn as nn
from torch.func import functional_call

from landscape.losses import loss_fn
from landscape.objective import eval_mode


def bn_net(dim: int = 5, hidden: int = 4, out: int = 3, seed: int = 0) -> nn.Module:
    """Linear -> BatchNorm -> Tanh -> Dropout -> Linear with non-trivial running statistics."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Linear(dim, hidden), nn.BatchNorm1d(hidden), nn.Tanh(), nn.Dropout(0.5),
                        nn.Linear(hidden, out)).double()
    with torch.no_grad():
        net[1].running_mean.uniform_(-0.5, 0.5)
        net[1].running_var.uniform_(0.5, 2.0)
        net[1].weight.uniform_(0.5, 1.5)
        net[1].bias.uniform_(-0.2, 0.2)
    return net.train()


def small_mlp(dim: int = 5, hidden: int = 6, out: int = 3, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, out)).double()


def full_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str = "classification", names=None):
    """``(w0, f)`` with ``f(w)`` the full-batch mean loss of ``model`` (eval mode) at flat ``w``."""
    named = dict(model.named_parameters())
    names = names or list(named)
    shapes = [named[n].shape for n in names]
    sizes = [named[n].numel() for n in names]
    w0 = torch.cat([named[n].detach().reshape(-1) for n in names]).double()
    f_loss = loss_fn(task)

    def f(w: torch.Tensor) -> torch.Tensor:
        params = {n: t.view(s) for n, t, s in zip(names, w.split(sizes), shapes)}
        with eval_mode(model):
            return f_loss(functional_call(model, params, (x,)), y)

    return w0, f


def dense_hessian(model: nn.Module, x: torch.Tensor, y: torch.Tensor, task: str = "classification",
                  names=None) -> torch.Tensor:
    w0, f = full_loss(model, x, y, task, names)
    return torch.autograd.functional.hessian(f, w0)


def snapshot(model: nn.Module) -> dict:
    """Everything a measure must leave alone: state_dict copies, train flags, grads."""
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()},
            "flags": [m.training for m in model.modules()],
            "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()]}


def assert_unchanged(model: nn.Module, before: dict) -> None:
    after = snapshot(model)
    assert after["flags"] == before["flags"]
    for k, v in before["state"].items():
        assert after["state"][k].dtype == v.dtype and torch.equal(after["state"][k], v), k
    assert all((a is None and b is None) or torch.equal(a, b) for a, b in zip(after["grads"], before["grads"]))
