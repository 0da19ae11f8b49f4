"""Every bad input is a one-line error with exit status 2, found before any work: option values (command line,
``--config`` TOML, study files), files that are not checkpoints, non-finite weights, mismatched checkpoints,
output paths; plus the entry-point conveniences (``-`` is stdout, modules in the current directory, a
shadowing ``landscape`` folder). The fuzz test at the end draws a few hundred bad invocations."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from landscape.checkpoint import Checkpoint
from landscape.cli import build_parser, main
from optimizers.config import TrainConfig

ROOT = Path(__file__).resolve().parents[1]
KW = {"input_shape": [1, 8, 8], "num_outputs": 10, "hidden": [8]}


def save_builtin(path: Path, hidden: list[int] | None = None, poison: float | None = None) -> str:
    """A checkpoint of the built-in ``mlp`` on ``digits``; ``poison``: write this value into one weight."""
    from landscape.models import build_model

    torch.manual_seed(0)
    kwargs = {**KW, "hidden": hidden or KW["hidden"]}
    sd = build_model("mlp", **kwargs).state_dict()
    if poison is not None:
        name = [k for k in sd if k.endswith("weight")][-1]
        sd[name] = sd[name].clone()
        sd[name].view(-1)[3] = poison
    Checkpoint(model_name="mlp", model_kwargs=kwargs, data_name="digits", data_kwargs={"seed": 0},
               state_dict=sd).save(path)
    return str(path)


def invoke(argv: list[str], capsys) -> tuple[int, str, str]:
    """``landscape ARGV`` in this process: (exit status, stdout, stderr); argparse's exits included."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    out = capsys.readouterr()
    return code, out.out, out.err


def assert_one_line_error(code: int, err: str, *needles: str) -> None:
    assert code == 2, (code, err)
    assert err.count("\n") == 1 and err.endswith("\n"), err
    assert "Traceback" not in err and "weights_only" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("bad_inputs")
    out = {"good": save_builtin(d / "good.pt"), "wide": save_builtin(d / "wide.pt", hidden=[9]),
           "nan": save_builtin(d / "nan.pt", poison=float("nan")),
           "inf": save_builtin(d / "inf.pt", poison=-float("inf"))}
    (d / "folder.pt").mkdir()
    (d / "empty.pt").write_bytes(b"")
    (d / "random.pt").write_bytes(random.Random(0).randbytes(512))
    (d / "text.pt").write_text("hello\n")

    class Code:
        def __reduce__(self):
            return (os.system, ("touch pwned",))

    torch.save({"x": Code()}, d / "code.pt")
    (d / "pickle.pt").write_bytes(pickle.dumps({"weights": [1.0, 2.0]}))
    good = Path(out["good"]).read_bytes()
    (d / "truncated.pt").write_bytes(good[: len(good) // 2])
    out.update({k: str(d / f"{k}.pt") for k in ("folder", "empty", "random", "text", "code", "pickle", "truncated")})
    out["missing"] = str(d / "missing.pt")
    return out


# --------------------------------------------------------------------------- option values
@pytest.mark.parametrize("argv, needles", [
    (["--optimizer", "sam", "--rho", "abc"], ["--rho", "'abc'"]),
    (["--optimizer", "sam", "--rho", "nan"], ["--rho", "finite"]),
    (["--optimizer", "sam", "--rho", "inf"], ["--rho", "finite"]),
    (["--optimizer", "sam", "--rho", "NaN"], ["--rho", "finite"]),
    (["--optimizer", "sam", "--rho", "-1"], ["rho must be >= 0"]),
    (["--optimizer", "looksam", "--k", "2.5"], ["--k", "integer"]),
    (["--optimizer", "sam", "--sync-perturbation", "3"], ["--sync-perturbation", "true or false"]),
    (["--epochs", "-3"], ["--epochs", ">= 1", "'-3'"]),
    (["--lr", "nan"], ["--lr", "finite"]),
    (["--momentum", "1.5"], ["--momentum", "[0, 1)"]),
    (["--steps", "0"], ["--steps", ">= 1"]),
    (["--seed", "99999999999"], ["--seed", "2**32"]),
    (["--schedule", "sometimes"], ["--schedule", "cosine"]),
    (["--label-smoothing", "1"], ["--label-smoothing", "[0, 1)"]),
])
def test_train_bad_value_names_the_flag(argv, needles, tmp_path, capsys):
    out = tmp_path / "run.pt"
    code, _, err = invoke(["train", "--out", out, "--quiet", *argv], capsys)
    assert_one_line_error(code, err, *needles)
    assert not list(tmp_path.iterdir()), "nothing may be written"


def test_train_config_toml_bad_value_names_the_key(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('lr = "fast"\n')
    code, _, err = invoke(["train", "--out", tmp_path / "run.pt", "--config", cfg], capsys)
    assert_one_line_error(code, err, f"lr in {cfg}", "'fast'")
    cfg.write_text("[hparams]\nrho = -0.5\n")
    code, _, err = invoke(["train", "--out", tmp_path / "run.pt", "--config", cfg, "--optimizer", "sam"], capsys)
    assert_one_line_error(code, err, "rho must be >= 0")
    code, _, err = invoke(["train", "--out", tmp_path / "run.pt", "--config", tmp_path], capsys)
    assert_one_line_error(code, err, "is a directory")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run.toml"]


def test_train_config_validate_every_rule():
    """Each numeric option's bounds, as documented by the message, hold exactly at the edges."""
    from optimizers.config import _RULES

    for name, (kind, rng, optional) in _RULES.items():
        good = [v for v in (0, 1, 0.5, 2**32 - 1, 10) if (kind is float or isinstance(v, int)) and v in rng]
        for v in good:
            TrainConfig.from_dict({name: v})
        for v in ("x", float("nan"), float("inf"), True, [1]) + ((1.5,) if kind is int else ()):
            with pytest.raises(ValueError, match=name):
                TrainConfig.from_dict({name: v})
        outside = [v for v in (-1, 0, 1, 2**32) if v not in rng]
        for v in outside:
            with pytest.raises(ValueError, match=f"{name} must be"):
                TrainConfig.from_dict({name: v})
        if optional:
            TrainConfig.from_dict({name: None})
    for bad in ({"betas": [0.9]}, {"betas": [0.9, 1.0]}, {"milestones": [1.5]}, {"amp": "fp8"}, {"base": "lion"},
                {"model": ""}, {"nesterov": 1}, {"hparams": []}, {"optimizer": "nope"}):
        with pytest.raises((ValueError, KeyError)):
            TrainConfig.from_dict(bad)
    assert TrainConfig.from_dict({"optimizer": "ga_sam", "hparams": {"p": float("inf")}}).hparams["p"] == float("inf")
    from landscape.cli.train import config_from_args

    args = build_parser().parse_args(["train", "--out", "x.pt", "--optimizer", "sam", "--p", "inf"])
    assert config_from_args(args).hparams == {"p": float("inf")}
    with pytest.raises(ValueError, match="X rho"):
        TrainConfig.from_dict({"optimizer": "sam", "hparams": {"rho": "a"}}, label=lambda k: f"X {k[8:]}")


def test_study_dry_run_validates_every_run(tmp_path, capsys):
    cases = {
        '[train]\nlr = "fast"\n[optimizers.sgd]\n': "[train] lr must be a number >= 0, got 'fast'",
        "[grid]\nepochs = [1, -2]\n[optimizers.sgd]\n": "[grid] epochs must be an integer >= 1, got -2",
        "[optimizers.sam]\nrho = [0.05, -1]\n": "optimizer sam: rho must be >= 0, got -1",
        '[optimizers.sam]\nrho = [0.05, "x"]\n': "[optimizers.sam] rho must be a number",
        "seeds = [0, -1]\n[optimizers.sgd]\n": "seeds must be an integer in [0, 2**32), got -1",
        "[optimizers.sgd]\ntrain = {momentum = 2.0}\n": "[optimizers.sgd] train.momentum must be a number in [0, 1)",
        "[optimizers.sgd]\n[measures.a]\ntop_k = -1\n": "top_k",
    }
    for i, (text, needle) in enumerate(cases.items()):
        study = tmp_path / f"s{i}.toml"
        study.write_text(text)
        code, out, err = invoke(["study", study, "--dry-run"], capsys)
        assert_one_line_error(code, err, needle)
        assert not (tmp_path / f"s{i}").exists()


@pytest.mark.parametrize("argv, needles", [
    (["plot2d", "CKPT", "--xpoints", "1"], ["--xpoints", ">= 2", "'1'"]),
    (["plot2d", "CKPT", "--xpoints", "5", "--ypoints", "1"], ["--ypoints"]),
    (["plot1d", "CKPT", "--xpoints", "0"], ["--xpoints"]),
    (["plot2d", "CKPT", "--xrange", "1", "-1"], ["--xrange", "LO must be below HI"]),
    (["plot2d", "CKPT", "--xrange", "nan", "1"], ["--xrange", "finite"]),
    (["compare", "CKPT", "CKPT", "--curve-points", "1"], ["--curve-points", "0 or >= 2"]),
    (["analyze", "CKPT", "--top-k", "-1"], ["--top-k", ">= 0", "'-1'"]),
    (["analyze", "CKPT", "--tol", "0"], ["--tol", "> 0"]),
    (["analyze", "CKPT", "--sharpness-rho", "0.1,inf"], ["--sharpness-rho", "finite"]),
    (["analyze", "CKPT", "--landscape-range", "-1"], ["--landscape-range"]),
    (["shift", "CKPT", "--finetune-momentum", "1"], ["--finetune-momentum", "[0, 1)"]),
    (["study", "CKPT", "--min-train-acc", "nan"], ["--min-train-acc", "finite"]),
    (["demo", "--epochs", "0"], ["--epochs"]),
    (["demo", "--threads", "-2"], ["--threads"]),
])
def test_numeric_flags_checked_before_any_work(argv, needles, capsys, tmp_path):
    """Parsed and rejected before the (here missing) checkpoint is even opened."""
    argv = [str(tmp_path / "never-opened.pt") if a == "CKPT" else a for a in argv]
    code, _, err = invoke(argv, capsys)
    assert_one_line_error(code, err, *needles)
    assert err.startswith(f"landscape {argv[0]}: error: argument ") or "LO must be below HI" in err


def test_demo_out_dir_on_a_file(tmp_path, capsys):
    f = tmp_path / "results"
    f.write_text("keep me")
    for target in (f, f / "sub"):
        code, _, err = invoke(["demo", "--quick", "--out-dir", target], capsys)
        assert_one_line_error(code, err, "--out-dir", "is a file, not a folder")
    assert f.read_text() == "keep me"


@pytest.mark.parametrize("argv, needles", [
    (["analyze", "GOOD", "--json", "FOLDER"], ["--json", "is a folder; name a file"]),
    (["analyze", "GOOD", "--json", "AFILE/r.json"], ["--json", "is a file, not a folder"]),
    (["analyze", "GOOD", "--html", "AFILE/r.html"], ["--html", "is a file, not a folder"]),
    (["plot2d", "GOOD", "--out", "AFILE/stem"], ["--out", "is a file, not a folder"]),
    (["train", "--out", "FOLDER"], ["--out", "is a folder"]),
    (["train", "--out", "AFILE/x.pt"], ["--out", "is a file, not a folder"]),
    (["study", "AFILE", "--out", "AFILE"], ["--out"]),
    (["study", "MISSING"], ["no such file"]),
    (["study", "GOOD"], ["not a TOML text file"]),
    (["analyze", "GOOD", "--device", "bogus"], ["--device 'bogus' is not a device"]),
    (["analyze", "GOOD", "--device", "cuda:99"], ["--device cuda:99"]),
    (["train", "--out", "x.pt", "--device", "gpu0"], ["--device", "is not a device"]),
])
def test_output_paths_and_devices_checked_first(files, argv, needles, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "folder").mkdir()
    (tmp_path / "afile").write_text("keep")
    subst = {"GOOD": files["good"], "FOLDER": "folder", "AFILE": "afile", "MISSING": "missing.toml"}
    argv = [subst.get(a, a.replace("AFILE", "afile")) for a in argv]
    code, _, err = invoke(argv, capsys)
    assert_one_line_error(code, err, *needles)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "folder"]
    assert not any((tmp_path / "folder").iterdir())
    assert (tmp_path / "afile").read_text() == "keep"


def test_config_device_checked(tmp_path, capsys):
    cfg = tmp_path / "run.toml"
    cfg.write_text('device = "gpu0"\n')
    code, _, err = invoke(["train", "--out", tmp_path / "x.pt", "--config", cfg], capsys)
    assert_one_line_error(code, err, f"device in {cfg} must be auto, cpu, cuda, cuda:N or mps, got 'gpu0'")


# --------------------------------------------------------------------------- files
@pytest.mark.parametrize("kind, needle", [
    ("missing", "no such file"), ("folder", "is a directory, not a checkpoint file"),
    ("empty", "empty file (0 bytes)"), ("random", "not a PyTorch checkpoint"), ("text", "not a PyTorch checkpoint"),
    ("code", "refused to load: the file asks to import"), ("pickle", "refused to load"),
    ("truncated", "corrupt or truncated"),
])
@pytest.mark.parametrize("command", ["info", "analyze", "plot2d"])
def test_bad_checkpoint_files(files, kind, needle, command, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = invoke([command, files[kind], "--quiet"] if command != "info" else [command, files[kind]], capsys)
    assert_one_line_error(code, err, needle)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("kind", ["nan", "inf"])
@pytest.mark.parametrize("command", ["analyze", "plot1d", "plot2d", "shift", "compare"])
def test_nonfinite_weights_refused_before_work(files, kind, command, capsys, tmp_path):
    argv = [command, files[kind], "--quiet", "--out" if command != "analyze" else "--json", tmp_path / "o"]
    if command == "compare":
        argv.insert(1, files["good"])
    code, _, err = invoke(argv, capsys)
    assert_one_line_error(code, err, "weight net.", "NaN" if kind == "nan" else "infinite", "--allow-nonfinite")
    assert not list(tmp_path.iterdir()), "nothing may be written"


def test_allow_nonfinite_measures_anyway(files, capsys, tmp_path):
    out = tmp_path / "r.json"
    code, _, err = invoke(["analyze", files["nan"], "--allow-nonfinite", "--quiet", "--json", out, "--top-k", "0",
                           "--trace-samples", "0", "--sharpness-rho", "", "--adaptive-rho", "", "--gap-rho", "",
                           "--subset", "64"], capsys)
    assert code == 0, err
    assert json.loads(out.read_text().replace("NaN", "null"))["checkpoint"]["path"] == files["nan"]


def test_compare_checks_architectures_first(files, capsys, tmp_path):
    code, _, err = invoke(["compare", files["good"], files["wide"], "--out", tmp_path / "c", "--quiet"], capsys)
    assert_one_line_error(code, err, "another architecture", "has shape (9, 64), not (8, 64)")
    assert not list(tmp_path.iterdir()), "checked before any analysis"


def test_json_dash_is_stdout(files, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = invoke(["analyze", files["good"], "--json", "-", "--quiet", "--top-k", "1", "--trace-samples",
                             "0", "--sharpness-rho", "", "--adaptive-rho", "", "--gap-rho", "", "--subset", "64"],
                            capsys)
    assert code == 0, err
    report = json.loads(out)  # stdout holds the JSON and nothing else
    assert len(report["hessian_eigenvalues"]["eigenvalues"]) == 1
    assert not list(tmp_path.iterdir()), "no file named '-'"


# --------------------------------------------------------------------------- your own modules
def test_entry_point_found_in_the_current_directory(tmp_path, monkeypatch):
    from landscape.entrypoints import load_entry_point

    (tmp_path / "my_i16_models.py").write_text("def factory(width=3):\n    return width\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", ".", str(tmp_path))])
    monkeypatch.delitem(sys.modules, "my_i16_models", raising=False)
    assert load_entry_point("my_i16_models:factory")(width=5) == 5
    assert sys.path[0] == str(tmp_path)
    sys.modules.pop("my_i16_models", None)
    with pytest.raises(ValueError, match="cannot import 'no_such_i16_module'.*current directory"):
        load_entry_point("no_such_i16_module:factory")


@pytest.mark.parametrize("package", [True, False])
def test_shadowing_landscape_folder_is_one_line(tmp_path, package):
    """A ``landscape`` folder first on the import path: the console script says so in one line. (A namespace
    folder shadows only an editable install, so without one the real package may win: then it runs.)"""
    (tmp_path / "landscape").mkdir()
    if package:
        (tmp_path / "landscape" / "__init__.py").write_text("")
    code = ("import runpy, sys; sys.argv = ['landscape', '--version']; "
            f"runpy.run_path({str(ROOT / 'landscape_main.py')!r}, run_name='__main__')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(["", str(ROOT)])}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, env=env,
                       timeout=120)
    if not package and r.returncode == 0:
        assert r.stdout.startswith("landscape ")
        return
    assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr
    assert f"the folder {tmp_path / 'landscape'} shadows the installed landscape package" in r.stderr


def test_subprocess_exit_status(tmp_path):
    r = subprocess.run([sys.executable, "-m", "landscape", "train", "--out", str(tmp_path / "x.pt"), "--optimizer",
                        "sam", "--rho", "abc"], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--rho" in r.stderr, r.stderr


# --------------------------------------------------------------------------- fuzzing
BAD_NUMBERS = ["abc", "nan", "NaN", "inf", "-inf", "1e999", "", "0x1p3", "1,2", "[1]", "½"]
BAD_INTS = BAD_NUMBERS + ["-1", "1.5", "2.0"]
BAD_RADII = ["abc", "nan", "inf", "1e999", "0", "-1", "1,abc", "0.1,-0.1"]
BAD_HPARAMS = ["NaN", "[1, 2]", "{}", "-Infinity"]
POSITIONALS = {"info": 1, "analyze": 1, "plot1d": 1, "plot2d": 1, "shift": 1, "compare": 2, "study": 1}
FILES = ["missing", "folder", "empty", "random", "text", "code", "pickle", "truncated", "nan"]


def _options(command: str) -> list:
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    return [a for a in sub.choices[command]._actions if a.option_strings and a.dest != "help"]


def _bad_value(action, rng: random.Random) -> list[str] | None:
    """A value that ``action`` must refuse, as argv tokens; None if the option takes no value to spoil."""
    n = action.nargs if isinstance(action.nargs, int) else 1
    if action.nargs == 0:
        return None
    if action.dest.startswith("hp_"):
        return [rng.choice(BAD_HPARAMS)]
    if action.choices is not None:
        return [rng.choice(["bogus", "", "NONE", "ｓｇｄ"])] * n
    name = getattr(action.type, "__name__", "")
    if action.type is int or name == "int":
        return [rng.choice(BAD_INTS)] + ["1"] * (n - 1)
    if name == "_floats":  # comma-separated radii ('' skips: valid)
        return [rng.choice(BAD_RADII)]
    if action.type is float or name == "float":
        return [rng.choice(BAD_NUMBERS)] + ["1"] * (n - 1)
    return None  # text and paths


def test_cli_fuzz(files, tmp_path, capsys, monkeypatch):
    """Seeded bad invocations of every subcommand (bad numbers, NaN, inf, huge, empty, wrong choices, bad files,
    foreign and code-carrying pickles): each exits with status 2 and one line of stderr, no traceback, and leaves
    every input file as it was."""
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "study.toml"
    study.write_text("[optimizers.sgd]\n")
    inputs = [Path(p) for p in files.values() if Path(p).is_file()] + [study]
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs}
    rng = random.Random(16)
    commands = build_parser()._subparsers._group_actions[0].choices
    runs = 0
    for command in commands:
        options = [a for a in _options(command) if _bad_value(a, rng) is not None]
        flags = [a for a in _options(command) if a.nargs == 0 and a.dest != "allow_nonfinite"]
        bad_files = [k for k in FILES if not (command == "info" and k == "nan")]  # info shows any weights
        for i in range(30):
            argv = [command]
            n_pos = POSITIONALS.get(command, 0)
            bad_file = n_pos and command != "study" and (i % 5 == 0 or not options)
            for j in range(n_pos):
                argv.append(str(study) if command == "study" else files[rng.choice(bad_files)] if bad_file and j == 0
                            else files["good"])
            if command == "train":
                argv += ["--out", str(tmp_path / "never.pt")]
            if not bad_file:
                for action in rng.sample(options, k=min(len(options), rng.randint(1, 3))):
                    argv += [rng.choice(action.option_strings), *_bad_value(action, rng)]
            argv += [rng.choice(f.option_strings) for f in rng.sample(flags, k=min(len(flags), rng.randint(0, 2)))]
            code, _, err = invoke(argv, capsys)
            assert code == 2 and err.count("\n") == 1, (argv, code, err)
            assert "Traceback" not in err and "weights_only" not in err, (argv, err)
            runs += 1
    assert runs >= 250
    assert {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in inputs} == digest
    assert not (tmp_path / "never.pt").exists() and not (tmp_path / "pwned").exists()


def test_every_method_hyper_parameter_has_help_and_defaults():
    from landscape.cli.train import HPARAM_HELP, hparam_help
    from optimizers import available_optimizers, optimizer_hparams

    taken = {hp: [m for m in available_optimizers() if hp in optimizer_hparams(m)]
             for m in available_optimizers() for hp in optimizer_hparams(m)}
    assert set(HPARAM_HELP) == set(taken), "describe every hyper-parameter in HPARAM_HELP"
    assert hparam_help("rho", taken["rho"]).startswith("perturbation radius [default: ")
    assert "0.05 for ae_sam, esam" in hparam_help("rho", taken["rho"]) and "0.5 for asam, lets_asam" in \
        hparam_help("rho", taken["rho"])


def test_nonfinite_surface_is_noted_and_info_names_the_tensor(files, capsys, tmp_path):
    code, out, err = invoke(["plot1d", files["nan"], "--allow-nonfinite", "--xpoints", "3", "--subset", "32",
                             "--quiet", "--no-html", "--out", tmp_path / "c"], capsys)
    assert code == 0, err
    assert "note: train_loss is not finite (NaN or inf) at 3 of 3 grid points; the plots leave them blank" in out
    code, out, _ = invoke(["info", files["nan"], "--json"], capsys)
    assert code == 0 and json.loads(out)["nonfinite_weights"] == ["net.3.weight"]


def test_resume_point_is_announced(tmp_path):
    from landscape.cli.train import _resume_point

    cfg = TrainConfig().to_dict()
    path = tmp_path / "run.resume.pt"
    assert _resume_point(path, cfg) is None
    torch.save({"config": cfg, "epoch": 2, "step": 31, "model": {"w": torch.zeros(3)}}, path)
    assert _resume_point(path, cfg) == "epoch 3, step 31"
    assert _resume_point(path, {**cfg, "lr": 0.2}) is None  # the trainer refuses it with its own message
    path.write_bytes(b"junk")
    assert _resume_point(path, cfg) is None
