"""Run by tests/test_landscapes_surface.py alone or under torchrun (2 gloo ranks): a surface file.

Every rank also writes ``OUT.rankN.json`` saying whether the surface it got back is complete."""
from __future__ import annotations

import gc
import json
import sys

import torch
import torch.distributed as dist

from landscape import distributed as D
from landscape.landscapes.directions import random_directions
from landscape.landscapes.surface import axis, compute_surface, make_objectives
from tests.curvature_helpers import bn_net
from tests.fixtures import blobs


def main(out: str) -> None:
    D.init_from_env("cpu")
    d = blobs(n_train=41)
    objs = make_objectives(bn_net(), d, ["train", "test"], dtype=torch.float64, batch_size=16)
    dirs = random_directions(objs["train"], 2, seed=1)
    # 7 x 5 = 35 points in chunks of 3: 12 chunks, the last one short; then the test split's surface
    # with an automatic chunk size (rank 0's choice, broadcast)
    s = compute_surface(objs, dirs, [axis(-1, 1, 7), axis(-1, 0.5, 5)], chunk_size=3, path=out)
    auto = compute_surface({"test": objs["test"]}, dirs, [axis(-1, 1, 4), axis(-1, 1, 3)], chunk_size="auto",
                           path=f"{out}.auto.npz")
    assert auto.complete
    with open(f"{out}.rank{D.rank()}.json", "w") as f:
        json.dump({"complete": s.complete}, f)
    if dist.is_initialized():  # every rank done before the group goes (a rank leaving early can abort gloo)
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
