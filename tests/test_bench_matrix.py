"""``benchmarks/matrix.py`` on its smallest workload: every section produces its rows, the counts and errors are
those of correct runs (our surface equals the plain loop, the eigenvalues match the float64 reference, every
SAM-family step takes two forward passes), the table prints, and a rerun skips the finished cells."""
from __future__ import annotations

import json

import numpy as np
import pytest

pytest.importorskip("pyhessian")
pytest.importorskip("curvlinops")
pytest.importorskip("hessian_eigenthings")
pytest.importorskip("loss_landscapes")
pytest.importorskip("pytorch_optimizer")

from benchmarks import matrix  # noqa: E402

pytestmark = [pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning"),
              pytest.mark.filterwarnings("ignore:Using backward\\(\\) with create_graph=True:UserWarning")]


def rows(cell: dict) -> dict[str, dict]:
    return {r["contender"] + (f" b={r['budget']}" if "budget" in r else ""): r for r in cell["rows"]}


def check_trace(cell: dict, kind: str) -> None:
    assert cell["reference"]["kind"].startswith(kind)
    t = rows(cell)
    assert len(t) == 3  # --quick: the 30-HVP budget
    for name in ("ours", "curvlinops xtrace", "pyhessian hutchinson"):
        r = next(r for n, r in t.items() if n.startswith(name))
        assert r["budget"] == r["hvps"] == 30 and 0 < r["rms_rel_error"] < 0.5, name


def test_matrix_cells_on_the_small_cnn(tmp_path, capsys):
    out = tmp_path / "m.json"
    argv = ["--quick", "--workloads", "cnn/small", "--sections", "eigen,trace,surface,sam-step", "--out", str(out),
            "--exact-max-params", "0", "--reference-budget", "60"]  # a short trace reference: fast
    res = matrix.main(argv)
    cells = res["cells"]
    assert set(cells) == {"eigen/cnn/small", "trace/cnn/small", "surface/cnn/small", "sam-step/cnn/small"}
    for c in cells.values():
        assert "error" not in c, c.get("error")
        assert c["machine_start"]["threads"] == 1 and len(c["machine_start"]["load"]) == 3

    eig = rows(cells["eigen/cnn/small"])
    ref = np.array(cells["eigen/cnn/small"]["reference"]["eigenvalues"])
    assert len(ref) == 5 and np.all(np.diff(ref) <= 0)
    ours = eig["ours (default)"]
    assert ours["error"] < 1e-4 and ours["hvps"] == int(ours["hvps"]) >= 5
    assert {"pyhessian tol=0.001", "hessian-eigenthings max_iter=20", "curvlinops+eigsh tol=0.001"} <= set(eig)
    for name, r in eig.items():
        assert "failed" not in r, r
        assert r["error"] < 0.1 and r["hvps"] >= 5, name
        if not name.startswith("ours"):
            assert r["best_setting"] and r["hvp_ratio"] == pytest.approx(r["hvps"] / ours["hvps"])

    check_trace(cells["trace/cnn/small"], "long run")

    s = rows(cells["surface/cnn/small"])
    assert s["ours (landscape.surface)"]["max_abs_diff_vs_loop"] < 1e-4  # the same surface as the plain loop
    assert s["module loop"]["speed_vs_loop"]["median"] == 1.0
    for r in s.values():
        assert "failed" not in r, r
        assert r["points"] == 441 and r["gflops"] > 0
    assert cells["surface/cnn/small"]["mm_roofline_gflops"] > 0

    sam = rows(cells["sam-step/cnn/small"])
    assert set(sam) == {"ours sam", "pytorch_optimizer SAM", "ours gsam", "pytorch_optimizer GSAM"}
    assert {r["forwards_per_step"] for r in sam.values()} == {2}

    table = capsys.readouterr().out
    for section in ("### eigen", "### trace", "### surface", "### sam-step"):
        assert section in table
    assert json.loads(out.read_text())["cells"].keys() == cells.keys()

    matrix.main(argv)  # resumable: the finished cells are skipped, not recomputed
    assert capsys.readouterr().out.count("done before, skipped") == 4


@pytest.mark.slow  # ~2-3 min: a dense Hessian, a fresh process per contender, a study on two backends
def test_matrix_exact_trace_memory_and_study(tmp_path):
    res = matrix.main(["--quick", "--workloads", "cnn/small", "--sections", "trace,memory,study",
                       "--out", str(tmp_path / "m.json")])
    check_trace(res["cells"]["trace/cnn/small"], "exact")  # 1034 parameters: a dense float64 Hessian
    mem = rows(res["cells"]["memory/cnn/small"])
    for name in ("ours (default)", "pyhessian tol=0.001"):
        assert mem[name]["extra_mib"]["median"] >= 0 and mem[name]["hvps"] > 0
    study = rows(res["cells"]["study"])
    local = study["local pool, 2 workers"]
    assert local["done"] == matrix.STUDY_RUNS and local["runs_per_min"]["median"] > 0
    assert "runs_per_min" in study["ray, 2 workers"] or "skipped" in study["ray, 2 workers"]
