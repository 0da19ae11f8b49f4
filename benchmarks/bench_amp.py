"""How far reduced-precision autocast moves the sharpness part of each method's update.

For every method at its default hyper-parameters, one step from the same weights and batch with SGD
(lr 1, no momentum, no weight decay), so the update ``u`` is the method's final gradient. The sharpness part
is ``s = u - g`` with ``g`` the plain float32 gradient; the deviation of a precision is
``||u_amp - u_fp32|| / ||u_fp32 - g||``: 1 means the sharpness signal is as large as the rounding noise.
bf16 is emulated with CPU autocast (``torch.autocast("cpu", dtype=torch.bfloat16)``), which rounds the
same matmul/conv inputs to bf16 as CUDA autocast; fp16 autocast on the CPU likewise.

    OMP_NUM_THREADS=1 python benchmarks/bench_amp.py [--dtype bf16 fp16] [--seeds 3]
"""
from __future__ import annotations

import argparse
import copy
import math

import torch
import torch.nn as nn

from optimizers import available_optimizers, build_optimizer
from optimizers.closure import StepClosure

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def small_cnn(seed: int) -> nn.Module:
    """A CIFAR-shaped conv net with BatchNorm (3x16x16 inputs, 10 classes)."""
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
        nn.Flatten(), nn.Linear(32, 10))


def batch(seed: int, n: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed + 1000)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(10, (n,), generator=g)


def update(model: nn.Module, name: str, data: tuple, val: tuple, autocast: torch.dtype | None,
           seed: int, **hparams) -> torch.Tensor:
    """The flat update ``w0 - w1`` of one step of ``name`` (SGD, lr 1) on a copy of ``model``."""
    m = copy.deepcopy(model)
    opt = build_optimizer(name, m.parameters(), base="sgd",
                          base_kwargs={"lr": 1.0, "momentum": 0.0, "weight_decay": 0.0}, **hparams)
    if hasattr(opt, "configure_training"):
        opt.configure_training(total_steps=10, seed=seed)
    closure = StepClosure(m, "classification", autocast_dtype=autocast)
    closure.set_batch(*data)
    closure.set_validation_batch(*val)
    w0 = torch.cat([p.detach().reshape(-1).clone() for p in m.parameters()])
    torch.manual_seed(seed)
    opt.step(closure)
    return w0 - torch.cat([p.detach().reshape(-1) for p in m.parameters()])


def deviation(name: str, dtype: torch.dtype | None, seed: int = 0, **hparams) -> float:
    """``||u_amp - u_fp32|| / ||u_fp32 - g_fp32||`` of one step (nan when the step has no sharpness part)."""
    model, data, val = small_cnn(seed), batch(seed), batch(seed + 1)
    g = update(model, "sgd", data, val, None, seed)
    u32 = update(model, name, data, val, None, seed, **hparams)
    ulow = update(model, name, data, val, dtype, seed, **hparams)
    signal = float((u32 - g).norm())
    return math.nan if signal <= 1e-6 * float(g.norm()) else float((ulow - u32).norm()) / signal


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp16"])
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--methods", nargs="+", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    methods = args.methods or [m for m in available_optimizers() if m not in ("sgd", "adamw")] + [
        "gnr:hvp=forward", "gnr:hvp=central"]
    print("method".ljust(20) + "".join(f"{d:>26}" for d in args.dtype)
          + "   (median over seeds [min, max], n: steps with a sharpness part)")
    for spec in methods:  # name or name:hparam=value (a JSON value)
        name, _, setting = spec.partition(":")
        hparams = {}
        if setting:
            key, _, value = setting.partition("=")
            hparams[key] = value
        cells = []
        for d in args.dtype:
            v = sorted(x for x in (deviation(name, DTYPES[d], seed=s, **hparams) for s in range(args.seeds))
                       if not math.isnan(x))  # a step with no sharpness part (RST's plain steps) is left out
            cells.append(f"{v[len(v) // 2]:6.3f} [{v[0]:.3f}, {v[-1]:.3f}] n={len(v)}" if v else "n/a")
        print(spec.ljust(20) + "".join(f"{c:>26}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
