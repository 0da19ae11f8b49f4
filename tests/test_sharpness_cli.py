"""``landscape analyze`` with the sharpness sections: flags, JSON sections equal to direct calls, the Lanczos
value beside the eigenvalue estimates, defaults, resume and flag errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from landscape.analysis import default_options
from landscape.checkpoint import open_checkpoint
from landscape.cli import main
from landscape.geometry import Geometry
from landscape.objective import Objective
from landscape.sharpness import (average_sharpness, corruption_robustness, gradient_norm_regularizer, local_extrema,
                                 pac_bayes_flatness, surrogate_gap, worst_case_sharpness)
from optimizers.config import TrainConfig
from optimizers.trainer import Trainer

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

MODEL, DATA = "tests.fixtures:tiny_mlp", "tests.fixtures:blobs"
ENTRY = ["--model", MODEL, "--data", DATA]
SECTIONS = ["sharpness", "adaptive_sharpness", "surrogate_gap", "gnr", "local_extrema", "corruption", "pac_bayes"]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("sharpness") / "tiny.pt"
    Trainer(TrainConfig(model=MODEL, data=DATA, epochs=3, batch_size=16, lr=0.1, seed=1), path, progress=False).run()
    return path


def run(args, capsys):
    code = main(["analyze", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


FLAGS = ["--dtype", "float64", "--quiet", "--top-k", "2", "--trace-samples", "0", "--seed", "3",
         "--sharpness-rho", "0.05,0.1", "--sharpness-steps", "3", "--sharpness-samples", "4",
         "--sharpness-p", "inf",
         "--adaptive-rho", "0.5", "--adaptive-normalization", "filter", "--adaptive-exclude", "unscaled",
         "--gap-rho", "0.05,0.01",
         "--gnr-rho", "0.05", "--gnr-steps", "3",
         "--extrema-directions", "3", "--extrema-steps", "4", "--extrema-step", "0.05",
         "--corruption-eps", "0.1", "--corruption-eps-inf", "0.01", "--corruption-draws", "2",
         "--corruption-steps", "2",
         "--pac-bayes", "--pac-bayes-samples", "3", "--pac-bayes-iterations", "4"]


def test_sections_match_direct_calls_and_resume(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, _ = run([ckpt, *ENTRY, "--json", out, *FLAGS], capsys)
    assert code == 0
    for label in ("sharpness rho=0.05", "adaptive sharpness", "surrogate gap", "GNR", "local minima", "corruption",
                  "PAC-Bayes"):
        assert label in stdout, label
    rep = json.loads(out.read_text())
    assert rep["complete"] and all(s in rep for s in SECTIONS)

    _, model, data = open_checkpoint(ckpt, model=MODEL, data=DATA)
    train = Objective.from_bundle(model, data, "train", dtype=torch.float64)
    test = Objective.from_bundle(model, data, "test", dtype=torch.float64)
    inf = Geometry(p=float("inf"))
    s = rep["sharpness"]
    assert s["rho"] == [0.05, 0.1] and len(s["rows"]) == 2 and s["geometry"]["p"] == "inf"
    direct = worst_case_sharpness(train, 0.1, geometry=inf, steps=3, seed=3)
    assert s["rows"][1]["worst_case"]["sharpness"] == pytest.approx(direct.sharpness, rel=1e-10)
    w = s["rows"][1]["worst_case"]  # the convergence trace and flag, and analyze's line about it
    assert w["converged"] == direct.converged and w["trace"][0] == pytest.approx(direct.trace[0], rel=1e-10)
    assert ("ascent" in stdout) and ("converged (best rose" in stdout or "WARNING: NOT converged" in stdout)
    assert s["rows"][1]["worst_case"]["seed"] == 3 and s["rows"][1]["worst_case"]["work"]["grads"] == 3
    avg = average_sharpness(train, 0.05, geometry=inf, samples=4, seed=3)
    assert s["rows"][0]["average_case"]["sharpness"] == pytest.approx(avg.sharpness, rel=1e-10)

    a = rep["adaptive_sharpness"]
    geo = Geometry(normalization="filter", exclude="unscaled")
    assert a["geometry"] == geo.to_dict()
    assert a["rows"][0]["worst_case"]["sharpness"] == pytest.approx(
        worst_case_sharpness(train, 0.5, geometry=geo, steps=3, seed=3).sharpness, rel=1e-10)

    lam = rep["hessian_eigenvalues"]["eigenvalues"][0]
    g = rep["surrogate_gap"]
    assert g["lanczos"] == {"lambda_max": lam, "source": "hessian_eigenvalues", "hvps": 0}
    assert [r["rho"] for r in g["rows"]] == [0.05, 0.01]
    assert g["rows"][1]["gap"] == pytest.approx(surrogate_gap(train, 0.01).gap, rel=1e-10)
    n = rep["gnr"]
    assert n["lanczos"]["lambda_max"] == lam
    assert n["rows"][0]["R"] == pytest.approx(gradient_norm_regularizer(train, 0.05, steps=3, seed=3).R, rel=1e-10)
    e = rep["local_extrema"]
    assert e["losses"] == local_extrema(train, directions=3, steps=4, step=0.05, seed=3).losses
    assert sum(e["minima_histogram"]) == 3
    c = rep["corruption"]
    assert c["attacked_split"] == "train" and set(c["clean"]) == {"train", "test"}
    ref = corruption_robustness(train, {"2": [0.1], "inf": [0.01]}, draws=2, steps=2, seed=3,
                                evaluate_on={"test": test}, name="train")
    assert c["rows"] == json.loads(json.dumps(ref.to_dict()["rows"]))
    p = rep["pac_bayes"]
    ref = pac_bayes_flatness(train, samples=3, iterations=4, seed=3)
    assert p["sigma"] == ref.sigma and p["sigma_mag"] == ref.sigma_mag and p["seed"] == 3
    assert rep["settings"]["sharpness_rho"] == [0.05, 0.1] and rep["settings"]["sharpness_p"] == "inf"

    # resume: finished sections are reused
    rep["gnr"]["rows"][0]["R"] = 123.0
    out.write_text(json.dumps(rep))
    assert run([ckpt, *ENTRY, "--json", out, *FLAGS], capsys)[0] == 0
    assert json.loads(out.read_text())["gnr"]["rows"][0]["R"] == 123.0


def test_defaults_are_cheap_and_lanczos_is_computed_when_the_eigen_section_is_off(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, _ = run([ckpt, *ENTRY, "--json", out, "--quiet", "--dtype", "float64", "--top-k", "0",
                           "--trace-samples", "0"], capsys)
    assert code == 0
    rep = json.loads(out.read_text())
    assert {"sharpness", "adaptive_sharpness", "surrogate_gap"} <= set(rep)
    assert not {"gnr", "local_extrema", "corruption", "pac_bayes"} & set(rep)
    o = default_options()
    assert o.sharpness_rho == [0.05] and o.adaptive_rho == [0.5] and o.gap_rho == [0.05] and o.gnr_rho == []
    assert rep["sharpness"]["rows"][0]["worst_case"]["work"]["grads"] == 20
    assert rep["adaptive_sharpness"]["geometry"]["normalization"] == "element"
    lz = rep["surrogate_gap"]["lanczos"]
    _, model, data = open_checkpoint(ckpt, model=MODEL, data=DATA)
    H = Objective.from_bundle(model, data, "train", dtype=torch.float64).hessian.to_dense().numpy()
    assert lz["source"] == "lanczos (k=1)" and lz["hvps"] > 0
    assert lz["lambda_max"] == pytest.approx(np.linalg.eigvalsh(H)[-1], rel=1e-8)


@pytest.mark.parametrize("extra", [["--sharpness-rho", "abc"], ["--sharpness-p", "3"], ["--gap-rho", "-0.1"],
                                   ["--adaptive-normalization", "none"]])
def test_flag_errors(ckpt, extra):
    with pytest.raises(SystemExit) as e:
        main(["analyze", str(ckpt), *ENTRY, "--quiet", *extra])
    assert e.value.code == 2


def test_skipping_with_empty_lists(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    assert run([ckpt, *ENTRY, "--json", out, "--quiet", "--top-k", "0", "--trace-samples", "0", "--sharpness-rho", "",
                "--adaptive-rho", "", "--gap-rho", ""], capsys)[0] == 0
    assert not set(SECTIONS) & set(json.loads(out.read_text()))
