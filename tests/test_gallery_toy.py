"""Smoke tests of the analytic / toy gallery scripts (gallery/gnr_fig1a.py, gnr_fig1b.py, gsam_toy.py,
asam_fig3.py) in their --quick modes: the numbers they measure have the properties the figures claim."""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

GALLERY = Path(__file__).resolve().parents[1] / "gallery"


def script(name: str):
    spec = importlib.util.spec_from_file_location(f"gallery_{name}", GALLERY / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def check_png(path: Path, max_kb: int = 250) -> None:
    """A real, non-blank PNG under the gallery's size limit."""
    from matplotlib.image import imread

    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert path.stat().st_size < max_kb * 1024
    img = imread(path)
    assert img.shape[0] > 300 and img.shape[1] > 600 and float(img[..., :3].std()) > 0.05


def test_gnr_fig1a_sam_cannot_tell_the_minima_apart_gnr_can(tmp_path, capsys):
    out = script("gnr_fig1a").main(["--quick", "--out", str(tmp_path)])
    (flat, sharp) = out["results"]
    for r, k in ((flat, 1), (sharp, 3)):
        assert r["R_sam"] == pytest.approx(2.0, abs=1e-9)  # max L - L(0) = 1 - (-1)
        assert abs(r["sam_argmax"]) <= 1.0 and math.cos(k * math.pi * r["sam_argmax"] + math.pi) == pytest.approx(1.0)
        assert r["R_gnr"] == pytest.approx(k * math.pi, rel=1e-4)
        assert abs(math.sin(k * math.pi * r["gnr_argmax"])) == pytest.approx(1.0, abs=1e-3)  # the steepest point
    assert "R_GNR = 9.42" in capsys.readouterr().out
    check_png(out["png"])


def test_gnr_fig1b_counts_extrema_around_a_trained_sam_model(tmp_path):
    m = script("gnr_fig1b")
    out = m.main(["--quick", "--out", str(tmp_path), "--runs", str(tmp_path / "runs")])
    r64 = out["results"]["float64"]["result"]
    assert r64.directions == 20 and r64.step == 0.01 and r64.steps == 10 and r64.radius == pytest.approx(0.1)
    assert r64.losses[0][0] == pytest.approx(out["results"]["float64"]["metrics"]["train_loss"], rel=1e-5)
    for rule, h in out["histograms"].items():
        assert h["minima"].sum() == h["maxima"].sum() == 20
    interior, ends = out["histograms"]["interior points only"], out["histograms"]["ends included"]
    # counting the two ends adds exactly one extremum at each end of every sequence
    both_ends = ends["mean_minima"] + ends["mean_maxima"]
    assert interior["mean_minima"] + interior["mean_maxima"] + 2 == pytest.approx(both_ends)
    assert out["float_agreement"] == 1.0
    # the checkpoint is reused when it holds the same configuration
    stamp = out["checkpoint"].stat().st_mtime_ns
    assert m.train(m.config(True), out["checkpoint"], progress=False) == out["checkpoint"]
    assert out["checkpoint"].stat().st_mtime_ns == stamp
    check_png(out["png"])


def test_gsam_toy_surrogate_gap_and_trajectories(tmp_path):
    out = script("gsam_toy").main(["--quick", "--out", str(tmp_path)])
    w1, w2, w3 = out["fig1"]["minima"]
    assert w1["f_p"] == pytest.approx(w3["f_p"], abs=2e-3) and w2["f_p"] > w1["f_p"] + 0.05  # Fig. 1's premise
    assert w1["f"] < w2["f"] and w2["f"] == pytest.approx(w3["f"], abs=5e-3)
    assert w1["h"] > w2["h"] > w3["h"] > 0  # h orders the minima by sharpness
    for m in (w1, w2, w3):
        assert m["two_h_over_rho2"] == pytest.approx(m["sigma_max"], rel=0.25)  # Lemma 3.3
        assert m["one_step_h"] == pytest.approx(m["h"], rel=0.02)
    assert np.all(out["fig1"]["f_p"] >= out["fig1"]["f"] - 1e-12)

    runs = out["fig3"]
    sgd, sam, gsam = (runs[k] for k in runs)
    assert all(r["end"]["kind"] == "sharp minimum" for r in sgd)
    assert sum(r["end"]["kind"] == "sharp minimum" for r in sam) >= 3
    # GSAM keeps out of the sharp pit: a flatter end (smaller |sigma_max|, smaller surrogate gap) than SAM's ...
    assert all(r["end"]["kind"] != "sharp minimum" for r in gsam)
    median = lambda rs, key: float(np.median([abs(r["end"][key]) if key == "sigma_max" else r["end"][key] for r in rs]))  # noqa: E731
    assert median(gsam, "sigma_max") < median(sam, "sigma_max") / 2
    assert median(gsam, "surrogate_gap") < median(sam, "surrogate_gap")
    # ... but it stops at the saddle beside the pit, not at the flat minimum (what the gallery text reports)
    assert all(r["end"]["kind"] == "saddle" and r["end"]["loss"] > 0.5 for r in gsam)
    for p in out["png"]:
        check_png(p)


def test_asam_fig3_sam_slides_along_the_valley_asam_stays(tmp_path):
    m = script("asam_fig3")
    out = m.main(["--quick", "--out", str(tmp_path)])
    trajs, ends = out["trajectories"], out["ends"]
    a, b = m.STARTS
    sam, asam, sgd = "SAM (rho=0.05)", "ASAM (rho=0.5, eta=0.01)", "SGD"
    # from (0.3, 0.033) SAM's perturbation crosses w2 = 0, the ReLU kills the gradient: SAM never moves
    assert np.array_equal(trajs[b][sam].points[-1], trajs[b][sam].points[0])
    assert ends[b][sam]["loss"] == pytest.approx(0.0301)
    for start in (a, b):
        assert ends[start][asam]["loss"] < 0.005 and ends[start][sgd]["loss"] < 0.005  # both reach the valley
    # from (0.2, 0.05) SAM heads for (0.2, 0.2) (w2/w1 = 1); ASAM stays near SGD's landing point
    assert abs(1 - ends[a][sam]["balance"]) < abs(1 - ends[a][asam]["balance"]) - 0.1
    assert abs(ends[a][asam]["balance"] - ends[a][sgd]["balance"]) < 0.1
    # plain sharpness prefers SAM's valley point; adaptive sharpness is the same along the valley
    assert ends[a][sam]["sharpness"] < ends[a][asam]["sharpness"] < ends[a][sgd]["sharpness"]
    adaptive = [ends[s][k]["adaptive_sharpness"] for s in (a, b) for k in (sam, asam, sgd)]
    assert max(adaptive) == pytest.approx(min(adaptive), rel=0.01)
    # the Hessian's top eigenvalue cannot rank them: |w1 w2 - c| has Hessian +-[[0, 1], [1, 0]] off the valley
    assert all(ends[s][k]["lambda_max"] == pytest.approx(1.0) for s in (a, b) for k in (sam, asam, sgd))
    check_png(out["png"])
