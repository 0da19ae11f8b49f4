"""Crop-and-flip augmentation and its seeding by the batch loader (also under data parallelism)."""
from __future__ import annotations

import pytest
import torch

from landscape.data.augment import CropFlip, pad_fill
from landscape.data.loader import BatchLoader


def images(n: int = 6, c: int = 3, h: int = 8, w: int = 10, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, c, h, w, generator=torch.Generator().manual_seed(seed))


def g(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_flip_is_a_flip():
    x = images()
    assert torch.equal(CropFlip(padding=0, flip=True, flip_p=1.0)(x, g(0)), x.flip(-1))
    assert torch.equal(CropFlip(padding=0, flip=True, flip_p=0.0)(x, g(0)), x)
    out = CropFlip(padding=0)(images(200), g(1))
    flipped = [bool(torch.equal(o, i.flip(-1))) for o, i in zip(out, images(200))]
    same = [bool(torch.equal(o, i)) for o, i in zip(out, images(200))]
    assert all(a != b for a, b in zip(flipped, same)) and 70 < sum(flipped) < 130


def test_crop_keeps_shape_and_is_a_window_of_the_padded_image():
    x, p = images(), 2
    fill = [-1.0, -2.0, -3.0]
    out = CropFlip(padding=p, flip=False, fill=fill)(x, g(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    padded = torch.tensor(fill).view(1, 3, 1, 1).expand(len(x), 3, 8 + 2 * p, 10 + 2 * p).clone()
    padded[:, :, p:-p, p:-p] = x
    offsets = []
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)
                if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 10])]
        assert hits, f"image {i} is not a crop of its padded self"
        offsets.append(hits[0])
    assert len(set(offsets)) > 1


def test_deterministic_given_the_generator_and_different_otherwise():
    x, aug = images(32), CropFlip()
    assert torch.equal(aug(x, g(5)), aug(x, g(5)))
    assert not torch.equal(aug(x, g(5)), aug(x, g(6)))


def test_pad_fill_is_normalized_black():
    assert pad_fill([0.5, 0.25], [0.5, 0.25]) == [-1.0, -1.0]
    with pytest.raises(ValueError, match="fill has 2 values for 3 channels"):
        CropFlip(fill=[0.0, 0.0])(images(), g(0))


def _augmented_batches(loader: BatchLoader, epoch: int) -> list[torch.Tensor]:
    loader.set_epoch(epoch)
    return [xb for xb, _ in loader]


def test_loader_seeds_augmentation_per_epoch_and_batch():
    x = images(12, h=6, w=6)
    y = torch.arange(12)
    loader = BatchLoader(x, y, 4, shuffle=False, seed=1, augment=CropFlip(padding=2))
    e0, e0_again, e1 = _augmented_batches(loader, 0), _augmented_batches(loader, 0), _augmented_batches(loader, 1)
    assert all(torch.equal(a, b) for a, b in zip(e0, e0_again))
    assert not all(torch.equal(a, b) for a, b in zip(e0, e1))  # differs across epochs
    # Differs across batches: the same images in two batches get different crops.
    same = BatchLoader(x[:4].repeat(2, 1, 1, 1), y[:8], 4, augment=CropFlip(padding=2))
    b0, b1 = _augmented_batches(same, 0)
    assert not torch.equal(b0, b1)
    # Resuming at batch 2 gives the same third batch.
    loader.set_epoch(0, start_batch=2)
    assert torch.equal(next(iter(loader))[0], e0[2])


def test_data_parallel_shards_see_the_single_process_augmentation():
    x, y = images(16, h=6, w=6), torch.arange(16)
    single = BatchLoader(x, y, 8, shuffle=True, seed=4, augment=CropFlip(padding=2), drop_last=True)
    ranks = [BatchLoader(x, y, 8, shuffle=True, seed=4, augment=CropFlip(padding=2), drop_last=True, rank=r,
                         world_size=2) for r in range(2)]
    for (xs, ys), (x0, y0), (x1, y1) in zip(single, *ranks):
        assert torch.equal(xs[0::2], x0) and torch.equal(xs[1::2], x1)
        assert torch.equal(ys[0::2], y0) and torch.equal(ys[1::2], y1)


class _Counting(CropFlip):
    """CropFlip that records how many images each call augments."""

    def __call__(self, x, generator, rows=None, total=None):
        self.sizes.append(len(x))
        return super().__call__(x, generator, rows=rows, total=total)


def test_each_rank_augments_its_own_shard_only():
    """Under DDP every rank used to augment the whole global batch; now it augments its rows only, with the whole
    batch's draws, so the images stay those of one process (also for 3 ranks and an uneven tail)."""
    x, y = images(22, h=6, w=6), torch.arange(22)
    single = BatchLoader(x, y, 9, shuffle=True, seed=4, augment=CropFlip(padding=2, fill=-1.0))
    for world in (2, 3):
        augments = [_Counting(padding=2, fill=-1.0) for _ in range(world)]
        for a in augments:
            object.__setattr__(a, "sizes", [])
        ranks = [BatchLoader(x, y, 9, shuffle=True, seed=4, augment=augments[r], rank=r, world_size=world)
                 for r in range(world)]
        for (xs, ys), *shards in zip(single, *ranks):
            for r, (xr, yr) in enumerate(shards):
                assert torch.equal(xs[r::world], xr) and torch.equal(ys[r::world], yr)
        for r, a in enumerate(augments):  # batches of 9, 9 and a tail of 4
            assert a.sizes == [len(range(r, n, world)) for n in (9, 9, 4)]


def test_an_augmentation_without_rows_still_sees_the_global_batch():
    x, y = images(8, h=6, w=6), torch.arange(8)
    seen = []

    def plain(xb, generator):
        seen.append(len(xb))
        return CropFlip(padding=1)(xb, generator)

    ref = BatchLoader(x, y, 8, seed=2, augment=CropFlip(padding=1))
    shard = BatchLoader(x, y, 8, seed=2, augment=plain, rank=1, world_size=2)
    assert torch.equal(next(iter(shard))[0], next(iter(ref))[0][1::2]) and seen == [8]


def test_batches_for_a_gpu_come_from_pinned_memory_without_blocking(monkeypatch):
    from landscape.data.loader import pins_memory

    assert pins_memory(torch.device("cuda", 0)) and not pins_memory(torch.device("cpu"))
    assert not pins_memory(torch.device("mps")) and not pins_memory(None)
    calls = []
    monkeypatch.setattr(torch.Tensor, "pin_memory", lambda self: calls.append("pin") or self)
    to = torch.Tensor.to

    def fake_to(self, *args, **kwargs):  # no GPU here: record the copy, keep the tensor on the CPU
        if args and torch.device(args[0]).type == "cuda":
            calls.append(("to", torch.device(args[0]), kwargs.get("non_blocking")))
            return self
        return to(self, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "to", fake_to)
    x, y = images(8, h=6, w=6), torch.arange(8)
    loader = BatchLoader(x, y, 4, augment=CropFlip(padding=1), device="cuda:1")
    next(iter(loader))
    assert calls == ["pin", ("to", torch.device("cuda", 1), True)] * 2  # x and y
    cpu = BatchLoader(x, y, 4, device="cpu")
    calls.clear()
    next(iter(cpu))
    assert calls == []
