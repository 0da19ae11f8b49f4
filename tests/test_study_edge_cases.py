"""Study fixes: a non-table ``train`` of an optimizer is a one-line error; tau-a skips constant slices."""
from __future__ import annotations

import math

import numpy as np
import pytest

from landscape.cli import main
from landscape.study.correlation import kendall_tau, measure_stats, slice_taus, tau_batch
from landscape.study.spec import StudyError, load_study

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

STUDY = """
seeds = [0]
[train]
model = "tests.fixtures:tiny_mlp"
data = "tests.fixtures:blobs"
epochs = 1
[optimizers.sgd]
[optimizers.sam]
train = {value}
"""


@pytest.mark.parametrize("value", ["3", '"ab"', "[1, 2]"])
def test_optimizer_train_that_is_not_a_table_is_a_one_line_error(tmp_path, capsys, value):
    path = tmp_path / "s.toml"
    path.write_text(STUDY.format(value=value))
    message = "[optimizers.sam] train must be a table of training options"
    with pytest.raises(StudyError) as e:
        load_study(path)
    assert str(e.value) == f"{path}: {message}"
    assert main(["study", str(path), "--dry-run", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"landscape: error: {path}: {message}"]


def test_tau_a_of_a_constant_side_is_nan_and_its_slice_is_skipped():
    for x, y in (([5, 5], [0.1, 0.3]), ([1, 2, 3], [4, 4, 4]), ([2, 2, 2], [7, 7, 7])):
        for variant in "abc":
            assert math.isnan(kendall_tau(x, y, variant)), (x, y, variant)
    assert kendall_tau([1, 2, 2, 3], [1, 3, 2, 2], "a") == pytest.approx(1 / 3)  # ties alone: still defined
    # the vectorized tau of the bootstrap agrees
    t = tau_batch(np.array([[5.0, 5.0, 5.0], [1.0, 2.0, 3.0]]), np.array([[1.0, 2.0, 3.0], [1.0, 2.0, 3.0]]), "a")
    assert math.isnan(t[0]) and t[1] == 1.0
    # axis lr x seed; along lr the measure is constant in seed 1: that slice is skipped for tau-a as for tau-b
    rows = [{"lr": 0.1, "seed": 0, "m": 1.0, "g": 0.1}, {"lr": 0.2, "seed": 0, "m": 2.0, "g": 0.2},
            {"lr": 0.1, "seed": 1, "m": 5.0, "g": 0.1}, {"lr": 0.2, "seed": 1, "m": 5.0, "g": 0.3}]
    assert slice_taus(rows, "m", "g", "lr", ["lr"], variant="a") == ([1.0], 2)
    for variant in "ab":
        s = measure_stats(rows, "m", "g", ["lr"], variant=variant, n_boot=0)
        assert s.psi["lr"] == 1.0 and s.slices["lr"] == (1, 2) and s.Psi == 1.0
