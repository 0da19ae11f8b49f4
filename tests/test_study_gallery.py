"""The gallery study (gallery/study_mnist1d.toml): a reduced version in the default suite, the full one slow."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

from landscape.study.correlation import correlate
from landscape.study.report import write_report
from landscape.study.runner import run_study
from landscape.study.spec import parse_study, read_toml
from landscape.study.table import build_table

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")

GALLERY = Path(__file__).resolve().parents[1] / "gallery" / "study_mnist1d.toml"


def reduced(doc: dict) -> dict:
    """The same study at toy size: 400 samples, 2 epochs, two configurations per optimizer, cheap measures."""
    doc = json.loads(json.dumps(doc))
    doc["train"].update(epochs=2, stop_train_acc=None, model_kwargs={"hidden": [32]})
    doc["train"]["data_kwargs"] = {**doc["train"].get("data_kwargs", {}), "num_samples": 400}
    doc["train"] = {k: v for k, v in doc["train"].items() if v is not None}
    doc["grid"] = {"lr": doc["grid"]["lr"]}
    doc["measures"] = {**doc["measures"], "trace_samples": 10}
    for options in doc["measures"].values():  # one radius per sweep
        if isinstance(options, dict):
            options.update({k: v[:1] for k, v in options.items() if k.endswith("_rho") and isinstance(v, list)})
    doc["correlation"] = {**doc["correlation"], "min_train_acc": None, "bootstrap": 50}
    doc["correlation"] = {k: v for k, v in doc["correlation"].items() if v is not None}
    return doc


def test_gallery_study_reduced(tmp_path):
    doc = read_toml(GALLERY)
    assert doc["train"]["data"] == "mnist1d" and set(doc["optimizers"]) == {"sgd", "sam", "asam"}
    assert len(parse_study(doc, GALLERY).runs) == 48
    study = parse_study(reduced(doc), tmp_path / "g.toml")
    assert len(study.runs) == 6
    assert run_study(study, tmp_path / "g", workers=1) == {"done": 6}
    table = build_table(study, tmp_path / "g")
    corr = correlate(study, table)
    paths = write_report(study, table, corr, tmp_path / "g", {"done": 6})
    assert set(corr["groups"]) == {"all", "sgd", "sam", "asam"} and corr["groups"]["all"]["axes"] == ["lr", "optimizer"]
    assert {"curvature:hessian_trace.trace", "l2:sharpness.worst[rho=0.01]", "l2:adaptive_sharpness.worst[rho=0.2]",
            "linf:sharpness.worst[rho=0.0005]", "linf:adaptive_sharpness.worst[rho=0.005]"} <= set(corr["measures"])
    assert all(p.exists() for p in paths.values())


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_gallery_study_full(tmp_path):
    from landscape.cli import main

    assert main(["study", str(GALLERY), "--out", str(tmp_path / "g"), "--workers", "2", "--quiet"]) == 0
    rows = json.loads((tmp_path / "g" / "results.json").read_text())["rows"]
    corr = json.loads((tmp_path / "g" / "correlation.json").read_text())
    assert len(rows) == 48 and {r["status"] for r in rows} <= {"done", "diverged"}
    assert corr["runs"]["used"] >= 24 and len(corr["groups"]["all"]["axes"]) == 5


# ------------------------------------------------------------------ the committed study's headline numbers
COMMITTED = GALLERY.parent / "study_mnist1d"
README = GALLERY.parent / "README.md"
AXES = ["lr", "batch_size", "weight_decay", "model_kwargs.dropout", "optimizer"]
FAMILIES = {  # gallery/README.md's Table 1 columns: the rho of each sweep with the largest tau vs the gap
    "sharpness, p=2": "l2:sharpness.worst[", "adaptive, p=2": "l2:adaptive_sharpness.worst[",
    "sharpness, p=inf": "linf:sharpness.worst[", "adaptive, p=inf": "linf:adaptive_sharpness.worst["}


def tau_b(x, y) -> float:
    """Kendall's tau-b from its definition: sum_{i<j} sx sy / sqrt(#pairs untied in x * #pairs untied in y)."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    iu = np.triu_indices(len(x), 1)
    sx, sy = np.sign(x[:, None] - x[None, :])[iu], np.sign(y[:, None] - y[None, :])[iu]
    d = math.sqrt(np.abs(sx).sum() * np.abs(sy).sum())
    return float(sx @ sy / d) if d > 0 else math.nan


def tau_psi_by_hand(rows: list[dict], measure: str, axes: list[str]) -> tuple[float, dict[str, float], float]:
    """tau-b over the rows; psi_i: the mean of tau over the slices that fix every other axis (and the seed),
    slices with an undefined tau skipped; Psi: the mean of the psi_i."""
    psi = {}
    for axis in axes:
        slices: dict[tuple, list[dict]] = {}
        for r in rows:
            slices.setdefault(tuple(r[a] for a in axes + ["seed"] if a != axis), []).append(r)
        psi[axis] = float(np.nanmean([tau_b([r[measure] for r in s], [r["gen_gap"] for r in s])
                                      for s in slices.values()]))
    tau = tau_b([r[measure] for r in rows], [r["gen_gap"] for r in rows])
    return tau, psi, float(np.mean(list(psi.values())))


def best_rho(by_hand: dict[str, tuple], prefix: str) -> str:
    """The measure of the sweep with the largest tau, a tie broken by Psi (the report's ranking)."""
    return max((m for m in by_hand if m.startswith(prefix)), key=lambda m: (round(by_hand[m][0], 12), by_hand[m][2]))


def test_committed_gallery_study_headline_numbers():
    """gallery/README.md's findings on the committed study, recomputed from its results.json alone: the Table 1
    picks and their tau / psi_i / Psi, the tau intervals (a plain-loop bootstrap, 1000 draws, seed 0), the SGD-only
    numbers, the baselines' tau and Psi, the accuracies, and correlation.json's every tau and Psi."""
    from scipy.stats import kendalltau

    data = json.loads((COMMITTED / "results.json").read_text())
    corr = json.loads((COMMITTED / "correlation.json").read_text())
    readme = README.read_text()
    rows = [{**r, "optimizer": r["variant"]} for r in data["rows"]]
    assert len(rows) == 48 and {r["status"] for r in rows} == {"done"} and corr["runs"]["used"] == 48
    assert min(r["train_acc"] for r in rows) >= 0.996  # "All 48 models reach >= 99.6% training accuracy"
    assert round(min(r["gen_gap"] for r in rows), 2) == 0.26 and round(max(r["gen_gap"] for r in rows), 2) == 0.39
    by_hand = {m: tau_psi_by_hand(rows, m, AXES) for m in data["measures"]}
    for m, (tau, _, _) in by_hand.items():  # the definition is scipy's tau-b
        assert tau == pytest.approx(kendalltau([r[m] for r in rows], [r["gen_gap"] for r in rows]).statistic,
                                    abs=1e-12)
    picks = {label: best_rho(by_hand, prefix) for label, prefix in FAMILIES.items()}
    # (adaptive p=inf: rho = 0.02 and 0.05 tie at tau 0.728; 0.05 has the larger Psi)
    assert [m.split("rho=")[1][:-1] for m in picks.values()] == ["0.5", "1", "0.005", "0.05"]
    stats = {label: by_hand[m] for label, m in picks.items()}
    table = ["| tau | " + " | ".join(f"{s[0]:+.3f}" for s in stats.values()) + " |"]
    table += [f"| psi {a.rsplit('.', 1)[-1]} | " + " | ".join(f"{s[1][a]:+.3f}" for s in stats.values()) + " |"
              for a in AXES]
    table.append("| Psi | " + " | ".join(f"{s[2]:+.3f}" for s in stats.values()) + " |")
    assert "\n".join(table) in readme  # the README's table, row for row
    # tau's 95% intervals: resample the 48 runs 1000 times (numpy's default_rng(0), the report's seed)
    idx = np.random.default_rng(0).integers(0, 48, size=(1000, 48))
    cis = []
    for m in picks.values():
        x, y = np.array([r[m] for r in rows]), np.array([r["gen_gap"] for r in rows])
        draws = [tau_b(x[i], y[i]) for i in idx]
        cis.append(np.quantile(draws, [0.025, 0.975]))
    labels = ["sharpness p=2", "adaptive p=2", "sharpness\np=inf", "adaptive p=inf"]
    text = " ".join(readme.split())
    for label, (lo, hi) in zip(labels, cis):
        assert f"{' '.join(label.split())} [{lo:+.2f}, {hi:+.2f}]" in text
    # the SGD runs alone, rho picked again within them
    sgd = [r for r in rows if r["optimizer"] == "sgd"]
    sgd_by_hand = {m: tau_psi_by_hand(sgd, m, AXES[:-1]) for m in data["measures"]}
    sgd_stats = [sgd_by_hand[best_rho(sgd_by_hand, p)] for p in FAMILIES.values()]
    assert (f"tau {' / '.join(f'{s[0]:.3f}' for s in sgd_stats)} and Psi "
            f"{' / '.join(f'{s[2]:.3f}' for s in sgd_stats)}") in text
    # the baselines: lambda_max, trace, gradient norm (tau, Psi to 2 digits)
    for name, words in (("curvature:hessian_eigenvalues.lambda_max", "lambda_max (tau {:.2f}, Psi {:.2f})"),
                        ("curvature:hessian_trace.trace", "trace ({:.2f}, {:.2f})"),
                        ("curvature:gradient_norms.norm", "gradient norm ({:.2f}, {:.2f})")):
        assert words.format(by_hand[name][0], by_hand[name][2]) in text, name
    # accuracies: ASAM > SAM > SGD in mean test accuracy; ASAM beats SGD in 14 of 16 configurations
    mean_acc = {o: np.mean([r["test_acc"] for r in rows if r["optimizer"] == o]) for o in ("asam", "sam", "sgd")}
    assert f"({mean_acc['asam']:.3f}, against {mean_acc['sam']:.3f} for SAM and {mean_acc['sgd']:.3f} for SGD)" in text
    config = {}
    for r in rows:
        config.setdefault(tuple(r[a] for a in AXES[:-1]), {})[r["optimizer"]] = r["test_acc"]
    beats = {o: sum(c[o] > c["sgd"] for c in config.values()) for o in ("asam", "sam")}
    ties = sum(c["sam"] == c["sgd"] for c in config.values())
    assert (beats["asam"], beats["sam"], ties) == (14, 12, 1) and len(config) == 16
    # correlation.json: every measure's tau and Psi in the group of all runs
    for s in corr["groups"]["all"]["targets"]["gen_gap"]:
        tau, psi, Psi = by_hand[s["measure"]]
        assert s["tau"] == pytest.approx(tau, abs=1e-12) and s["Psi"] == pytest.approx(Psi, abs=1e-12)
        assert s["psi"] == pytest.approx(psi, abs=1e-12)
