"""The study file: runs, ids, names, validation errors (one line, CLI exit 2); measure scalars."""
from __future__ import annotations

import re

import pytest

from landscape.analysis import default_scalars, report_scalars, section_scalars
from landscape.cli import main
from landscape.study.spec import StudyError, load_study, parse_study

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

BASE = """
seeds = [0, 1]
[train]
model = "tests.fixtures:tiny_mlp"
data = "tests.fixtures:blobs"
epochs = 1
[grid]
lr = [0.05, 0.1]
model_kwargs.dropout = [0.0, 0.25]
[optimizers.sgd]
[optimizers.sam]
rho = [0.01, 0.05]
p = 2
[optimizers.sam_adamw]
method = "sam"
base = "adamw"
train = { betas = [0.9, 0.99] }
[measures]
top_k = 1
"""


def write(tmp_path, text, name="s.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_runs_ids_names_and_configs(tmp_path):
    study = load_study(write(tmp_path, BASE))
    # 2 lr x 2 dropout x (sgd + 2 sam variants + sam_adamw) x 2 seeds
    assert len(study.runs) == 2 * 2 * 4 * 2 and len({r.id for r in study.runs}) == len(study.runs)
    assert study.axes == {"lr": [0.05, 0.1], "model_kwargs.dropout": [0.0, 0.25]}
    assert study.optimizer_axes == {"sgd": {}, "sam": {"rho": [0.01, 0.05]}, "sam_adamw": {}}
    r = next(r for r in study.runs if r.variant == "sam(rho=0.05)" and r.seed == 1)
    assert r.name == "sam(rho=0.05) lr=0.05 dropout=0 seed=1" and r.method == "sam" and r.hparams == {"rho": 0.05}
    c = r.config
    assert c["optimizer"] == "sam" and c["seed"] == 1 and c["lr"] == 0.05 and c["model_kwargs"] == {"dropout": 0.0}
    assert c["hparams"]["rho"] == 0.05 and c["hparams"]["p"] == 2 and "eta" in c["hparams"]  # resolved
    a = next(r for r in study.runs if r.optimizer == "sam_adamw")
    assert a.config["base"] == "adamw" and a.config["betas"] == [0.9, 0.99] and a.config["hparams"]["rho"] == 0.05
    # Ids are a function of the resolved configuration only: stable across files and orders.
    again = parse_study({"seeds": [1, 0], **{k: v for k, v in _doc(BASE).items() if k != "seeds"}})
    assert {x.id: x.name for x in again.runs} == {x.id: x.name for x in study.runs}
    assert study.passes == {"": {"top_k": 1}} and study.hparam_columns() == ["rho"]


def _doc(text):
    import tomllib

    return tomllib.loads(text)


def test_measure_passes(tmp_path):
    text = BASE.replace("[measures]\ntop_k = 1", "[measures]\nsubset = 50\n[measures.curv]\ntop_k = 2\n"
                                               "[measures.grad]\ntop_k = 0\ngrad_batch_size = 8")
    study = load_study(write(tmp_path, text))
    assert study.passes == {"curv": {"subset": 50, "top_k": 2},
                            "grad": {"subset": 50, "top_k": 0, "grad_batch_size": 8}}


@pytest.mark.parametrize("edit, message", [
    (("[grid]", "[grid]\nbogus = [1]"), "[grid] unknown training option 'bogus'"),
    (("[grid]", "[grid]\nseed = [1, 2]"), "[grid] seed cannot be an axis; use seeds"),
    (("lr = [0.05, 0.1]", "lr = [0.05, 0.05]"), "[grid] lr has repeated values"),
    (("[optimizers.sgd]", "[optimizers.nosuch]"), "[optimizers.nosuch] unknown optimizer 'nosuch'; known:"),
    (("p = 2", "p = 2\nrhoo = 1"), "[optimizers.sam] sam has no hyper-parameter rhoo; it takes:"),
    (("base = \"adamw\"", "base = \"adamw\"\nlr = 1"), "[optimizers.sam_adamw] sam has no hyper-parameter lr"),
    (("train = { betas = [0.9, 0.99] }", "train = { dropout = 0.1 }"),
     "[optimizers.sam_adamw] unknown training option(s) dropout"),
    (("train = { betas = [0.9, 0.99] }", "train = { lr = 0.1 }"), "[optimizers.sam_adamw] cannot override lr"),
    (("top_k = 1", "top_kk = 1"), "[measures] unknown analysis option(s): top_kk"),
    (("top_k = 1", "top_k = \"five\""), "[measures] top_k: invalid value 'five' for --top-k"),
    (("top_k = 1", "top_k = 1.5"), "[measures] top_k: invalid value 1.5 for --top-k"),
    (("top_k = 1", "density = 1"), "[measures] density: invalid value 1 for --density (an on/off flag takes"),
    (("top_k = 1", "which = \"most\""), "[measures] which must be one of largest, smallest, both"),
    (("seeds = [0, 1]", "seeds = [0, 0]"), "seeds must be a list of distinct integers"),
    (("epochs = 1", "epochs = 1\nseed = 3"), "[train] seed is set by seeds, not [train]"),
    (("model = \"tests.fixtures:tiny_mlp\"", "model = \"nosuchmodel\""), "[train] unknown model 'nosuchmodel'"),
    (("model = \"tests.fixtures:tiny_mlp\"", "model = \"tests.fixtures:nope\""), "has no attribute 'nope'"),
    (("[grid]", "[correlation]\nmin_train_acc = 1.5\n[grid]"), "[correlation] min_train_acc must be in [0, 1]"),
    (("[grid]", "[correlation]\ntarget = 1\n[grid]"), "[correlation] unknown key(s) target"),
    (("seeds = [0, 1]", "seeds = [0, 1]\nbogus = 1"), "unknown key(s) bogus"),
    (("[grid]", "[grid"), "invalid TOML"),
])
def test_validation_errors_are_one_line_and_exit_2(tmp_path, capsys, edit, message):
    path = write(tmp_path, BASE.replace(*edit, 1))
    with pytest.raises(StudyError) as e:
        load_study(path)
    assert message in str(e.value) and "\n" not in str(e.value) and str(e.value).startswith(str(path))
    assert main(["study", str(path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("landscape: error: ") and message in err[0]


def test_cli_errors(tmp_path, capsys):
    assert main(["study", str(tmp_path / "missing.toml")]) == 2
    assert "missing.toml: no such file" in capsys.readouterr().err
    path = write(tmp_path, BASE)
    with pytest.raises(SystemExit) as e:  # checked as the command line is parsed
        main(["study", str(path), "--min-train-acc", "2"])
    assert e.value.code == 2 and "--min-train-acc: must be in [0, 1], got '2'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["study", str(path), "--workers", "0"])
    assert "--workers: must be an integer >= 1, got '0'" in capsys.readouterr().err
    assert main(["study", str(path), "--dry-run", "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "32 runs: 32 pending" in out and "sam(rho=0.01) lr=0.1 dropout=0.25 seed=1" in out


def test_default_scalars_of_a_section_registered_elsewhere():
    section = {"value": 0.5, "rho": 0.05, "p": 2, "eigenvalues": [3.0, 2.0], "values": [1.5], "normalized": True,
               "matvecs": 10, "seconds": 1.0, "k": 2, "method": "lanczos", "curve": [1.0, 2.0], "none": None}
    assert default_scalars(section) == {"value": 0.5, "rho": 0.05, "p": 2.0, "eigenvalues[0]": 3.0,
                                        "values[0]": 1.5}
    assert section_scalars("not_registered", section) == default_scalars(section)
    sweep = {"geometry": {"p": 2.0, "eta": 0.0}, "rho": [0.05, 0.1], "seconds": 3.0,
             "rows": [{"rho": 0.05, "worst_case": {"sharpness": 0.2, "perturbed_loss": 0.3, "work": {"grads": 10}}},
                      {"rho": 0.1, "worst_case": {"sharpness": 0.4, "perturbed_loss": 0.5, "work": {"grads": 10}},
                       "average_case": {"sharpness": 0.01}}],
             "levels": [{"value": 1.0}, {"value": 1.0}]}
    assert default_scalars(sweep) == {
        "rows[rho=0.05].worst_case.sharpness": 0.2, "rows[rho=0.05].worst_case.perturbed_loss": 0.3,
        "rows[rho=0.1].worst_case.sharpness": 0.4, "rows[rho=0.1].worst_case.perturbed_loss": 0.5,
        "rows[rho=0.1].average_case.sharpness": 0.01, "levels[0].value": 1.0, "levels[1].value": 1.0}
    report = {"metrics": {"train_loss": 0.1, "train_acc": 1.0, "test_loss": 0.2, "test_acc": 0.9, "gen_gap": 0.1,
                          "loss_gap": 0.1, "train_samples": 96},
              "hessian_eigenvalues": {"eigenvalues": [5.0, 1.0], "which": "largest", "method": "lanczos"},
              "hessian_trace": {"trace": 7.0, "stderr": 0.1}, "gradient_norms": {"norm": 2.0, "strength": 0.1}}
    assert report_scalars(report) == {
        "metrics.train_loss": 0.1, "metrics.train_acc": 1.0, "metrics.test_loss": 0.2, "metrics.test_acc": 0.9,
        "metrics.gen_gap": 0.1, "metrics.loss_gap": 0.1, "hessian_eigenvalues.lambda_max": 5.0,
        "hessian_trace.trace": 7.0, "gradient_norms.norm": 2.0, "gradient_norms.strength": 0.1}
    both = {"eigenvalues": [5.0, 4.0, -1.0, 0.5], "which": "both", "method": "lanczos"}
    assert section_scalars("hessian_eigenvalues", both) == {"lambda_max": 5.0, "lambda_min": -1.0}
    assert section_scalars("fisher_eigenvalues", {"eigenvalues": [2.0, 1.0]}) == {"lambda_max": 2.0, "topk_sum": 3.0}


def test_options_are_parsed_like_the_command_line(monkeypatch):
    import argparse

    from landscape import analysis
    from landscape.study.spec import analysis_options, option_values

    def floats(text):
        return [float(t) for t in text.split(",")]

    def add(g):
        g.add_argument("--toy-rhos", type=floats, default="0.05")
        g.add_argument("--toy-p", choices=["2", "inf"], default="2")
        g.add_argument("--toy-ks", type=int, nargs="+", default=[1])
        g.add_argument("--toy-on", action=argparse.BooleanOptionalAction, default=True)

    analysis.load_measures()
    monkeypatch.setitem(analysis.MEASURES, "toy", analysis.Measure("toy", "toy", add, lambda c: {}, lambda s: []))
    assert option_values({"toy_rhos": [0.01, 1e-5], "toy_p": "inf", "toy_ks": 3, "toy_on": False, "top_k": 2,
                          "tol": 1, "subset": None}) == {
        "toy_rhos": [0.01, 1e-5], "toy_p": "inf", "toy_ks": [3], "toy_on": False, "top_k": 2, "tol": 1.0,
        "subset": None}
    assert option_values({"toy_rhos": 0.5, "toy_ks": [1, 2]}) == {"toy_rhos": [0.5], "toy_ks": [1, 2]}
    o = analysis_options({"toy_rhos": "0.1,0.2", "params": "weights"})
    assert o.toy_rhos == [0.1, 0.2] and o.params == "weights" and o.top_k == 5 and o.toy_on
    assert option_values({"toy_p": 2, "params": ["a", "b"]}) == {"toy_p": "2", "params": "a,b"}
    for bad, msg in [({"toy_p": 3}, "toy_p must be one of 2, inf, got 3"),
                     ({"toy_rhos": "x"}, "toy_rhos: invalid value 'x' for --toy-rhos"),
                     ({"top_k": True}, "not an on/off flag"), ({"toy_on": "yes"}, "on/off flag")]:
        with pytest.raises(ValueError, match=re.escape(msg)):
            option_values(bad)


def test_scalars_of_the_sharpness_sections():
    import torch

    from landscape.analysis import analyze
    from landscape.study.spec import analysis_options
    from tests.fixtures import blobs, tiny_mlp

    torch.manual_seed(0)
    opts = analysis_options({"top_k": 1, "trace_samples": 0, "sharpness_rho": [0.01, 0.05], "sharpness_samples": 2,
                             "sharpness_steps": 2, "adaptive_p": "inf", "gnr_rho": 0.05, "gnr_steps": 2,
                             "extrema_directions": 2, "corruption_eps": 0.05, "corruption_draws": 2,
                             "corruption_steps": 2, "pac_bayes": True, "pac_bayes_samples": 2,
                             "pac_bayes_iterations": 3})
    r = analyze(tiny_mlp(), blobs(), opts)
    sc = report_scalars(r)
    rows = r["sharpness"]["rows"]
    assert sc["sharpness.worst[rho=0.01]"] == rows[0]["worst_case"]["sharpness"]
    assert sc["sharpness.average[rho=0.05]"] == rows[1]["average_case"]["sharpness"]
    assert sc["adaptive_sharpness.worst[rho=0.5]"] == r["adaptive_sharpness"]["rows"][0]["worst_case"]["sharpness"]
    assert r["adaptive_sharpness"]["geometry"]["p"] in ("inf", float("inf"))
    assert sc["surrogate_gap.gap[rho=0.05]"] == r["surrogate_gap"]["rows"][0]["gap"]
    assert sc["gnr.R[rho=0.05]"] == r["gnr"]["rows"][0]["R"]
    assert sc["local_extrema.fraction_with_minimum"] == r["local_extrema"]["fraction_with_minimum"]
    c = next(x for x in r["corruption"]["rows"] if x["kind"] == "adversarial")
    assert sc["corruption.adversarial_l2[eps=0.05].loss_increase"] == c["train"]["loss_increase"]
    assert sc["pac_bayes.flatness"] == r["pac_bayes"]["flatness"]
    assert not any("seconds" in k or "work" in k for k in sc)


def test_the_readme_example_is_a_valid_study():
    import tomllib
    from pathlib import Path

    text = (Path(__file__).resolve().parents[1] / "README.md").read_text().split("## Studies", 1)[1]
    doc = tomllib.loads(re.search(r"```toml\n(.+?)\n```", text, re.S).group(1))
    study = parse_study(doc, "readme.toml")
    assert len(study.runs) == 16 * 4 and study.passes[""]["sharpness_rho"] == [0.01, 0.05, 0.2]
