"""Run by tests/test_objective.py alone or under torchrun (2 gloo ranks): objective results as JSON."""
from __future__ import annotations

import gc
import json
import sys

import torch
import torch.distributed as dist

from landscape import distributed as D
from landscape.curvature.lanczos import lanczos
from landscape.curvature.trace import hutchinson
from landscape.objective import Objective
from tests.curvature_helpers import bn_net
from tests.fixtures import blobs


class Keyed(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return self.net(input)


def main(out: str) -> None:
    D.init_from_env("cpu")
    d = blobs(n_train=41)  # odd: the two shards differ in size
    obj = Objective(bn_net(), d.x_train.double(), d.y_train, batch_size=6)
    v = torch.randn(obj.num_params, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    ev = obj.evaluate()
    res = {"world_size": D.world_size(), "loss": ev["loss"], "acc": ev["acc"], "grad": obj.grad().tolist(),
           "hv": obj.hvp(v).tolist(), "ggn_v": obj.gvp(v).tolist(), "fisher_v": obj.fvp(v).tolist(),
           "eigenvalues": lanczos(obj, 3, tol=1e-10).eigenvalues.tolist(),
           "trace": hutchinson(obj, max_samples=16, rtol=None).trace}
    # the same data as a stream of dict batches with a criterion: ranks take batches rank::world
    x, y = d.x_train.double(), d.y_train
    batches = [{"input": x[i:i + 5], "labels": y[i:i + 5]} for i in range(0, len(x), 5)]
    stream = Objective(Keyed(obj.model), batches, loss=torch.nn.CrossEntropyLoss())
    res.update({"stream_loss": stream.evaluate()["loss"], "stream_hv": stream.hvp(v).tolist(),
                "stream_fisher_v": stream.fvp(v).tolist(), "stream_samples": stream.num_samples})
    if D.is_main():
        with open(out, "w") as f:
            json.dump(res, f)
    if dist.is_initialized():  # every rank done before the group goes (a rank leaving early can abort gloo)
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
