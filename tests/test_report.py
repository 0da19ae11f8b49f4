"""The HTML report (``landscape analyze --html``, ``landscape compare``), ``compare``'s measures table and
``landscape demo`` end to end (reduced), resumed without new work; the pages rendered by headless Chromium."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from landscape.cli import main
from landscape.landscapes.surface import Surface
from optimizers.config import TrainConfig
from optimizers.trainer import Trainer
from tests.browser import dump_dom, needs_chromium, screenshot

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

MODEL, DATA = "tests.fixtures:tiny_mlp", "tests.fixtures:blobs"
ENTRY = ["--model", MODEL, "--data", DATA]
CHEAP = ["top_k=2", "trace_samples=10", "density_runs=1", "density_steps=10", "sharpness_steps=3"]
PLOTLY_BANNER = "plotly.js v"  # once in the bundle's licence header


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    root = tmp_path_factory.mktemp("report")
    a, b = root / "sgd.pt", root / "sam.pt"
    common = dict(model=MODEL, data=DATA, epochs=3, batch_size=16, lr=0.1, seed=1)
    Trainer(TrainConfig(**common), a, progress=False).run()
    Trainer(TrainConfig(**common, optimizer="sam", hparams={"rho": 0.05}), b, progress=False).run()
    return a, b


@pytest.fixture(scope="module")
def compared(ckpts, tmp_path_factory):
    """``landscape compare`` of the two checkpoints: its stdout and output stem."""
    stem = tmp_path_factory.mktemp("cmp") / "cmp"
    args = ["compare", *ckpts, *ENTRY, "--xpoints", "5", "--curve-points", "7", "--interp-points", "5", "--out", stem,
            "--quiet"] + [x for m in CHEAP for x in ("--measure", m)]
    out = _main(args)
    return out, stem, args


def _main(args, code=0):
    import contextlib
    import io

    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        got = main([str(a) for a in args])
    assert got == code, buf.getvalue()[-2000:]
    return buf.getvalue()


def self_contained(text: str) -> None:
    """No script, style or link that fetches anything; plotly.js inlined exactly once."""
    tags = re.findall(r"<(?:script|link|img|iframe)\b[^>]*>", text)
    assert not any(re.search(r"\b(?:src|href)\s*=", t) for t in tags), tags
    assert not re.search(r"@import|url\(\s*['\"]?https?:", text)
    assert text.count(PLOTLY_BANNER) == 1 and text.count("<script") >= 2


def test_analyze_html_report(ckpts, tmp_path):
    html = tmp_path / "r.html"
    args = ["analyze", ckpts[1], *ENTRY, "--html", html, "--top-k", "2", "--trace-samples", "10", "--density-runs",
            "1", "--density-steps", "10", "--landscape-points", "5", "--landscape-curve-points", "7", "--quiet"]
    out = _main(args)
    assert "wrote" in out and str(html) in out
    report = json.loads((tmp_path / "r.analysis.json").read_text())
    assert report["complete"] and report["spectral_density"]["matvecs"] > 0  # --html switches the density on
    one, two = Surface.load(tmp_path / "r.1d.npz"), Surface.load(tmp_path / "r.2d.npz")
    assert one.shape == (7,) and two.shape == (5, 5) and one.complete and two.complete
    assert two.meta["directions"]["kind"] == "random" and two.meta["directions"]["norm"] == "filter"
    assert one.value_at("train_loss", 0.0) == pytest.approx(report["metrics"]["train_loss"], rel=1e-5)
    text = html.read_text()
    self_contained(text)
    for anchor in ("overview", "measures", "eigenvalues", "density", "gradient-norms", "ascents", "landscape-1d",
                   "landscape-2d"):
        assert f'id="{anchor}"' in text, anchor
    assert 'id="interpolation"' not in text
    assert "top_k=2" in text and "Hessian trace" in text and "sam(" in text
    eig = report["hessian_eigenvalues"]["eigenvalues"]
    assert f"{eig[0]:.6g}" in text
    # Re-run: the analysis and the surfaces resume, nothing is recomputed.
    before = {p.name: p.read_bytes() for p in tmp_path.glob("r.*.npz")}
    seconds = report["hessian_eigenvalues"]["seconds"]
    _main(args)
    assert {p.name: p.read_bytes() for p in tmp_path.glob("r.*.npz")} == before
    assert json.loads((tmp_path / "r.analysis.json").read_text())["hessian_eigenvalues"]["seconds"] == seconds
    # The same checkpoint under another path (its SHA-256 is what counts) resumes too.
    moved = tmp_path / "moved.pt"
    moved.write_bytes(Path(ckpts[1]).read_bytes())
    _main([args[0], moved, *args[2:]])
    assert {p.name: p.read_bytes() for p in tmp_path.glob("r.*.npz")} == before
    again = json.loads((tmp_path / "r.analysis.json").read_text())
    assert again["hessian_eigenvalues"]["seconds"] == seconds and again["checkpoint"]["path"] == str(moved)


def test_analyze_html_flags(ckpts, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:  # refused by the parser's range check
        main(["analyze", str(ckpts[0]), *ENTRY, "--html", str(tmp_path / "x.html"), "--landscape-range", "0",
              "--top-k", "0", "--trace-samples", "0", "--quiet"])
    code, err = exit_.value.code, capsys.readouterr().err
    assert code == 2 and "--landscape-range" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x.analysis.json").exists()  # refused before any work
    _main(["analyze", ckpts[0], *ENTRY, "--html", tmp_path / "y.html", "--json", tmp_path / "y.json", "--top-k", "0",
           "--trace-samples", "0", "--density-steps", "5", "--landscape-points", "0", "--landscape-curve-points", "0",
           "--sharpness-rho", "", "--adaptive-rho", "", "--gap-rho", "", "--quiet"])
    text = (tmp_path / "y.html").read_text()
    assert (tmp_path / "y.json").exists() and not list(tmp_path.glob("y.*.npz"))
    assert 'id="density"' in text and 'id="landscape-2d"' not in text and 'id="eigenvalues"' not in text


def test_compare_prints_and_writes_the_measures_table(compared, ckpts, tmp_path):
    out, stem, args = compared
    assert "measures" in out and "hessian_eigenvalues.lambda_max" in out and "sam vs sgd:" in out
    summary = json.loads(Path(f"{stem}.json").read_text())
    m = summary["measures"]
    assert m["labels"] == ["sgd", "sam"] and m["reports"] == [f"{stem}.sgd.analysis.json", f"{stem}.sam.analysis.json"]
    reports = [json.loads(Path(p).read_text()) for p in m["reports"]]
    assert m["rows"]["hessian_trace.trace"] == [r["hessian_trace"]["trace"] for r in reports]
    assert m["rows"]["metrics.test_acc"] == [r["metrics"]["test_acc"] for r in reports]
    assert m["rows"]["optimizer"][0] == "sgd" and m["rows"]["optimizer"][1].startswith("sam(")
    assert all(r["settings"]["top_k"] == 2 and r["spectral_density"] for r in reports)
    md = Path(f"{stem}.measures.md").read_text()
    assert "| measure | sgd | sam |" in md and m["headline"] in md
    land = summary["landscapes"]
    assert [c["curve"] for c in land["checkpoints"]] == [f"{stem}.sgd.1d.npz", f"{stem}.sam.1d.npz"]
    assert Surface.load(f"{stem}.sam.1d.npz").shape == (7,)
    text = Path(summary["html"]).read_text()
    self_contained(text)
    for anchor in ("overview", "measures", "eigenvalues", "density", "gradient-norms", "landscape-1d",
                   "landscape-2d", "interpolation"):
        assert f'id="{anchor}"' in text, anchor
    assert "<th>sam / sgd</th>" in text and "every measure, its settings and cost" in text

    # The same analyses given as --analysis: the same table; in the wrong order: refused.
    reused = _main(["compare", *ckpts, *ENTRY, "--xpoints", "5", "--curve-points", "7", "--interp-points", "5", "--out",
                    tmp_path / "again", "--quiet", "--analysis", *m["reports"]])
    assert json.loads((tmp_path / "again.json").read_text())["measures"]["rows"] == m["rows"]
    assert "hessian_eigenvalues.lambda_max" in reused
    code = main(["compare", *map(str, ckpts), *ENTRY, "--out", str(tmp_path / "bad"), "--quiet", "--analysis",
                 *m["reports"][::-1]])
    assert code == 2
    # No measures: the landscapes only, and a page without a measures section.
    _main(["compare", *ckpts, *ENTRY, "--xpoints", "5", "--curve-points", "0", "--no-interp", "--out",
           tmp_path / "bare", "--quiet", "--no-measures"])
    bare = json.loads((tmp_path / "bare.json").read_text())
    assert "measures" not in bare and 'id="measures"' not in (tmp_path / "bare.html").read_text()


def test_compare_reruns_without_recomputing(compared):
    out, stem, args = compared
    files = sorted(Path(stem).parent.glob(f"{Path(stem).name}.*.npz")) + \
        sorted(Path(stem).parent.glob(f"{Path(stem).name}.*.analysis.json"))
    before = {p: p.read_bytes() for p in files}
    again = _main(args)
    assert {p: p.read_bytes() for p in files} == before
    assert again.count("hessian_eigenvalues.lambda_max") == out.count("hessian_eigenvalues.lambda_max")


@needs_chromium
@pytest.mark.parametrize("page", ["compare", "analyze"])
def test_report_renders_in_headless_chromium(compared, ckpts, tmp_path, page):
    from matplotlib.image import imread

    if page == "compare":
        html = Path(f"{compared[1]}.html")
        figures = 9  # eigenvalues, density, gradient norms, ascents, 1-D, train/test contours, 3-D, interpolation
    else:
        html = tmp_path / "one.html"
        _main(["analyze", ckpts[0], *ENTRY, "--html", html, "--top-k", "2", "--trace-samples", "10",
               "--density-runs", "1", "--density-steps", "10", "--landscape-points", "5",
               "--landscape-curve-points", "7", "--quiet"])
        figures = 6  # eigenvalues, density, gradient norms, worst-case ascents, 1-D, 3-D + contour
    dom = dump_dom(html, tmp_path, budget_ms=15000)
    assert dom.count('class="plot-container plotly"') == figures  # every figure drawn by the one plotly.js
    for heading in ("Overview", "Measures", "Top Hessian eigenvalues", "Hessian spectral density",
                    "Gradient norms per layer", "Worst-case ascents", "1-D loss landscape", "2-D loss landscape"):
        assert f">{heading}</h2>" in dom, heading
    assert "Hessian spectral density (stochastic Lanczos quadrature)" in dom  # a figure title drawn as SVG text
    if page == "analyze":
        return
    png = tmp_path / "shot.png"
    screenshot(html, png, tmp_path, size="1300,2600")
    img = imread(png)[..., :3]
    band = img[int(0.3 * img.shape[0]):]  # below the tables: the figures
    colours = np.unique((band * 255).astype(np.uint8).reshape(-1, 3), axis=0)
    assert len(colours) > 100 and band.std() > 0.05, f"figures look blank ({len(colours)} colours)"


def test_html_report_checks_its_inputs(tmp_path):
    from landscape.report import html_report

    with pytest.raises(ValueError, match="at least one"):
        html_report([], tmp_path / "x.html")
    header = {"checkpoint": {"path": "runs/a.pt", "sha256": "0123456789abcdef"}, "model": {"name": "mlp"}}
    s = Surface([np.linspace(-1, 1, 3)], {"train_loss": np.ones(3), "train_acc": np.ones(3)}, np.ones(3, bool), {})
    with pytest.raises(ValueError, match="2 curves for 1 reports"):
        html_report([header], tmp_path / "x.html", curves=[s, s])
    path = html_report([header], tmp_path / "x.html", labels=["a"], curves=[s])
    text = path.read_text()
    assert 'id="landscape-1d"' in text and 'id="eigenvalues"' not in text and 'id="measures"' not in text
    assert "runs/a.pt" in text and "0123456789ab" in text
    self_contained(text)


def test_demo_quick_end_to_end_resumes_after_a_kill_and_then_does_no_work(tmp_path, monkeypatch):
    from landscape.analysis import load_measures
    from landscape.cli import compare as C
    from landscape.objective import Objective

    def refuse(*a, **k):
        raise AssertionError("the re-run redid finished work")

    def killed(*a, **k):
        raise KeyboardInterrupt

    out_dir = tmp_path / "demo"
    args = ["demo", "--quick", "--epochs", "1", "--out-dir", out_dir, "--quiet"]
    with monkeypatch.context() as m:  # killed once both runs are trained and analyzed
        m.setattr(C, "compare", killed)
        _main(args, code=130)
    assert (out_dir / "sam.analysis.json").exists() and not (out_dir / "sgd_vs_sam.json").exists()
    with monkeypatch.context() as m:  # the re-run only compares
        m.setattr(Trainer, "run", refuse)
        for measure in load_measures().values():
            m.setattr(measure, "compute", refuse)
        out = _main(args)
    lines = out.strip().splitlines()
    assert lines[-2].startswith("verdict: sam vs sgd: test acc") and "lambda_max" in lines[-2]
    assert f"report: {out_dir / 'sgd_vs_sam.html'}" in out
    for name in ("sgd.pt", "sam.pt", "sgd.analysis.json", "sam.analysis.json", "sgd_vs_sam.html",
                 "sgd_vs_sam.measures.md", "sgd_vs_sam.json", "sgd_vs_sam.png", "sgd_vs_sam.sgd.npz",
                 "sgd_vs_sam.sam.1d.npz", "sgd_vs_sam.interp-sgd-sam.npz"):
        assert (out_dir / name).stat().st_size > 0, name
    for name in ("sgd", "sam"):
        report = json.loads((out_dir / f"{name}.analysis.json").read_text())
        assert report["complete"] and report["optimizer"]["name"] == name
        for section in ("hessian_eigenvalues", "hessian_trace", "spectral_density", "sharpness", "adaptive_sharpness"):
            assert section in report, section
    summary = json.loads((out_dir / "sgd_vs_sam.json").read_text())
    assert summary["measures"]["reports"] == [str(out_dir / "sgd.analysis.json"), str(out_dir / "sam.analysis.json")]
    self_contained((out_dir / "sgd_vs_sam.html").read_text())
    before = {p.name: p.read_bytes() for p in out_dir.glob("*") if p.suffix in (".pt", ".npz")}

    # Once more, with training, every measure and every surface evaluation made to fail: nothing is redone.
    monkeypatch.setattr(Trainer, "run", refuse)
    monkeypatch.setattr(Objective, "evaluate_many", refuse)
    for measure in load_measures().values():
        monkeypatch.setattr(measure, "compute", refuse)
    again = _main(args)
    assert again.splitlines()[-2] == lines[-2]
    assert {p.name: p.read_bytes() for p in out_dir.glob("*") if p.suffix in (".pt", ".npz")} == before
