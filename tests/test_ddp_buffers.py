"""BatchNorm statistics under DDP (issue #20): every method leaves the same buffers on every replica, and they are
the statistics plain DDP keeps (rank 0's shard at rank 0's weights, step after step)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from optimizers import available_optimizers

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def buffers(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bn") / "bn.pt"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        str(ROOT / "tests" / "ddp_bn_worker.py"), str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return torch.load(out, weights_only=True)


@pytest.mark.ddp
@pytest.mark.parametrize("wrapper", ["ddp", "trainer"])
@pytest.mark.parametrize("name", available_optimizers())
def test_every_method_keeps_identical_plain_ddp_batchnorm_statistics(buffers, name, wrapper):
    got = buffers[f"{name}/{wrapper}"]
    rank0, rank1 = got["ranks"]
    assert torch.equal(rank0, rank1), f"{name}: BN buffers differ across ranks by {(rank0 - rank1).abs().max():.3g}"
    torch.testing.assert_close(rank0, got["reference"], rtol=0, atol=1e-12)
