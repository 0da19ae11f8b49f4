"""benchmarks/gpu_check.py without a GPU: it skips cleanly (exit 0), and its sync count runs on the CPU."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"


def test_skips_cleanly_without_a_gpu():
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CUDA_VISIBLE_DEVICES": ""}
    for extra in ([], ["--syncs"], ["--recurrent"]):
        r = subprocess.run([sys.executable, str(SCRIPT), *extra], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stderr[-2000:]
        assert "no CUDA GPU visible; skipped" in r.stdout and "FAIL" not in r.stdout


def test_sync_count_covers_every_optimizer_on_the_cpu(capsys):
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    from optimizers import available_optimizers

    torch.set_num_threads(1)
    assert gpu_check.count_syncs("cpu") == 0
    out = capsys.readouterr().out
    assert all(f"syncs per step {name} " in out for name in available_optimizers())


def test_recurrent_products_check_passes_on_the_cpu(capsys):
    """The device check of recurrent layers' products, run on the CPU (float32 against float64)."""
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    assert gpu_check.recurrent_products("cpu") == 0
    out = capsys.readouterr().out
    assert out.count("relative error") == 6 and "inf" not in out
