"""``landscape study`` end to end on the test fixtures: outputs, resume after a kill, diverged and failed
runs, measures registered elsewhere, the Ray backend (a real local cluster), ``compare``'s measures table."""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from scipy.stats import kendalltau

from landscape.cli import main
from landscape.study.correlation import granulated
from landscape.study.spec import load_study
from tests.browser import dump_dom, needs_chromium

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

ROOT = Path(__file__).resolve().parents[1]

MINI = """
name = "mini"
[train]
model = "tests.fixtures:tiny_mlp"
data = "tests.fixtures:blobs"
epochs = 1
schedule = "constant"
[grid]
lr = [0.05, 0.2]
batch_size = [16, 32]
[optimizers.sgd]
[optimizers.sam]
rho = 0.05
[measures]
top_k = 1
trace_samples = 10
[correlation]
bootstrap = 100
"""


def write(folder: Path, text: str, name: str = "study.toml") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(text)
    return path


def stamps(folder: Path) -> dict[str, tuple[int, int]]:
    """(mtime_ns, inode) of every file under ``folder`` (an atomic rewrite changes both)."""
    return {str(p.relative_to(folder)): (p.stat().st_mtime_ns, p.stat().st_ino)
            for p in sorted(folder.rglob("*")) if p.is_file() and p.name != ".lock"}


def cli(args, capsys):
    code = main(["study", *map(str, args)])
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture(scope="module")
def mini(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mini")
    path = write(folder, MINI)
    code = main(["study", str(path), "--workers", "1", "--quiet"])
    assert code == 0
    return path, folder / "study"


def test_mini_study_writes_table_report_and_plots(mini, capsys):
    path, out = mini
    rows = list(csv.DictReader(open(out / "results.csv")))
    assert len(rows) == 8 and {r["status"] for r in rows} == {"done"}
    assert [r["name"] for r in rows[:2]] == ["sgd lr=0.05 bs=16 seed=0", "sam lr=0.05 bs=16 seed=0"]
    measures = ["hessian_eigenvalues.lambda_max", "hessian_trace.trace", "gradient_norms.norm",
                "gradient_norms.strength", "sharpness.worst[rho=0.05]", "adaptive_sharpness.worst[rho=0.5]",
                "surrogate_gap.gap[rho=0.05]", "surrogate_gap.second_order[rho=0.05]"]
    data = json.loads((out / "results.json").read_text())
    assert data["measures"] == measures and len(data["rows"]) == 8
    for r in data["rows"]:
        assert r["gen_gap"] == pytest.approx(r["train_acc"] - r["test_acc"]) and r["epochs_run"] == 1
        assert r["test_error"] == pytest.approx(1 - r["test_acc"])
        report = json.loads((out / "runs" / r["id"] / "analysis.json").read_text())
        assert r["hessian_eigenvalues.lambda_max"] == report["hessian_eigenvalues"]["eigenvalues"][0]
        assert r["hessian_trace.trace"] == report["hessian_trace"]["trace"] and report["complete"]
        assert r["train_loss"] == report["metrics"]["train_loss"]
        adaptive = report["adaptive_sharpness"]["rows"][0]["worst_case"]["sharpness"]
        assert r["adaptive_sharpness.worst[rho=0.5]"] == adaptive
    for r, c in zip(data["rows"], rows):  # the CSV holds the same numbers, exactly
        assert float(c["hessian_trace.trace"]) == r["hessian_trace.trace"] and int(c["batch_size"]) == r["batch_size"]
    corr = json.loads((out / "correlation.json").read_text())
    assert corr["groups"]["all"]["axes"] == ["lr", "batch_size", "optimizer"] and set(corr["groups"]) == {
        "all", "sgd", "sam"}
    study = load_study(path)
    table = [{**r, "optimizer": r["variant"]} for r in data["rows"]]
    for s in corr["groups"]["all"]["targets"]["gen_gap"]:
        m = s["measure"]
        want = kendalltau([r[m] for r in data["rows"]], [r["gen_gap"] for r in data["rows"]]).statistic
        assert s["tau"] == pytest.approx(want, abs=1e-12) or (math.isnan(want) and s["tau"] is None)
        psi, Psi = granulated(table, m, "gen_gap", ["lr", "batch_size", "optimizer"])
        assert s["psi"] == pytest.approx(psi, nan_ok=True) and s["Psi"] == pytest.approx(Psi)
    assert len(study.runs) == 8
    md = (out / "report.md").read_text()
    assert "## All runs vs gen_gap" in md and "| psi lr |" in md.replace("psi lr | psi batch_size", "psi lr |")
    from landscape.report.figures import ascent_traces  # the ascents' convergence, counted from the reports
    flags = [c for r in data["rows"] for _, _, c in
             ascent_traces(json.loads((out / "runs" / r["id"] / "analysis.json").read_text()))]
    assert len(flags) >= 16 and f"Worst-case ascents: {sum(flags)} of {len(flags)} converged" in md
    assert (out / "scatter_gen_gap.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    html = (out / "scatter_gen_gap.html").read_text()
    assert "plotly" in html and "<script src=" not in html.split("</head>")[0]  # self-contained
    assert all(m in html for m in measures)


def test_rerun_redoes_nothing_and_only_report_filters(mini, capsys):
    path, out = mini
    before = stamps(out / "runs")
    code, stdout, _ = cli([path, "--workers", "1"], capsys)
    assert code == 0 and "8 runs, 8 already finished, 0 to run" in stdout and "Kendall tau vs gen_gap" in stdout
    assert stamps(out / "runs") == before
    code, stdout, _ = cli([path, "--only-report", "--min-train-acc", "0.7", "--bootstrap", "0"], capsys)
    corr = json.loads((out / "correlation.json").read_text())
    rows = json.loads((out / "results.json").read_text())["rows"]
    kept = sum(r["train_acc"] >= 0.7 for r in rows)
    assert code == 0 and corr["runs"]["used"] == kept and corr["min_train_acc"] == 0.7
    assert corr["runs"]["excluded"] == ({"below_min_train_acc": 8 - kept} if kept < 8 else {})
    assert "train_acc >= 0.7" in stdout and stamps(out / "runs") == before


BROKEN = (MINI.replace("lr = [0.05, 0.2]", "lr = [0.05, 0.2, 1e30]")  # 1e30: NaN
          .replace("batch_size = [16, 32]", "model_kwargs.dropout = [0.0, 1.5]")  # 1.5: the model fails to build
          .replace("epochs = 1", "epochs = 1\nbatch_size = 16").replace("[optimizers.sam]\nrho = 0.05\n", ""))


def test_diverged_runs_are_recorded_and_failed_ones_retried(tmp_path, capsys):
    path = write(tmp_path, BROKEN)
    code, stdout, _ = cli([path, "--workers", "1", "--quiet"], capsys)
    assert code == 1 and "3 run(s) failed" in stdout
    data = json.loads((tmp_path / "study" / "results.json").read_text())
    by = {r["name"]: r for r in data["rows"]}
    div = by["sgd lr=1e+30 dropout=0 seed=0"]
    assert div["status"] == "diverged" and div["error"].startswith("loss became nan at step")
    assert div["stopped_by"] == "diverged" and div["gen_gap"] is None
    bad = by["sgd lr=0.05 dropout=1.5 seed=0"]
    assert bad["status"] == "failed" and "dropout probability has to be between 0 and 1" in bad["error"]
    assert (tmp_path / "study" / "runs" / bad["id"] / "error.log").read_text().startswith("Traceback")
    corr = json.loads((tmp_path / "study" / "correlation.json").read_text())
    assert corr["runs"] == {"total": 6, "used": 2, "excluded": {"diverged": 1, "failed": 3}}
    assert all(s["n"] == 2 for s in corr["groups"]["all"]["targets"]["gen_gap"])
    div_status = tmp_path / "study" / "runs" / div["id"] / "status.json"
    bad_status = tmp_path / "study" / "runs" / bad["id"] / "status.json"
    before = (div_status.stat().st_mtime_ns, bad_status.stat().st_mtime_ns)
    code, stdout, _ = cli([path, "--workers", "1"], capsys)
    assert code == 1 and "6 runs, 3 already finished, 3 to run" in stdout  # failed runs are retried
    assert div_status.stat().st_mtime_ns == before[0] and bad_status.stat().st_mtime_ns != before[1]


KILL = MINI.replace("epochs = 1", "epochs = 3\nbatch_size = 16\nsave_every_steps = 2\n"
                   "model_kwargs = { delay = 0.03 }").replace(
    "batch_size = [16, 32]\n", "")


def test_resume_after_kill_loses_nothing_and_redoes_nothing(tmp_path, capsys):
    """SIGKILL a study (2 worker processes) once a run is done; rerun; compare with an uninterrupted one."""
    path = write(tmp_path / "killed", KILL)
    out = tmp_path / "killed" / "study"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "landscape", "study", str(path), "--workers", "2", "--quiet"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            done = [p.parent for p in out.glob("runs/*/status.json")]
            if done and list(out.glob("runs/*/model.resume.pt")):
                break
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            time.sleep(0.05)
        else:
            pytest.fail("no run finished in time")
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    time.sleep(0.5)
    left = stamps(out / "runs")
    time.sleep(1.0)
    assert stamps(out / "runs") == left  # the workers died with the study: nothing writes any more
    finished = {p.parent.name for p in out.glob("runs/*/status.json")}
    assert 1 <= len(finished) < 4 and list(out.glob("runs/*/model.resume.pt"))
    kept = {k: v for k, v in left.items() if k.split("/")[0] in finished}

    code, stdout, _ = cli([path, "--workers", "1"], capsys)
    assert code == 0 and f"{len(finished)} already finished, {4 - len(finished)} to run" in stdout
    after = stamps(out / "runs")
    assert {k: after[k] for k in kept} == kept  # finished runs were not touched
    assert not list(out.glob("runs/*/model.resume.pt"))

    ref = write(tmp_path / "ref", KILL)
    assert main(["study", str(ref), "--workers", "1", "--quiet"]) == 0
    capsys.readouterr()
    for name in ("results.json", "results.csv", "correlation.json"):
        assert (out / name).read_text() == (tmp_path / "ref" / "study" / name).read_text(), name


def test_measures_registered_elsewhere_are_usable_from_a_study(tmp_path, capsys, monkeypatch):
    """A section registered by another module, with its own flag and no ``scalars``: columns appear."""
    import argparse

    from landscape import analysis

    def floats(text: str) -> list[float]:  # a flag type that parses text, as the sharpness flags do
        return [float(t) for t in text.split(",")]

    def add(g: argparse._ArgumentGroup) -> None:
        g.add_argument("--toy-rho", type=float, default=0.0)
        g.add_argument("--toy-scales", type=floats, default="1")

    def compute(ctx):
        obj = ctx.objective()
        assert ctx.options.toy_scales == [1.0, 3.0]
        return {"value": ctx.options.toy_rho * float(obj.grad().norm()), "rho": ctx.options.toy_rho,
                "eigenvalues": [1.0, 0.5], "matvecs": 3}

    analysis.load_measures()  # the built-in sections first, as in any process
    monkeypatch.setitem(analysis.MEASURES, "toy_sharpness", analysis.Measure(
        "toy_sharpness", "toy", add, compute, lambda s: [("toy", str(s["value"]))], enabled=lambda o: o.toy_rho > 0))
    text = MINI.replace("trace_samples = 10", "trace_samples = 0\ntoy_rho = 0.5\ntoy_scales = [1, 3.0]\n"
                                                 'sharpness_rho = ""\nadaptive_rho = ""\ngap_rho = ""').replace(
        "[optimizers.sam]\nrho = 0.05\n", "")
    path = write(tmp_path, text)
    code, _, _ = cli([path, "--workers", "1", "--quiet"], capsys)
    assert code == 0
    data = json.loads((tmp_path / "study" / "results.json").read_text())
    assert data["measures"] == ["hessian_eigenvalues.lambda_max", "gradient_norms.norm", "gradient_norms.strength",
                                "toy_sharpness.eigenvalues[0]", "toy_sharpness.rho", "toy_sharpness.value"]
    r = data["rows"][0]
    assert r["toy_sharpness.value"] == pytest.approx(0.5 * r["gradient_norms.norm"], rel=1e-5)
    corr = json.loads((tmp_path / "study" / "correlation.json").read_text())  # constant columns are not ranked
    assert corr["constant_measures"] == ["toy_sharpness.eigenvalues[0]", "toy_sharpness.rho"]
    assert {s["measure"] for s in corr["groups"]["all"]["targets"]["gen_gap"]} == {
        "gradient_norms.norm", "gradient_norms.strength", "toy_sharpness.value", "hessian_eigenvalues.lambda_max"}


RAY_SETTLED = ("seconds", "cached")  # wall times, and whether a result was read back: not the run's numbers


@pytest.mark.slow  # 62 s on 2 busy cores (load 9), most of it starting the cluster
def test_ray_backend_on_a_local_cluster(mini, tmp_path):
    """``--backend ray`` end to end on a real local Ray cluster, started by the CLI in a fresh process run from
    another folder: the runs are pickled to Ray workers, which import the study's model and data by name
    (``tests.fixtures``, through PYTHONPATH) and write the run folders by path; the results are those of the
    local process pool, number for number."""
    pytest.importorskip("ray")
    path, local = mini
    study = write(tmp_path, MINI)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "RAY_DISABLE_USAGE_STATS": "1", "RAY_ADDRESS": ""}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "landscape", "study", str(study), "--backend", "ray",
                           "--workers", "2", "--threads", "1", "--quiet"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
    seconds = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(f"Ray study of 8 runs: {seconds:.1f} s")
    got = json.loads((tmp_path / "study" / "results.json").read_text())["rows"]
    want = json.loads((local / "results.json").read_text())["rows"]
    assert [r["status"] for r in got] == ["done"] * 8
    for a, b in zip(got, want):
        assert {k: v for k, v in a.items() if k not in RAY_SETTLED} == {
            k: v for k, v in b.items() if k not in RAY_SETTLED}
    assert (tmp_path / "study" / "report.md").exists()


def test_ray_backend_not_installed(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # an import of ray fails as if it were not installed
    code, _, err = cli([write(tmp_path, MINI), "--backend", "ray"], capsys)
    assert code == 2 and err.strip() == ("landscape: error: --backend ray needs Ray: pip install 'landscape[ray]' "
                                         "(or: pip install ray)")


def test_compare_measures_table(mini):
    from rich.console import Console

    from landscape.study.compare import comparison, measures_markdown, measures_table

    _, out = mini
    data = json.loads((out / "results.json").read_text())
    a, b = data["rows"][0], data["rows"][1]
    reports = [out / "runs" / r["id"] / "analysis.json" for r in (a, b)]
    labels, rows = comparison(reports, labels=["sgd", "sam"])
    values = dict(rows)
    assert labels == ["sgd", "sam"] and values["hessian_trace.trace"] == [a["hessian_trace.trace"],
                                                                          b["hessian_trace.trace"]]
    assert values["metrics.test_acc"] == [a["test_acc"], b["test_acc"]]
    # Checkpoints are analyzed on the spot, with the same options: the same numbers.
    ckpts = [out / "runs" / r["id"] / "model.pt" for r in (a, b)]
    labels2, rows2 = comparison(ckpts, labels=["sgd", "sam"], options={"top_k": 1, "trace_samples": 10},
                                model="tests.fixtures:tiny_mlp", data="tests.fixtures:blobs")
    v2 = dict(rows2)
    assert v2["optimizer"][0] == "sgd" and v2["optimizer"][1].startswith("sam(")
    assert v2["hessian_eigenvalues.lambda_max"] == pytest.approx(values["hessian_eigenvalues.lambda_max"], rel=1e-9)
    console = Console(width=200, record=True)
    console.print(measures_table(reports, title="two runs"))
    text = console.export_text()
    assert "two runs" in text and "hessian_trace.trace" in text and "analysis" in text
    md = measures_markdown(reports, labels=["sgd", "sam"])
    assert md.splitlines()[0] == "| measure | sgd | sam |" and f"{a['hessian_trace.trace']:.6g}" in md
    with pytest.raises(ValueError, match="not a `landscape analyze --json` report"):
        comparison([out / "results.json"])


@needs_chromium
def test_interactive_plot_renders_in_a_browser(mini, tmp_path):
    _, out = mini
    used = json.loads((out / "correlation.json").read_text())["runs"]["used"]
    dom = dump_dom(out / "scatter_gen_gap.html", tmp_path)
    assert dom.count('class="point"') == used and dom.count('class="legendtext"') == 2
    assert "updatemenu" in dom


def test_correlation_options_select_measures_and_targets(mini, tmp_path, capsys):
    path, out = mini
    text = path.read_text().replace("bootstrap = 100", 'bootstrap = 0\nmeasures = ["hessian_*"]\n'
                                                       'targets = ["gen_gap", "loss_gap"]\ntau = "a"')
    other = write(tmp_path, text)
    code, stdout, _ = cli([other, "--only-report", "--out", out], capsys)
    corr = json.loads((out / "correlation.json").read_text())
    assert code == 0 and corr["measures"] == ["hessian_eigenvalues.lambda_max", "hessian_trace.trace"]
    assert corr["targets"] == ["gen_gap", "loss_gap"] and corr["tau_variant"] == "a" and "tau vs loss_gap" in stdout
    for bad, msg in [('targets = ["gap"]', "targets: no column gap"), ('measures = ["nope*"]', "no column matches")]:
        code, _, err = cli([write(tmp_path, path.read_text().replace("bootstrap = 100", bad), "bad.toml"),
                            "--only-report", "--out", out], capsys)
        assert code == 2 and msg in err
    assert main(["study", str(path), "--only-report"]) == 0  # leave the shared study as it was
    capsys.readouterr()


def test_analysis_passes_prefix_their_columns_and_repeated_sections_appear_once(tmp_path, capsys):
    text = (MINI.replace("batch_size = [16, 32]\n", "").replace("epochs = 1", "epochs = 1\nbatch_size = 16")
            .replace("[optimizers.sam]\nrho = 0.05\n", "")
            .replace("top_k = 1\ntrace_samples = 10", 'top_k = 1\ntrace_samples = 0\ngap_rho = ""\nadaptive_rho = ""\n'
                     '[measures.l2]\nsharpness_rho = 0.05\n[measures.linf]\nsharpness_p = "inf"\n'
                     'sharpness_rho = 0.001'))
    path = write(tmp_path, text)
    code, stdout, _ = cli([path, "--workers", "1", "--quiet"], capsys)
    assert code == 0 and "l2:sharpness.worst[rho=0.05]" in stdout
    out = tmp_path / "study"
    data = json.loads((out / "results.json").read_text())
    assert data["measures"] == ["l2:hessian_eigenvalues.lambda_max", "l2:gradient_norms.norm",
                                "l2:gradient_norms.strength", "l2:sharpness.worst[rho=0.05]",
                                "linf:sharpness.worst[rho=0.001]"]
    r = data["rows"][0]
    linf = json.loads((out / "runs" / r["id"] / "analysis.linf.json").read_text())
    assert linf["sharpness"]["geometry"]["p"] in ("inf", float("inf"))
    assert r["linf:sharpness.worst[rho=0.001]"] == linf["sharpness"]["rows"][0]["worst_case"]["sharpness"]
