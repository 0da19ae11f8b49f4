"""AMP per method (optimizers/precision.py): ``amp="auto"`` keeps small-radius and difference methods in float32.

The deviation tests emulate CUDA's bf16 autocast with CPU autocast (``torch.autocast("cpu", torch.bfloat16)``)
against a float32 reference: ``||u_bf16 - u_fp32|| / ||u_fp32 - g||`` (benchmarks/bench_amp.py)."""
from __future__ import annotations

import warnings

import pytest
import torch

from benchmarks.bench_amp import deviation
from optimizers import available_optimizers
from optimizers.precision import FULL_PRECISION, MAX_DEVIATION, REDUCED_PRECISION_OK, resolve_amp


def test_every_method_declares_its_precision():
    methods = set(available_optimizers())
    assert set(FULL_PRECISION) | REDUCED_PRECISION_OK == methods
    assert not set(FULL_PRECISION) & REDUCED_PRECISION_OK


def test_auto_is_bf16_on_cuda_except_for_full_precision_methods():
    assert resolve_amp("auto", "cuda", "asam") == ("bf16", None)
    assert resolve_amp("auto", "cuda", "sgd") == ("bf16", None)
    assert resolve_amp("auto", "cpu", "layer_sam") == ("none", None)
    assert resolve_amp("auto", "mps", "sam") == ("none", None)
    for name in FULL_PRECISION:
        amp, note = resolve_amp("auto", "cuda", name)
        assert amp == "none" and name in note and "--amp bf16" in note


def test_explicit_reduced_precision_is_honoured_with_a_warning():
    with pytest.warns(UserWarning, match="--amp bf16 with gnr"):
        assert resolve_amp("bf16", "cuda", "gnr") == ("bf16", None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert resolve_amp("fp16", "cuda", "asam") == ("fp16", None)
        assert resolve_amp("none", "cuda", "gnr") == ("none", None)
    with pytest.raises(ValueError, match="amp must be auto, none, bf16 or fp16, got 'fp8'"):
        resolve_amp("fp8", "cuda", "sam")


def test_trainer_warns_on_bf16_for_a_full_precision_method(tmp_path):
    from optimizers.config import TrainConfig
    from optimizers.trainer import Trainer

    cfg = TrainConfig(model="tests.fixtures:tiny_mlp", data="tests.fixtures:blobs", steps=1, batch_size=16,
                      lr=0.1, seed=0, eval_batch_size=32, optimizer="layer_sam", amp="bf16", device="cpu")
    trainer = Trainer(cfg, tmp_path / "r.pt", progress=False)
    with pytest.warns(UserWarning, match="--amp bf16 with layer_sam"):
        trainer._setup()
    assert trainer.amp == "bf16" and trainer.closure.autocast_dtype == torch.bfloat16


@pytest.mark.parametrize("name", ["layer_sam", "multistep_defense"])
def test_bf16_swamps_the_sharpness_part_of_full_precision_methods(name):
    """The reason for the table: emulated bf16 moves the update by more than MAX_DEVIATION times its sharpness
    part, while float32 (what auto picks) reproduces the fp32 reference exactly."""
    torch.set_num_threads(1)
    assert deviation(name, torch.bfloat16, seed=0) > MAX_DEVIATION
    assert deviation(name, None, seed=0) == 0.0


def test_bf16_keeps_the_sharpness_part_of_asam():
    assert deviation("asam", torch.bfloat16, seed=0) < MAX_DEVIATION


def test_sam_family_trains_in_float32_under_auto_and_bf16_stays_available():
    """SAM's bf16 update moved by 0.28-0.32 of its sharpness part: auto picks float32 with a one-line notice;
    an explicit --amp bf16 is honoured (with the warning)."""
    torch.set_num_threads(1)
    assert deviation("sam", torch.bfloat16, seed=0) > MAX_DEVIATION
    for name in ("sam", "gsam", "looksam", "ae_sam", "rst", "lets_sam", "esam"):
        amp, note = resolve_amp("auto", "cuda", name)
        assert amp == "none" and "\n" not in note and note.startswith(f"amp auto: {name} trains in float32")
        with pytest.warns(UserWarning, match=f"--amp bf16 with {name}"):
            assert resolve_amp("bf16", "cuda", name) == ("bf16", None)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted((set(FULL_PRECISION) | REDUCED_PRECISION_OK) - {"sgd", "adamw", "rst"}))
def test_declared_precision_matches_the_emulated_bf16_deviation(name):
    torch.set_num_threads(1)
    d = max(deviation(name, torch.bfloat16, seed=s) for s in range(3))
    assert (d > MAX_DEVIATION) == (name in FULL_PRECISION), d
