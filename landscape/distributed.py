"""torch.distributed helpers: set-up from torchrun's environment, rank queries, sums."""
from __future__ import annotations

import contextlib
import os
from typing import Iterator

import torch
import torch.distributed as dist


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_type: str) -> None:
    """Join the process group torchrun describes (nccl on CUDA, from this rank's GPU: :func:`local_gpu_index`;
    gloo otherwise); no-op if single."""
    if launched_by_torchrun() and not dist.is_initialized():
        if device_type == "cuda":  # else every rank's communicator sits on cuda:0 ("Duplicate GPU detected")
            torch.cuda.set_device(local_gpu_index())
        dist.init_process_group(backend="nccl" if device_type == "cuda" else "gloo")


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (identity when single-process), on the device the backend takes."""
    if is_distributed():
        place = collective_device(t.device, dist.get_backend())
        if place == t.device:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)
        else:  # a CPU tensor under nccl, an MPS tensor under gloo: reduce a copy where the backend takes it
            moved = t.to(place)
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            t.copy_(moved)
    return t


@torch.no_grad()
def broadcast_buffers(module: torch.nn.Module, src: int = 0) -> None:
    """Every rank takes rank ``src``'s buffers of ``module`` (BatchNorm running statistics and counters), one
    flat broadcast per dtype: what DDP's ``broadcast_buffers`` does before a synced forward. No-op single."""
    if not is_distributed():
        return
    from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

    groups: dict[tuple[torch.dtype, torch.device], list[torch.Tensor]] = {}
    for b in module.buffers():
        groups.setdefault((b.dtype, b.device), []).append(b)
    backend = dist.get_backend()
    for (_, device), group in groups.items():
        flat = _flatten_dense_tensors(group).to(collective_device(device, backend))
        dist.broadcast(flat, src)
        torch._foreach_copy_(group, [t.to(device) for t in _unflatten_dense_tensors(flat, group)])


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``model`` data-parallel over the process group, for a :class:`~optimizers.closure.StepClosure`: the
    closure broadcasts rank 0's buffers after every step that moved them (``sync_buffers``), so DDP's own
    broadcast before each synced forward is off (it would repeat it, and it misses the methods whose passes
    all run under ``no_sync`` or on the eager module)."""
    return torch.nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None, broadcast_buffers=False)


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def local_gpu_index() -> int:
    """This process's GPU among the visible ones: ``LOCAL_RANK`` when several GPUs are visible (torchrun on a
    multi-GPU node), 0 when one is (a launcher that gives each process its own ``CUDA_VISIBLE_DEVICES``)."""
    visible = torch.cuda.device_count()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if visible <= 1:
        return 0
    if local >= visible:
        raise ValueError(f"LOCAL_RANK {local} but only {visible} GPUs are visible: start at most {visible} "
                         "processes per node (torchrun --nproc-per-node)")
    return local


def local_device(preference: str = "auto") -> torch.device:
    """``auto``: cuda (this rank's GPU, :func:`local_gpu_index`) > mps > cpu; ``cuda`` without an index: this
    rank's GPU; otherwise the named device (``cuda:1``, ``cpu``, ``mps``)."""
    if preference == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_gpu_index())
        if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    device = torch.device(preference)
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", local_gpu_index())
    return device


def setup_device(preference: str = "auto") -> torch.device:
    """This rank's device (:func:`local_device`), made the current CUDA device, and the process group torchrun
    describes joined (nccl on CUDA: after ``set_device``, so every rank talks from its own GPU)."""
    device = local_device(preference)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    init_from_env(device.type)
    return device


def free_memory(device: torch.device | str) -> int:
    """Bytes a new allocation on ``device`` can use. CUDA: the driver's free memory plus what PyTorch's caching
    allocator holds reserved but unused (``memory_reserved - memory_allocated``: free to this process, invisible
    to ``mem_get_info``); elsewhere the available RAM (1 GiB if unknown)."""
    device = torch.device(device)
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        cached = torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
        return int(free) + max(0, int(cached))
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return 1 << 30


def accumulation_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype of sums and statistics on ``device``: float64, except float32 on MPS (it has no float64)."""
    return torch.float32 if torch.device(device).type == "mps" else torch.float64


def collective_device(device: torch.device | str, backend: str) -> torch.device:
    """Where a tensor on ``device`` must be for a collective of ``backend``: nccl takes tensors on this rank's
    GPU only, gloo CPU (or CUDA) tensors only."""
    device = torch.device(device)
    if backend == "nccl":
        return device if device.type == "cuda" else torch.device("cuda", torch.cuda.current_device())
    return device if device.type in ("cpu", "cuda") else torch.device("cpu")


@contextlib.contextmanager
def process_group() -> Iterator[None]:
    """Around a command: under ``torchrun``, wait for every rank at the end and leave the process
    group before exiting (a rank exiting with a live gloo group can abort); after an error, only leave it."""
    try:
        yield
    except BaseException:
        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        raise
    if dist.is_available() and dist.is_initialized():
        import gc

        gc.collect()  # DDP wrappers still alive at teardown can abort the process
        dist.barrier()
        dist.destroy_process_group()
