"""The checkpoint contract: round trip, weights_only, and every bad-file case -> one line, exit 2."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import pytest
import torch

from landscape.checkpoint import (FORMAT, Checkpoint, CheckpointError, load_checkpoint, open_checkpoint)
from landscape.cli import main
from tests.fixtures import tiny_mlp

MODEL = "tests.fixtures:tiny_mlp"
DATA = "tests.fixtures:blobs"


def _ckpt(tmp_path, **over) -> str:
    torch.manual_seed(0)
    model = tiny_mlp()
    c = Checkpoint(model_name="mlp", model_kwargs={"input_shape": [5], "num_outputs": 3},
                   data_name="digits", data_kwargs={"seed": 0}, state_dict=model.state_dict(),
                   optimizer={"name": "sgd", "hparams": {}}, metrics={"train_loss": 0.5}, epoch=1, step=10)
    for k, v in over.items():
        setattr(c, k, v)
    path = tmp_path / "c.pt"
    c.save(path)
    return str(path)


def test_round_trip_with_weights_only(tmp_path):
    path = _ckpt(tmp_path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["format_version"] == 1
    c = load_checkpoint(path)
    assert c.model_name == "mlp" and c.metrics == {"train_loss": 0.5} and c.epoch == 1
    assert set(c.versions) >= {"landscape", "torch", "python"}
    ref = tiny_mlp()
    torch.manual_seed(0)
    ref = tiny_mlp()
    for k, v in ref.state_dict().items():
        assert torch.equal(v, c.state_dict[k])


def _write(tmp_path, name, data: bytes) -> str:
    p = tmp_path / name
    p.write_bytes(data)
    return str(p)


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > pwned.txt",))


def bad_files(tmp_path) -> dict[str, str]:
    good = _ckpt(tmp_path)
    blob = open(good, "rb").read()
    files = {
        "missing": str(tmp_path / "nope.pt"),
        "empty": _write(tmp_path, "empty.pt", b""),
        "garbage": _write(tmp_path, "garbage.pt", os.urandom(2000)),
        "truncated": _write(tmp_path, "trunc.pt", blob[: len(blob) // 2]),
        "text": _write(tmp_path, "text.pt", b"hello world\n"),
    }
    evil = tmp_path / "evil.pt"
    torch.save({"format": FORMAT, "x": Evil()}, evil)
    files["code"] = str(evil)
    pk = tmp_path / "plain.pkl"
    pk.write_bytes(pickle.dumps(Evil()))
    files["pickle"] = str(pk)
    foreign = tmp_path / "foreign.pt"
    torch.save({"epoch": 3, "acc": 0.9}, foreign)
    files["foreign"] = str(foreign)
    bare = tmp_path / "bare.pt"
    torch.save(tiny_mlp().state_dict(), bare)
    files["bare"] = str(bare)
    tensor = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor)
    files["tensor"] = str(tensor)
    v2 = tmp_path / "v2.pt"
    d = torch.load(good, weights_only=True)
    d["format_version"] = 99
    torch.save(d, v2)
    files["version"] = str(v2)
    nofield = tmp_path / "nofield.pt"
    d = torch.load(good, weights_only=True)
    del d["model"]
    torch.save(d, nofield)
    files["missing_field"] = str(nofield)
    wrongtype = tmp_path / "wrongtype.pt"
    d = torch.load(good, weights_only=True)
    d["state_dict"] = {"w": 3}
    torch.save(d, wrongtype)
    files["bad_state_dict"] = str(wrongtype)
    return files


def test_every_bad_file_is_a_checkpoint_error(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, path in bad_files(tmp_path).items():
        with pytest.raises(CheckpointError) as e:
            load_checkpoint(path)
        msg = str(e.value)
        assert "\n" not in msg and len(msg) < 400, (name, msg)
    assert not (tmp_path / "pwned.txt").exists(), "loading executed code"


@pytest.mark.parametrize("kind", ["missing", "garbage", "truncated", "code", "foreign", "bare", "version",
                                  "missing_field", "bad_state_dict", "tensor", "empty", "text", "pickle"])
def test_cli_bad_file_one_line_exit_2(tmp_path, kind, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = bad_files(tmp_path)[kind]
    assert main(["info", path]) == 2
    err = capsys.readouterr().err
    assert err.startswith("landscape: error: ") and err.count("\n") == 1, err
    assert "Traceback" not in err
    assert not (tmp_path / "pwned.txt").exists()


def test_cli_subprocess_no_traceback(tmp_path):
    path = bad_files(tmp_path)["truncated"]
    r = subprocess.run([sys.executable, "-m", "landscape", "info", path], capture_output=True, text=True,
                       cwd=os.getcwd())
    assert r.returncode == 2 and "Traceback" not in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_mismatching_weights(tmp_path):
    torch.manual_seed(0)
    sd = tiny_mlp(hidden=16).state_dict()
    c = Checkpoint(model_name=MODEL, model_kwargs={}, data_name=DATA, data_kwargs={}, state_dict=sd)
    c.save(tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="shape"):
        open_checkpoint(tmp_path / "m.pt", model=MODEL, data=DATA)
    sd2 = dict(sd)
    sd2["extra.weight"] = torch.zeros(1)
    Checkpoint(model_name=MODEL, model_kwargs={}, data_name=DATA, data_kwargs={}, state_dict=sd2).save(
        tmp_path / "k.pt")
    with pytest.raises(CheckpointError, match="unexpected extra.weight"):
        open_checkpoint(tmp_path / "k.pt", model=MODEL, data=DATA, model_kwargs={"hidden": 16})


def test_model_data_mismatch(tmp_path):
    """A model whose outputs do not fit the data is refused before any analysis."""
    torch.manual_seed(0)
    bare = tmp_path / "bare.pt"
    torch.save(tiny_mlp(num_outputs=4).state_dict(), bare)
    with pytest.raises(CheckpointError, match="outputs 4 values per sample, the data needs 3"):
        open_checkpoint(bare, model=MODEL, data=DATA, model_kwargs={"num_outputs": 4})
    torch.save(tiny_mlp(input_shape=[7]).state_dict(), bare)
    with pytest.raises(CheckpointError, match="does not accept the data"):
        open_checkpoint(bare, model=MODEL, data=DATA, model_kwargs={"input_shape": [7]}, data_kwargs={"dim": 5})


def test_entry_point_in_file_is_not_imported(tmp_path):
    """A file naming `os:system` as its model must not get it called."""
    c = Checkpoint(model_name="os:system", model_kwargs={"command": "echo pwned > pwned.txt"},
                   data_name=DATA, data_kwargs={}, state_dict={"w": torch.zeros(1)})
    c.save(tmp_path / "e.pt")
    with pytest.raises(CheckpointError, match="entry point"):
        open_checkpoint(tmp_path / "e.pt")
    assert not (tmp_path / "pwned.txt").exists()


def test_bare_state_dict_with_entry_points(tmp_path, capsys):
    torch.manual_seed(1)
    model = tiny_mlp()
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    ckpt, net, data = open_checkpoint(tmp_path / "bare.pt", model=MODEL, data=DATA)
    assert ckpt.model_name == MODEL and len(data.x_train) == 96
    for a, b in zip(model.parameters(), net.parameters()):
        assert torch.equal(a, b)
    assert main(["info", str(tmp_path / "bare.pt"), "--model", MODEL, "--data", DATA, "--data-arg", "seed=3"]) == 0
    assert "tiny_mlp" in capsys.readouterr().out


def _builtin(tmp_path, name: str, **over) -> str:
    """A checkpoint of the built-in ``mlp`` on ``digits`` with some field replaced."""
    torch.manual_seed(0)
    from landscape.models import build_model

    kwargs = {"input_shape": [1, 8, 8], "num_outputs": 10, "hidden": [8]}
    c = Checkpoint(model_name="mlp", model_kwargs=kwargs, data_name="digits", data_kwargs={"seed": 0},
                   state_dict=build_model("mlp", **kwargs).state_dict())
    for k, v in over.items():
        setattr(c, k, v)
    c.save(tmp_path / name)
    return str(tmp_path / name)


@pytest.mark.parametrize("kind, match", [
    ("good", None),
    ("shape", "weights do not match the model: net.1.weight has shape"),
    ("keys", "weights do not match the model: missing net.5.bias, net.5.weight"),
    ("data", "the model does not accept the data"),
    ("outputs", "the model outputs 10 values per sample, the data needs 3"),
    ("data_kwargs", "cannot build data 'digits'"),
    ("model_kwargs", "cannot build model 'mlp'"),
])
def test_cli_builtin_checkpoint_mismatches_one_line_exit_2(tmp_path, capsys, kind, match):
    """Weights, model and data of a checkpoint that do not fit together: one line, exit 2."""
    kw = {"input_shape": [1, 8, 8], "num_outputs": 10, "hidden": [8]}
    path = {
        "good": lambda: _builtin(tmp_path, "good.pt"),
        "shape": lambda: _builtin(tmp_path, "s.pt", model_kwargs={**kw, "hidden": [9]}),
        "keys": lambda: _builtin(tmp_path, "k.pt", model_kwargs={**kw, "hidden": [8, 8]}),
        "data": lambda: _builtin(tmp_path, "d.pt", data_name="synthetic", data_kwargs={"n_train": 8, "n_test": 8}),
        "outputs": lambda: _builtin(tmp_path, "o.pt", data_name="synthetic",
                                    data_kwargs={"n_train": 8, "n_test": 8, "dim": 64, "num_classes": 3}),
        "data_kwargs": lambda: _builtin(tmp_path, "dk.pt", data_kwargs={"seed": 0, "bogus": 1}),
        "model_kwargs": lambda: _builtin(tmp_path, "mk.pt", model_kwargs={**kw, "bogus": 1}),
    }[kind]()
    code = main(["info", path])
    err = capsys.readouterr().err
    if match is None:
        assert code == 0 and not err
        return
    assert code == 2 and err.startswith("landscape: error: ") and err.count("\n") == 1 and match in err, err


def test_foreign_weights_without_a_model_say_what_to_pass(tmp_path):
    """A bare state_dict and another loop's ``{"state_dict": ..., "epoch": ...}`` are recognised as weights and the
    one-line error names the flags that load them."""
    weights = {"w": torch.zeros(2), "b": torch.ones(1)}
    for name, obj, what in (("bare.pt", weights, "a bare state_dict"),
                            ("lightning.pt", {"state_dict": weights, "epoch": 3}, "another training loop's")):
        torch.save(obj, tmp_path / name)
        with pytest.raises(CheckpointError, match=f"{what}.*pass --model pkg.module:factory and --data"):
            load_checkpoint(tmp_path / name)
