"""Curvature tracked during training: training unchanged, exact lambda_max, resumable rows, budget, thresholds."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

from landscape.checkpoint import load_checkpoint
from landscape.cli import main
from landscape.curvature.lanczos import lanczos
from landscape.data import get_dataset
from landscape.models import build_model
from landscape.objective import Objective, subset_indices
from optimizers.config import TrainConfig
from optimizers.tracker import CurvatureTracker, TrackConfig, read_rows, stability_threshold
from optimizers.trainer import Trainer, run_paths

DATA = "tests.fixtures:blobs"
# BatchNorm (running statistics), dropout (the global RNG) and SAM (its own state) all in play.
MODEL_KWARGS = {"hidden": [8], "batchnorm": True, "dropout": 0.2, "activation": "tanh"}


def config(**over) -> TrainConfig:
    base = dict(model="mlp", data=DATA, model_kwargs=MODEL_KWARGS, optimizer="sam", hparams={"rho": 0.05},
                epochs=4, batch_size=16, lr=0.1, seed=3, eval_batch_size=32)
    base.update(over)
    return TrainConfig(**base)


def strip(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_tracked_run_is_bit_identical_to_untracked(tmp_path):
    plain = Trainer(config(), tmp_path / "plain.pt", progress=False).run()
    track = TrackConfig(every=5, top_k=2, trace_samples=12, grad_batch=8, sharpness_rho=0.05, sharpness_steps=2)
    tracked = Trainer(config(), tmp_path / "tracked.pt", progress=False, track=track).run()
    a, b = plain.state_dict, tracked.state_dict  # weights and BatchNorm running statistics
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    drop = ("step_time", "curvature_tracking")
    assert {k: v for k, v in plain.metrics.items() if k not in drop} == \
           {k: v for k, v in tracked.metrics.items() if k not in drop}
    rows = read_rows(run_paths(tmp_path / "tracked.pt")["curvature"])
    assert [r["step"] for r in rows] == [0, 5, 10, 15, 20, 24]  # every 5, and the last step
    last = rows[-1]
    assert not any(last[k] is None for k in ("lambda_max", "trace", "grad_norm", "sharpness"))
    assert last["sharpness"] > 0 and last["sharpness_rho"] == 0.05
    assert len(rows[-1]["eigenvalues"]) == 2 and set(rows[-1]["layers"]) == {"net.1", "net.2", "net.5"}
    assert [r["warm"] for r in rows] == [False] + [True] * 5
    s = tracked.metrics["curvature_tracking"]
    assert s["rows"] == 6 and s["hvps"] == sum(r["hvps"] for r in rows) and 0 < s["share"] < 1


def _dense_top(model, x, y) -> float:
    obj = Objective(model, x, y, dtype=torch.float64)
    return float(torch.linalg.eigvalsh(obj.hessian.to_dense())[-1])


def test_tracked_lambda_max_is_exact_and_warm_equals_cold(tmp_path):
    """Rows at every other epoch end against a dense float64 Hessian of the weights then,
    and against a cold-started Lanczos run: both to 1e-3 relative (the acceptance), dense to 1e-5 here."""
    c = config(optimizer="sgd", hparams={}, model_kwargs={"hidden": [8], "activation": "tanh"})
    states = []
    trainer = Trainer(c, tmp_path / "r.pt", progress=False, track=TrackConfig(every=12, subset=64, dtype="float64"),
                      on_epoch=lambda row: states.append({k: v.clone() for k, v in trainer.model.state_dict().items()}))
    trainer.run()
    rows = {r["step"]: r for r in read_rows(run_paths(tmp_path / "r.pt")["curvature"])}
    data = get_dataset(DATA)
    idx = subset_indices(len(data.x_train), 64, 0)
    x, y = data.x_train[idx], data.y_train[idx]
    model = build_model("mlp", **{**data.model_defaults(), **c.model_kwargs})
    assert len(states) == 4 and sorted(rows) == [0, 12, 24]
    for epoch in (2, 4):
        row, state = rows[6 * epoch], states[epoch - 1]
        assert row["warm"] and row["lanczos_converged"]
        model.load_state_dict(state)
        exact = _dense_top(model, x, y)
        assert abs(row["lambda_max"] - exact) <= 1e-5 * abs(exact)
        cold = lanczos(Objective(model, x, y, dtype=torch.float64), k=1, tol=1e-10).eigenvalues[0]
        assert abs(row["lambda_max"] - cold) <= 1e-3 * abs(cold)


class Boom(Exception):
    pass


def test_resume_after_kill_neither_loses_nor_duplicates_rows(tmp_path):
    track = TrackConfig(every=4, subset=48)
    Trainer(config(), tmp_path / "full.pt", progress=False, track=track).run()

    def stop_after_2(row):  # epoch 2 ends at step 12; the last resume state is at step 6
        if row["epoch"] == 2:
            raise Boom

    with pytest.raises(Boom):
        Trainer(config(), tmp_path / "cut.pt", progress=False, track=track, on_epoch=stop_after_2).run()
    path = run_paths(tmp_path / "cut.pt")["curvature"]
    assert [r["step"] for r in read_rows(path)] == [0, 4, 8, 12]  # rows past the resume point (step 6)
    with open(path, "a") as f:
        f.write('{"step": 13, "lambda_ma')  # and a line torn by the kill
    Trainer(config(), tmp_path / "cut.pt", progress=False, track=track).run()
    full = read_rows(run_paths(tmp_path / "full.pt")["curvature"])
    cut = read_rows(path)
    assert [r["step"] for r in cut] == [0, 4, 8, 12, 16, 20, 24]
    assert strip(cut) == strip(full)  # the same values: the warm-start vector travelled in the resume state
    a, b = weights(tmp_path / "full.pt"), weights(tmp_path / "cut.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    totals = [load_checkpoint(tmp_path / f).metrics["curvature_tracking"] for f in ("full.pt", "cut.pt")]
    assert totals[0]["train_steps"] == totals[1]["train_steps"]  # steps 4-6 (before the resume state) counted

    with pytest.raises(ValueError, match="other --track options"):  # resuming with other options
        with pytest.raises(Boom):
            Trainer(config(), tmp_path / "x.pt", progress=False, track=track, on_epoch=stop_after_2).run()
        Trainer(config(), tmp_path / "x.pt", progress=False, track=TrackConfig(every=3)).run()


def weights(path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path).state_dict


def test_budget_widens_the_interval(tmp_path):
    data = get_dataset(DATA)
    model = build_model("mlp", **data.model_defaults(), hidden=[8])
    tracker = CurvatureTracker(TrackConfig(every=5, budget=0.1), model, data.x_train, data.y_train,
                               task=data.task, path=tmp_path / "c.jsonl")
    tracker.totals.update(tracker_seconds=2.0, rows=4, train_seconds=10.0, train_steps=1000)
    tracker._schedule(100)  # 0.5 s per measurement, 0.01 s per step: 0.5 * 0.9 / (0.1 * 0.01) = 450 steps
    assert (tracker.interval, tracker.next_step) == (450, 550)
    tracker.totals.update(tracker_seconds=0.04, train_seconds=100.0)  # cheap measurements: every 5 steps
    tracker._schedule(550)
    assert (tracker.interval, tracker.next_step) == (5, 555)
    # A real run: measurements cost far more than the tiny model's steps, so a 1% budget widens the interval.
    ckpt = Trainer(config(optimizer="sgd", hparams={}), tmp_path / "r.pt", progress=False,
                   track=TrackConfig(every=2, budget=0.01)).run()
    rows = read_rows(run_paths(tmp_path / "r.pt")["curvature"])
    assert rows[1]["step"] == 2 and rows[-1]["step"] == 24 and rows[-1]["interval"] > 2
    assert len(rows) < 24 // 2 and ckpt.metrics["curvature_tracking"]["interval"] > 2


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 0.0), (0.5, True, 0.0),
                                                  (0.9, True, 0.01), (0.9, False, 0.05)])
def test_stability_threshold_is_where_torch_sgd_on_a_quadratic_turns_unstable(momentum, nesterov, wd):
    lr = 0.1
    edge = stability_threshold(lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)

    def final(curvature: float) -> float:  # torch.optim.SGD on L = curvature / 2 * w^2
        w = torch.ones(1, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.SGD([w], lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=wd)
        for _ in range(3000):
            opt.zero_grad()
            (0.5 * curvature * w ** 2).sum().backward()
            opt.step()
        return float(w.detach().abs())

    assert final(0.99 * edge) < 1e-3 and final(1.01 * edge) > 1e3
    assert stability_threshold(lr, base="adamw") is None and stability_threshold(0.0) is None


def test_track_cli_and_errors(tmp_path, capsys):
    out = tmp_path / "r.pt"
    base = ["train", "--model", "mlp", "--model-arg", "hidden=[8]", "--data", DATA, "--epochs", "1",
            "--batch-size", "32", "--quiet", "--out", str(out)]
    assert main(base + ["--track", "every=2", "trace_samples=6"]) == 0
    printed = capsys.readouterr().out
    assert "curvature tracking: 3 rows" in printed and "% of the wall time" in printed
    rows = read_rows(run_paths(out)["curvature"])
    assert [r["step"] for r in rows] == [0, 2, 3] and all(r["trace"] is not None for r in rows)
    assert rows[0]["threshold"] == pytest.approx((2 + 2 * 0.9) / 0.1 - 5e-4)
    for bad, msg in ((["--track", "evry=2"], "unknown --track option"), (["--track", "every=0"], "every must be"),
                     (["--track", "budget=2"], "budget must be"),
                     (["--track", "every=2.5"], "every must be an integer"),
                     (["--track", "subset=abc"], "subset must be an integer"),
                     (["--track", "tol=fast"], "tol must be a number")):
        assert main(base + ["--restart"] + bad) == 2
        err = capsys.readouterr().err
        assert msg in err and len(err.strip().splitlines()) == 1, err
    assert main(base + ["--restart"]) == 0  # untracked: the earlier run's rows are not this checkpoint's
    assert not run_paths(out)["curvature"].exists()


def test_diverging_run_logs_null_curvature(tmp_path):
    from optimizers.trainer import TrainingDiverged

    with pytest.raises(TrainingDiverged):
        Trainer(config(optimizer="sgd", hparams={}, lr=1e8, momentum=0.0, model_kwargs={"hidden": [8]}),
                tmp_path / "r.pt", progress=False, track=TrackConfig(every=3, max_hvps=20)).run()
    rows = [json.loads(line) for line in run_paths(tmp_path / "r.pt")["curvature"].read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 3]  # the loss is NaN at step 4
    assert rows[0]["lambda_max"] is not None and math.isfinite(rows[0]["lambda_max"])
    assert rows[1]["lambda_max"] is None and rows[1]["loss"] is None and rows[1]["hvps"] == 0
    assert all(v is None or not isinstance(v, float) or np.isfinite(v) for r in rows for v in r.values())


def test_plot_training_cli_and_report_section(tmp_path, capsys):
    from landscape.report import html_report
    from landscape.report.training import load_runs, summary

    track = TrackConfig(every=3, trace_samples=6)
    for name, momentum in (("gd", 0.0), ("heavy", 0.9)):
        c = config(optimizer="sgd", hparams={}, momentum=momentum, weight_decay=0.0, schedule="constant", epochs=1,
                   model_kwargs={"hidden": [8]})
        Trainer(c, tmp_path / f"{name}.pt", progress=False, track=track).run()
    stem = tmp_path / "both"
    assert main(["plot-training", str(tmp_path / "gd.pt"), str(run_paths(tmp_path / "heavy.pt")["curvature"]),
                 "--out", str(stem)]) == 0
    printed = capsys.readouterr().out
    assert "gd: 3 rows to step 6" in printed and "heavy: 3 rows to step 6" in printed
    assert (tmp_path / "both.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (tmp_path / "both.html").read_text()
    assert "Plotly" in page and "off the scale" in page  # lambda_max ~ 1, thresholds 20 and 38
    runs = load_runs([tmp_path / "gd.pt", tmp_path / "heavy.pt"])
    gd, heavy = (summary(rows) for _, rows in runs)
    assert runs[0][1][0]["threshold"] == pytest.approx(20.0) and runs[1][1][0]["threshold"] == pytest.approx(38.0)
    assert gd["edge_ratio_max"] == pytest.approx(max(r["lambda_max"] / 20.0 for r in runs[0][1]))
    assert heavy["hvps"] == sum(r["hvps"] for r in runs[1][1])
    # The analysis/compare report draws the rows when they exist.
    report = {"checkpoint": {"path": str(tmp_path / "gd.pt")}, "model": {"name": "mlp"}, "data": {"name": DATA}}
    html = html_report([report], tmp_path / "r.html", training=runs[:1]).read_text()
    assert 'id="training"' in html and "Curvature during training" in html
    assert 'id="training"' not in html_report([report], tmp_path / "s.html").read_text()
    assert main(["plot-training", str(tmp_path / "nothing.pt")]) == 2
    assert "no curvature rows" in capsys.readouterr().err


def test_training_figure_draws_thresholds_in_range_and_2_over_lr_where_it_differs():
    from landscape.report.training import training_figure

    rows = [{"step": s, "lambda_max": 1.0 + 0.1 * s, "threshold": 2.0, "threshold_gd": 1.2, "grad_norm": 1.0,
             "loss": 0.5} for s in range(3)]
    plain = [{**r, "threshold_gd": 2.0} for r in rows]
    names = [t.name for t in training_figure([("heavy", rows), ("gd", plain)]).data]
    assert "heavy: stability threshold" in names and "heavy: 2 / lr" in names
    assert "gd: stability threshold" in names and "gd: 2 / lr" not in names
    far = [{**r, "threshold": 50.0, "threshold_gd": 50.0} for r in rows]
    fig = training_figure([("far", far)])
    assert [t.name for t in fig.data] == ["far"] * 3  # lambda_max, gradient norm, loss; no threshold line
    assert "off the scale" in fig.layout.annotations[0].text


def test_compare_report_has_the_training_section_when_rows_exist(tmp_path, capsys):
    c = config(optimizer="sgd", hparams={}, epochs=1, model_kwargs={"hidden": [8]})
    Trainer(c, tmp_path / "tracked.pt", progress=False, track=TrackConfig(every=3)).run()
    Trainer(c, tmp_path / "plain.pt", progress=False).run()
    base = ["compare", str(tmp_path / "tracked.pt"), str(tmp_path / "plain.pt"), "--no-measures", "--xpoints", "3",
            "--curve-points", "0", "--no-interp", "--quiet", "--data", DATA]
    assert main(base + ["--out", str(tmp_path / "cmp")]) == 0
    page = (tmp_path / "cmp.html").read_text()
    assert 'id="training"' in page and "<td>tracked</td>" in page and "<td>plain</td>" not in page.split(
        'id="training"')[1].split("</section>")[0]
    run_paths(tmp_path / "tracked.pt")["curvature"].unlink()
    assert main(base + ["--out", str(tmp_path / "cmp2")]) == 0
    assert 'id="training"' not in (tmp_path / "cmp2.html").read_text()
