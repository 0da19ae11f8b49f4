"""Device policy without a GPU: the CUDA calls are mocked (landscape/distributed.py)."""
from __future__ import annotations

import argparse
import os

import pytest
import torch

from landscape import distributed as D


@pytest.fixture
def gpus(monkeypatch):
    """``gpus(n, local_rank)``: pretend ``n`` GPUs are visible to this process, launched as ``local_rank``;
    ``torch.cuda.set_device`` records its argument (it refuses an unindexed device, like the real one)."""
    current: list[torch.device] = []

    def set_device(device):
        device = torch.device("cuda", device) if isinstance(device, int) else torch.device(device)
        if device.index is None:
            raise ValueError("Expected a torch.device with a specified index or an integer")
        current.append(device)

    def configure(n: int, local_rank: int | None) -> list[torch.device]:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: n > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: n)
        monkeypatch.setattr(torch.cuda, "set_device", set_device)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: current[-1].index if current else 0)
        if local_rank is None:
            monkeypatch.delenv("LOCAL_RANK", raising=False)
        else:
            monkeypatch.setenv("LOCAL_RANK", str(local_rank))
        monkeypatch.setenv("WORLD_SIZE", "1")  # no process group is joined
        return current

    return configure


@pytest.mark.parametrize("preference", ["auto", "cuda"])
def test_rank_gpu_when_several_are_visible(gpus, preference):
    gpus(4, local_rank=2)
    assert D.local_device(preference) == torch.device("cuda", 2)


@pytest.mark.parametrize("preference", ["auto", "cuda"])
def test_one_visible_gpu_per_process_is_cuda0(gpus, preference):
    gpus(1, local_rank=3)  # e.g. SLURM giving each task its own CUDA_VISIBLE_DEVICES
    assert D.local_device(preference) == torch.device("cuda", 0)


def test_explicit_index_and_other_devices_are_kept(gpus):
    gpus(4, local_rank=2)
    assert D.local_device("cuda:1") == torch.device("cuda", 1)
    assert D.local_device("cpu") == torch.device("cpu")
    assert D.local_device("mps") == torch.device("mps")


def test_more_processes_than_gpus_is_a_one_line_error(gpus):
    gpus(2, local_rank=5)
    with pytest.raises(ValueError, match="LOCAL_RANK 5 but only 2 GPUs"):
        D.local_device("cuda")


def test_setup_device_makes_the_rank_gpu_current(gpus):
    current = gpus(2, local_rank=1)
    assert D.setup_device("cuda") == torch.device("cuda", 1)
    assert current == [torch.device("cuda", 1)]


def test_landscape_commands_set_an_indexed_device(gpus):
    """``--device cuda`` reached ``torch.cuda.set_device(torch.device("cuda"))``, which raises."""
    from landscape.cli.landscape_args import setup_device

    current = gpus(1, local_rank=None)
    assert setup_device(argparse.Namespace(device="cuda")) == torch.device("cuda", 0)
    assert current == [torch.device("cuda", 0)]


def test_accumulation_dtype_is_float32_on_mps_only():
    assert D.accumulation_dtype("mps") == torch.float32
    assert D.accumulation_dtype("cpu") == torch.float64
    assert D.accumulation_dtype(torch.device("cuda", 1)) == torch.float64


def test_collective_placement(gpus):
    gpus(4, local_rank=3)
    torch.cuda.set_device(torch.device("cuda", 3))
    assert D.collective_device("cpu", "nccl") == torch.device("cuda", 3)  # nccl takes CUDA tensors only
    assert D.collective_device("cuda:3", "nccl") == torch.device("cuda", 3)
    assert D.collective_device("mps", "gloo") == torch.device("cpu")  # gloo takes CPU (or CUDA) tensors
    assert D.collective_device("cpu", "gloo") == torch.device("cpu")


def test_deterministic_training_fixes_the_cublas_workspace(monkeypatch, tmp_path):
    """``deterministic=True`` without ``CUBLAS_WORKSPACE_CONFIG`` left cuBLAS nondeterministic on a GPU."""
    from optimizers.config import TrainConfig
    from optimizers.trainer import Trainer

    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    cfg = TrainConfig(model="tests.fixtures:tiny_mlp", data="tests.fixtures:blobs", steps=1, batch_size=16,
                      seed=0, eval_batch_size=32, device="cpu", deterministic=True)
    Trainer(cfg, tmp_path / "r.pt", progress=False)._setup()
    assert torch.are_deterministic_algorithms_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"


def test_resume_restores_each_rank_its_own_cuda_rng(monkeypatch, tmp_path):
    """Two ranks on cuda:0 and cuda:1 (CUDA RNG and the rank gather mocked): rank 0 writes the resume state;
    rank 1 must get its own CUDA RNG state back from it, not rank 0's."""
    from optimizers.config import TrainConfig
    from optimizers.trainer import Trainer

    cfg = TrainConfig(model="tests.fixtures:tiny_mlp", data="tests.fixtures:blobs", steps=1, batch_size=16,
                      seed=0, eval_batch_size=32, device="cpu")
    trainer = Trainer(cfg, tmp_path / "r.pt", progress=False)
    trainer._setup()
    cuda_states = [torch.full((8,), 10, dtype=torch.uint8), torch.full((8,), 11, dtype=torch.uint8)]
    restored: list[torch.Tensor] = []
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device: cuda_states[torch.device(device).index].clone())
    monkeypatch.setattr(torch.cuda, "set_rng_state", lambda state, device: restored.append(state))
    monkeypatch.setattr(D, "world_size", lambda: 2)
    monkeypatch.setattr(D, "barrier", lambda: None)
    # all_gather_object from rank 0: its own state, then rank 1's (its CUDA stream is cuda:1's)
    monkeypatch.setattr(trainer, "_gather_rng", lambda mine: [mine, cuda_states[1] if mine.numel() == 8 else mine])
    trainer.device = torch.device("cuda", 0)
    monkeypatch.setattr(D, "rank", lambda: 0)
    monkeypatch.setattr(D, "is_main", lambda: True)
    trainer._save_resume(0, 0, 0, [], {})
    trainer.device = torch.device("cuda", 1)
    monkeypatch.setattr(D, "rank", lambda: 1)
    trainer._load_resume()
    assert len(restored) == 1 and torch.equal(restored[0], cuda_states[1])


def test_study_workers_spread_over_the_visible_gpus(monkeypatch):
    """Every study worker landed on cuda:0; now worker ``i`` sees only GPU ``i mod n``."""
    import multiprocessing

    from landscape.study.runner import _claim_gpu, visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "4,6")
    assert visible_gpus() == ["4", "6"]
    counter = multiprocessing.get_context("spawn").Value("i", 0)
    seen = []
    for _ in range(3):
        _claim_gpu(counter, ["4", "6"])
        seen.append(os.environ["CUDA_VISIBLE_DEVICES"])
    assert seen == ["4", "6", "4"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "5")
    _claim_gpu(counter, ["5"])  # one GPU: left as it is
    assert os.environ["CUDA_VISIBLE_DEVICES"] == "5"


def test_joining_nccl_sets_the_rank_gpu_first(gpus, monkeypatch):
    """``landscape analyze`` under torchrun joined nccl with every rank on cuda:0 ("Duplicate GPU detected")."""
    import torch.distributed as dist

    current = gpus(4, local_rank=2)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    joined = []
    monkeypatch.setattr(dist, "init_process_group", lambda backend: joined.append((backend, list(current))))
    D.init_from_env("cuda")
    assert joined == [("nccl", [torch.device("cuda", 2)])]


def test_memory_budget_counts_pytorchs_cached_free_memory(monkeypatch):
    """``mem_get_info`` alone misses what the caching allocator holds reserved but unused: free to this process."""
    from landscape.objective.core import _free_memory

    gib = 1 << 30
    seen = []
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda d=None: seen.append(d) or (2 * gib, 80 * gib))
    monkeypatch.setattr(torch.cuda, "memory_reserved", lambda d=None: 30 * gib)
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 10 * gib)
    cuda1 = torch.device("cuda", 1)
    assert D.free_memory(cuda1) == 22 * gib
    assert _free_memory(cuda1) == 22 * gib  # the Objective's chunk and cache budgets
    assert seen == [cuda1, cuda1]
    monkeypatch.setattr(torch.cuda, "memory_allocated", lambda d=None: 31 * gib)  # never below the driver's free
    assert D.free_memory(cuda1) == 2 * gib
