"""Full-split loss and accuracy, weighted by sample count, in eval mode."""
from __future__ import annotations

import torch
import torch.nn as nn

from landscape.distributed import accumulation_dtype, all_reduce_sum, rank, world_size
from landscape.losses import correct_count, loss_fn, target_count


@torch.no_grad()
def evaluate(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    task: str,
    *,
    batch_size: int = 1024,
    device: torch.device | str = "cpu",
    sharded: bool = True,
) -> dict[str, float | None]:
    """``loss = sum_b mean_loss_b * n_b / sum_b n_b`` and ``acc = correct / n`` over the whole split.

    The model is put in eval mode for the pass and its previous mode restored.
    ``sharded``: under torch.distributed each rank takes rows ``rank::world``
    and the sums are all-reduced.
    """
    was_training = model.training
    model.eval()
    if sharded and world_size() > 1:
        x, y = x[rank() :: world_size()], y[rank() :: world_size()]
    f = loss_fn(task, reduction="sum")
    sums = torch.zeros(3, dtype=accumulation_dtype(device), device=device)  # loss*count, correct, count
    try:
        for i in range(0, len(x), batch_size):
            xb, yb = x[i : i + batch_size].to(device), y[i : i + batch_size].to(device)
            out = model(xb)
            n = target_count(task, yb)
            sums[0] += float(f(out, yb))
            c = correct_count(task, out, yb)
            sums[1] += 0 if c is None else c
            sums[2] += n
    finally:
        model.train(was_training)
    if sharded:
        all_reduce_sum(sums)
    total = float(sums[2])
    if total == 0:
        raise ValueError("evaluate() on an empty split")
    return {"loss": float(sums[0]) / total, "acc": None if task == "regression" else float(sums[1]) / total}
