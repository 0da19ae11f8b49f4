"""``landscape analyze``: the report against direct computations, resume, errors, the measure registry."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from landscape import analysis
from landscape.analysis import Measure, analyze, default_options, register_measure
from landscape.checkpoint import open_checkpoint
from landscape.cli import main
from landscape.objective import Objective
from optimizers.config import TrainConfig
from optimizers.trainer import Trainer
from tests.curvature_helpers import assert_unchanged, bn_net, snapshot
from tests.fixtures import blobs

# torch's forward-AD decompositions still call the deprecated torch.jit.script.
pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

MODEL, DATA = "tests.fixtures:tiny_mlp", "tests.fixtures:blobs"
ENTRY = ["--model", MODEL, "--data", DATA]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("analyze") / "tiny.pt"
    Trainer(TrainConfig(model=MODEL, data=DATA, epochs=3, batch_size=16, lr=0.1, seed=1), path, progress=False).run()
    return path


def run(args, capsys):
    code = main(["analyze", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


def test_report_matches_direct_computation(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, stdout, _ = run([ckpt, *ENTRY, "--json", out, "--dtype", "float64", "--quiet", "--top-k", "3",
                           "--density", "--density-steps", "12", "--fisher-k", "2", "--grad-batch-size", "4"], capsys)
    assert code == 0 and "Hessian eigenvalues" in stdout and "Hessian trace" in stdout
    rep = json.loads(out.read_text())
    assert rep["complete"] and rep["checkpoint"]["path"] == str(ckpt) and len(rep["checkpoint"]["sha256"]) == 64
    _, model, data = open_checkpoint(ckpt, model=MODEL, data=DATA)
    train = Objective.from_bundle(model, data, "train", dtype=torch.float64)
    test = Objective.from_bundle(model, data, "test", dtype=torch.float64)
    m = rep["metrics"]
    assert m["train_loss"] == pytest.approx(train.loss(), rel=1e-12) and m["test_acc"] == test.evaluate()["acc"]
    assert m["gen_gap"] == pytest.approx(m["train_acc"] - m["test_acc"]) and m["train_samples"] == 96
    H = train.hessian.to_dense()
    ev = np.linalg.eigvalsh(H.numpy())[::-1]
    e = rep["hessian_eigenvalues"]
    np.testing.assert_allclose(e["eigenvalues"], ev[:3], rtol=1e-8)
    assert e["converged"] and len(e["residuals"]) == 3 and max(e["residuals"]) < 1e-6 * ev[0]
    assert e["matvecs"] == e["iterations"] + 3
    t = rep["hessian_trace"]  # 75 parameters <= 2/3 * 150: the Lanczos sketch spans everything, so exact
    assert t["trace"] == pytest.approx(float(torch.trace(H)), rel=1e-10) and t["stderr"] == 0.0
    F = np.linalg.eigvalsh(train.fisher.to_dense().numpy())[::-1]
    np.testing.assert_allclose(rep["fisher_eigenvalues"]["eigenvalues"], F[:2], rtol=1e-8)
    d = rep["spectral_density"]
    assert np.array(d["nodes"]).shape == (4, 12) and abs(np.trapezoid(d["density"], d["grid"]) - 1) < 1e-9
    g = rep["gradient_norms"]
    assert g["batch_size"] == 4 and g["num_batches"] == 24
    assert set(g["groups"]) == {"1.weight", "1.bias", "3.weight", "3.bias"}
    s = rep["settings"]
    assert s["top_k"] == 3 and s["dtype"] == "float64" and "json" not in s and "quiet" not in s


def test_resume_reuses_finished_sections_and_restart_recomputes(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    args = [ckpt, *ENTRY, "--json", out, "--quiet", "--top-k", "2", "--trace-samples", "30"]
    assert run(args, capsys)[0] == 0
    rep = json.loads(out.read_text())
    rep["hessian_eigenvalues"]["eigenvalues"] = [123.0, 45.0]  # a marker only a reuse keeps
    out.write_text(json.dumps(rep))
    assert run(args, capsys)[0] == 0
    assert json.loads(out.read_text())["hessian_eigenvalues"]["eigenvalues"] == [123.0, 45.0]
    assert run([*args, "--restart"], capsys)[0] == 0
    assert json.loads(out.read_text())["hessian_eigenvalues"]["eigenvalues"] != [123.0, 45.0]
    rep = json.loads(out.read_text())
    rep["hessian_eigenvalues"]["eigenvalues"] = [123.0, 45.0]
    out.write_text(json.dumps(rep))
    assert run([*args, "--seed", "1"], capsys)[0] == 0  # other settings: nothing reused
    assert json.loads(out.read_text())["hessian_eigenvalues"]["eigenvalues"] != [123.0, 45.0]


def test_split_subset_power_and_hutchinson(ckpt, tmp_path, capsys):
    out = tmp_path / "r.json"
    code, _, _ = run([ckpt, *ENTRY, "--json", out, "--quiet", "--split", "test", "--subset", "20", "--dtype",
                      "float64", "--eig-method", "power", "--top-k", "2", "--max-iter", "300", "--tol", "1e-9",
                      "--trace-method", "hutchinson", "--trace-samples", "16", "--params", "weights"], capsys)
    assert code == 0
    rep = json.loads(out.read_text())
    _, model, data = open_checkpoint(ckpt, model=MODEL, data=DATA)
    obj = Objective.from_bundle(model, data, "test", subset=20, dtype=torch.float64, params="weights")
    assert obj.num_params == 5 * 8 + 8 * 3
    H = obj.hessian.to_dense().numpy()
    ev = np.linalg.eigvalsh(H)
    top2 = ev[np.argsort(-np.abs(ev))][:2]
    np.testing.assert_allclose(rep["hessian_eigenvalues"]["eigenvalues"], top2 / (1 + 1e-6) ** 2, rtol=1e-6)
    assert rep["hessian_eigenvalues"]["method"] == "power" and rep["hessian_trace"]["method"] == "hutchinson"
    assert rep["hessian_trace"]["matvecs"] == 16 and rep["metrics"]["test_samples"] == 48


@pytest.mark.parametrize("extra, message", [
    (["--top-k", "500"], "--top-k 500 asks for 500 eigenvalues of 75 parameters"),
    (["--eig-method", "power", "--which", "both"], "largest-magnitude"),
    (["--params", "no_such_layer"], "selects no trainable parameter"),
    (["--trace-method", "hutchpp-random", "--trace-samples", "4", "--trace-rank", "3"],
     "--trace-rank 3 needs 1 <= rank and 2 * rank + 2 <= --trace-samples (4)"),
    (["--trace-method", "xtrace", "--trace-rank", "3"], "--trace-rank sets the Hutch++ sketch"),
    (["--trace-method", "xtrace", "--trace-samples", "3"], "xtrace needs"),
])
def test_user_errors_are_one_line(ckpt, capsys, extra, message):
    code, _, err = run([ckpt, *ENTRY, "--quiet", *extra], capsys)
    assert code == 2 and message in err and err.count("\n") == 1 and "Traceback" not in err


def test_missing_checkpoint_and_bad_choice(tmp_path, capsys):
    code, _, err = run([tmp_path / "nope.pt"], capsys)
    assert code == 2 and "no such file" in err
    with pytest.raises(SystemExit):
        main(["analyze", str(tmp_path / "nope.pt"), "--split", "validation"])


def test_analyze_leaves_the_model_untouched():
    d = blobs(n_train=40, n_test=20)
    d.x_train, d.x_test = d.x_train.double(), d.x_test.double()
    model = bn_net()
    before = snapshot(model)
    rep = analyze(model, d, top_k=2, trace_samples=12, density=True, density_steps=5, fisher_k=2,
                  grad_batch_size=1)
    assert rep["complete"] and rep["hessian_eigenvalues"]["converged"]
    assert_unchanged(model, before)
    gram = analyze(model, d, top_k=0, trace_samples=0, fisher_k=2, fisher_method="gram")["fisher_eigenvalues"]
    assert gram["method"] == "gram" and gram["converged"]
    np.testing.assert_allclose(gram["eigenvalues"], rep["fisher_eigenvalues"]["eigenvalues"], rtol=1e-6)
    assert_unchanged(model, before)
    with pytest.raises(ValueError):
        analyze(model, d, no_such_option=1)


def test_measures_register_into_the_report(capsys):
    def compute(ctx):
        return {"loss_at_w0": ctx.objective().loss(), "n": ctx.options.dummy_n}

    register_measure(Measure("dummy", "dummy measure",
                             lambda g: g.add_argument("--dummy-n", type=int, default=0),
                             compute, lambda s: [("dummy", f"{s['n']}")], enabled=lambda o: o.dummy_n > 0))
    try:
        d = blobs(n_train=30, n_test=10)
        model = bn_net()
        assert default_options().dummy_n == 0
        rep = analyze(model, d, top_k=0, trace_samples=0, dummy_n=3)
        assert rep["dummy"]["n"] == 3 and "hessian_eigenvalues" not in rep
        assert rep["dummy"]["loss_at_w0"] == pytest.approx(rep["metrics"]["train_loss"], rel=1e-6)
        from rich.console import Console

        Console(width=120).print(analysis.table(rep))
        assert "dummy" in capsys.readouterr().out
        assert "dummy" not in analyze(model, d, top_k=0, trace_samples=0)
    finally:
        analysis.MEASURES.pop("dummy")
