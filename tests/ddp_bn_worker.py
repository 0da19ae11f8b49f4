"""torchrun worker for tests/test_ddp_buffers.py: every optimizer of ``optimizers/`` steps a float64 BatchNorm MLP
under 2-process gloo DDP (DDP's default wrapper and the trainer's, :func:`landscape.distributed.wrap_ddp`), each rank
on its own shard. Rank 0 writes, per method and wrapper, every rank's BatchNorm buffers after :data:`STEPS` steps and
the statistics plain DDP keeps: rank 0's, i.e. train-mode forwards of rank 0's shard at rank 0's weights before
every step, from the initial buffers."""
from __future__ import annotations

import copy
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

from landscape import distributed as D
from optimizers import available_optimizers, build_optimizer
from optimizers.closure import StepClosure
from tests.optimizer_helpers import toy

STEPS = 5
HPARAMS = {"gsam": {"alpha": 0.4}, "rst": {"prob": 0.5}, "looksam": {"k": 2}, "ae_sam": {"c_start": 0.0}}


def shard(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return 1.5 * torch.randn(8, 4, generator=g, dtype=torch.float64) + seed, torch.randint(3, (8,), generator=g)


def bn_buffers(model: nn.Module) -> torch.Tensor:
    return torch.cat([b.detach().double().reshape(-1) for b in model.buffers()])


def run(name: str, wrapper: str, rank: int, world: int) -> dict:
    model = toy(0, bn=True)[0]
    reference = copy.deepcopy(model)
    fwd = nn.parallel.DistributedDataParallel(model) if wrapper == "ddp" else D.wrap_ddp(model, torch.device("cpu"))
    base = {"lr": 0.01} if name == "adamw" else {"lr": 0.1, "momentum": 0.9}
    opt = build_optimizer(name, model.named_parameters(), base_kwargs=base, **HPARAMS.get(name, {}))
    if hasattr(opt, "configure_training"):
        opt.configure_training(total_steps=STEPS, seed=0)
    c = StepClosure(model, "classification", forward_model=fwd)
    x, y = shard(rank)
    c.set_batch(x, y)
    c.set_validation_batch(*shard(10 + rank))
    for _ in range(STEPS):
        with torch.no_grad():  # plain DDP's statistics: rank 0's shard at the weights of this step
            for p, q in zip(reference.parameters(), model.parameters()):
                p.copy_(q)
            reference.train()(shard(0)[0])
        opt.step(c)
    mine = bn_buffers(model)
    every = [torch.empty_like(mine) for _ in range(world)]
    dist.all_gather(every, mine)
    del fwd, c, opt
    return {"ranks": every, "reference": bn_buffers(reference)}


def main() -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.set_num_threads(1)
    out = {f"{name}/{wrapper}": run(name, wrapper, rank, world)
           for name in available_optimizers() for wrapper in ("ddp", "trainer")}
    if rank == 0:
        torch.save(out, sys.argv[1])
    import gc

    gc.collect()  # DDP wrappers still alive at process-group teardown abort the process
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
