"""The commands on a user's own checkpoints and data pipelines: every second checkpoint read like the first
(``--strip-prefix``, finite weights), one-line errors for data, losses and models that cannot work together."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from landscape.cli import main
from tests.fixtures import tiny_mlp

USER = ["--model", "tests.fixtures:tiny_mlp", "--data", "tests.fixtures:blob_loaders", "--quiet"]


def lightning(path, seed: int):
    torch.manual_seed(seed)
    torch.save({"epoch": 1, "state_dict": {f"model.{k}": v for k, v in tiny_mlp().state_dict().items()}}, path)
    return str(path)


def one_line_error(capsys, rc: int, *words: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == 2 and len(err.splitlines()) == 1 and "Traceback" not in err, err
    for w in words:
        assert w in err, err
    return err


def test_second_checkpoints_take_the_prefix_and_must_be_finite(tmp_path, capsys):
    a, b = lightning(tmp_path / "a.ckpt", 0), lightning(tmp_path / "b.ckpt", 1)
    flags = [*USER, "--strip-prefix", "model.", "--xpoints", "3", "--no-html"]
    assert main(["plot1d", a, "--to", b, *flags, "--out", str(tmp_path / "i")]) == 0
    assert np.isfinite(np.load(tmp_path / "i.npz")["train_loss"]).all()
    sd = torch.load(b, weights_only=True)
    sd["state_dict"]["model.1.weight"][0, 0] = float("nan")
    torch.save(sd, tmp_path / "nan.ckpt")
    rc = main(["plot1d", a, "--to", str(tmp_path / "nan.ckpt"), *flags, "--out", str(tmp_path / "j")])
    one_line_error(capsys, rc, "NaN")
    capsys.readouterr()
    rc = main(["plot2d", a, "--through", a, b, "--directions", "random", *USER, "--strip-prefix", "model.",
               "--out", str(tmp_path / "k")])
    one_line_error(capsys, rc, "--through goes with --directions plane")


@pytest.mark.parametrize("targets, words", [("regression", ["float targets", "regression"]),
                                            ("out_of_range", ["batch 0", "IndexError"])])
def test_data_the_default_loss_cannot_score(tmp_path, capsys, targets, words):
    ckpt = tmp_path / "m.pt"
    torch.save(tiny_mlp().state_dict(), ckpt)
    rc = main(["analyze", str(ckpt), *USER, "--data-arg", f'targets="{targets}"', "--top-k", "1",
               "--json", str(tmp_path / "a.json")])
    one_line_error(capsys, rc, *words)


def test_arguments_that_cannot_work(tmp_path, capsys):
    ckpt = tmp_path / "m.pt"
    torch.save(tiny_mlp().state_dict(), ckpt)
    assert main(["analyze", str(ckpt), *USER, "--threads", "0", "--top-k", "1",
                 "--json", str(tmp_path / "a.json")]) == 0
    capsys.readouterr()
    one_line_error(capsys, main(["analyze", str(ckpt), *USER, "--loss", "torch.nn:Linear"]), "--loss torch.nn:Linear")
    rc = main(["compare", str(ckpt), str(ckpt), *USER, "--labels", "a/b", "a_b", "--out", str(tmp_path / "c")])
    one_line_error(capsys, rc, "same file name")
    rc = main(["train", "--model", "tests.fixtures:tiny_mlp", "--model-arg", "num_outputs=2", "--data",
               "tests.fixtures:blobs", "--steps", "1", "--quiet", "--out", str(tmp_path / "t.pt")])
    one_line_error(capsys, rc, "outputs 2 values per sample, the data needs 3")
    torch.save({"weights": tiny_mlp().state_dict(), "step": np.int64(3)}, tmp_path / "np.pt")
    one_line_error(capsys, main(["info", str(tmp_path / "np.pt")]), "numpy")


def test_criterion_settings_tell_results_apart():
    from landscape.objective.loss import as_loss

    plain, smoothed = (as_loss(torch.nn.CrossEntropyLoss(label_smoothing=s)).describe() for s in (0.0, 0.2))
    assert plain != smoothed and smoothed["settings"]["label_smoothing"] == 0.2


@pytest.mark.parametrize("flags, words", [
    (["--top-k", "5000"], ["--top-k 5000", "eigenvalues of"]),
    (["--top-k", "40", "--which", "both"], ["--top-k 40 with --which both"]),
    (["--fisher-k", "900"], ["--fisher-k 900"]),
    (["--trace-samples", "10", "--trace-rank", "50"], ["--trace-rank 50", "--trace-samples (10)"]),
    (["--grad-batch-size", "100000"], ["--grad-batch-size 100000", "rows"]),
    (["--sharpness-batch-size", "100000"], ["--sharpness-batch-size 100000", "rows"])])
def test_analyze_sizes_beyond_the_model_or_data_fail_before_any_work(tmp_path, capsys, flags, words):
    """Sizes that only the model and the data can check: one line naming the flag, and no report written."""
    ckpt = tmp_path / "m.pt"
    torch.manual_seed(0)
    torch.save(tiny_mlp().state_dict(), ckpt)
    out = tmp_path / "r.json"
    rc = main(["analyze", str(ckpt), "--model", "tests.fixtures:tiny_mlp", "--data", "tests.fixtures:blobs", "--quiet",
               "--json", str(out), *flags])  # in-memory data: its rows are known
    one_line_error(capsys, rc, *words)
    assert not out.exists()

