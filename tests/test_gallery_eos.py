"""The edge of stability (gallery/eos_training.py --quick): full-batch GD's lambda_max, as tracked during
training, rises towards 2 / lr and hovers there when the lr is large; stays below it when small."""
from __future__ import annotations

import importlib.util
from pathlib import Path

GALLERY = Path(__file__).resolve().parents[1] / "gallery"


def test_full_batch_gd_reaches_and_hovers_at_the_edge_of_stability(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("gallery_eos_training", GALLERY / "eos_training.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out = module.main(["--quick", "--out", str(tmp_path), "--runs", str(tmp_path / "runs")])
    small, large = out["edge_of_stability"]["lr 0.25"], out["edge_of_stability"]["lr 0.55"]
    # lr 0.55: lambda_max starts above 2/lr = 3.64 (4.61), GD falls back below it, sharpens and then
    # oscillates around 2/lr instead of diverging.
    assert large["lambda_max_first"] > 1.2 * large["edge"]
    assert 0.95 <= large["late_mean"] / large["edge"] <= 1.1
    assert 0.85 * large["edge"] <= large["late_min"] and large["late_max"] <= 1.2 * large["edge"]
    assert large["edge_ratio_max"] > 1.0  # it overshoots the edge, and comes back
    # lr 0.25: progressive sharpening far below its edge 2/lr = 8.
    assert small["late_max"] < 0.8 * small["edge"] and small["lambda_max_last"] > small["late_min"]
    assert (tmp_path / "eos_training.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "x 2/lr" in capsys.readouterr().out
