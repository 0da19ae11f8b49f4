"""``benchmarks/matrix.py`` on its smallest workload: every section produces its rows, the counts and errors are
those of correct runs (our surface equals the plain loop, the eigenvalues match the float64 reference, every
SAM-family step takes two forward passes), the table prints, and a rerun skips the finished cells."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("pyhessian")
pytest.importorskip("curvlinops")
pytest.importorskip("hessian_eigenthings")
pytest.importorskip("loss_landscapes")
pytest.importorskip("pytorch_optimizer")

from benchmarks import matrix  # noqa: E402
from benchmarks import workloads as wl  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")]


@pytest.fixture
def tiny(monkeypatch):
    """``mlp/small`` replaced by a 610-parameter MLP on 256 digits (every cell fast; a dense Hessian is cheap)."""
    from landscape.models.mlp import MLP

    def load(family: str, size: str = "small", steps: int = 50, seed: int = 0) -> wl.Workload:
        torch.manual_seed(seed)
        x, y = wl._images(256, "flat")
        model = MLP(input_shape=[64], num_outputs=10, hidden=[8])
        wl._train(model, x, y, steps, seed)
        return wl.Workload(f"{family}/{size}", family, size, model, x, y, 128)

    monkeypatch.setattr(matrix.wl, "load", load)
    return ["--quick", "--workloads", "mlp/small"]


def rows(cell: dict) -> dict[str, dict]:
    return {r["contender"] + (f" b={r['budget']}" if "budget" in r else ""): r for r in cell["rows"]}


def check_trace(cell: dict, kind: str) -> None:
    assert cell["reference"]["kind"].startswith(kind)
    t = rows(cell)
    assert len(t) == 3  # --quick: the 30-HVP budget
    for name in ("ours", "curvlinops xtrace", "pyhessian hutchinson"):
        r = next(r for n, r in t.items() if n.startswith(name))
        assert r["budget"] == r["hvps"] == 30 and 0 < r["rms_rel_error"] < 0.5, name


def test_matrix_cells(tiny, tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = [*tiny, "--sections", "eigen,trace,surface,sam-step", "--out", str(out)]
    res = matrix.main(argv)
    cells = {k.replace("mlp/small", "w"): c for k, c in res["cells"].items()}
    assert set(cells) == {"eigen/w", "trace/w", "surface/w", "sam-step/w"}
    for c in cells.values():
        assert "error" not in c, c.get("error")
        assert c["machine_start"]["threads"] == 1 and len(c["machine_start"]["load"]) == 3

    eig = rows(cells["eigen/w"])
    ref = np.array(cells["eigen/w"]["reference"]["eigenvalues"])
    assert len(ref) == 5 and np.all(np.diff(ref) <= 0)
    ours = eig["ours (default)"]
    assert ours["error"] < 1e-4 and ours["hvps"] == int(ours["hvps"]) >= 5
    assert {"pyhessian tol=0.001", "hessian-eigenthings max_iter=20", "curvlinops+eigsh tol=0.001"} <= set(eig)
    for name, r in eig.items():
        assert "failed" not in r, r
        assert r["error"] < 0.1 and r["hvps"] >= 5, name
        if not name.startswith("ours"):
            assert r["best_setting"] and r["hvp_ratio"] == pytest.approx(r["hvps"] / ours["hvps"])

    check_trace(cells["trace/w"], "exact")  # 610 parameters: a dense float64 Hessian

    s = rows(cells["surface/w"])
    assert s["ours (landscape.surface)"]["max_abs_diff_vs_loop"] < 1e-4  # the same surface as the plain loop
    assert s["module loop"]["speed_vs_loop"]["median"] == 1.0
    for r in s.values():
        assert "failed" not in r, r
        assert r["points"] == 441 and r["gflops"] > 0
    assert cells["surface/w"]["mm_roofline_gflops"] > 0

    sam = rows(cells["sam-step/w"])
    assert set(sam) == {"ours sam", "pytorch_optimizer SAM", "ours gsam", "pytorch_optimizer GSAM"}
    assert {r["forwards_per_step"] for r in sam.values()} == {2}
    for anchor, mine in (("pytorch_optimizer SAM", "ours sam"), ("pytorch_optimizer GSAM", "ours gsam")):
        r = sam[anchor]  # one round: the ratio is the two walls' ratio, against our method of the same name
        assert r["wall_ratio"]["median"] == pytest.approx(r["wall"]["median"] / sam[mine]["wall"]["median"])

    table = capsys.readouterr().out
    for section in ("### eigen", "### trace", "### surface", "### sam-step"):
        assert section in table
    assert json.loads(out.read_text())["cells"].keys() == res["cells"].keys()

    matrix.main(argv)  # resumable: the finished cells are skipped, not recomputed
    assert capsys.readouterr().out.count("done before, skipped") == 4
    again = matrix.main([*tiny, "--sections", "sam-step", "--out", str(out), "--fresh"])["cells"]
    assert again.keys() == res["cells"].keys()  # --fresh recomputes the selected cells and keeps the others
    assert again["sam-step/mlp/small"]["machine_start"] != res["cells"]["sam-step/mlp/small"]["machine_start"] or \
        again["sam-step/mlp/small"]["seconds"] != res["cells"]["sam-step/mlp/small"]["seconds"]
    assert again["eigen/mlp/small"] == json.loads(out.read_text())["cells"]["eigen/mlp/small"]


def test_matrix_long_run_trace_reference(tiny, tmp_path):
    res = matrix.main([*tiny, "--sections", "trace", "--out", str(tmp_path / "m.json"), "--exact-max-params", "0"])
    check_trace(res["cells"]["trace/mlp/small"], "long run: ours")
    assert "300 HVPs" in res["cells"]["trace/mlp/small"]["reference"]["kind"]


@pytest.mark.slow  # 3 min at load 10: a fresh process per contender, a study on two backends (Ray's start)
def test_matrix_memory_and_study(tiny, tmp_path):
    res = matrix.main([*tiny, "--sections", "memory,study", "--out", str(tmp_path / "m.json")])
    mem = rows(res["cells"]["memory/mlp/small"])
    for name in ("ours (default)", "pyhessian tol=0.001"):
        assert mem[name]["extra_mib"]["median"] >= 0 and mem[name]["hvps"] > 0
    study = rows(res["cells"]["study"])
    local = study["local pool, 2 workers"]
    assert local["done"] == matrix.STUDY_RUNS and local["runs_per_min"]["median"] > 0
    assert "runs_per_min" in study["ray, 2 workers"] or "skipped" in study["ray, 2 workers"]
