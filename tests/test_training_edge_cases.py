"""Training fixes: quiet ASAM validation, names in add_param_group, the --amp help, foreign resume files,
stale temp files of a killed atomic write."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn as nn

import optimizers
from landscape.checkpoint import CheckpointError
from landscape.cli import main
from landscape.io import atomic_write_text
from optimizers.config import TrainConfig
from optimizers.precision import resolve_amp
from optimizers.trainer import Trainer, run_paths

MODEL, DATA = "tests.fixtures:tiny_mlp", "tests.fixtures:blobs"


@pytest.mark.parametrize("name", ["asam", "asam_ascent", "lets_asam"])
def test_validating_an_asam_config_does_not_warn(name):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning fails
        TrainConfig.from_dict({"optimizer": name, "steps": 1})
    with pytest.raises(ValueError, match="rho"):  # the dry build still checks the hyper-parameters
        TrainConfig.from_dict({"optimizer": name, "hparams": {"rho": -1.0}})


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.LayerNorm(8), nn.Tanh(), nn.Linear(8, 3)).double()


def _hand_asam_step(m: nn.Module, x, y, rho=0.5, eta=0.01, lr=0.1) -> None:
    """ASAM by hand: T = |w| + eta on every tensor not named *bias (LayerNorm weight included), T = 1 on biases."""
    ps = dict(m.named_parameters())
    g = torch.autograd.grad(nn.functional.cross_entropy(m(x), y), list(ps.values()))
    T = [torch.ones_like(p) if n.endswith("bias") else p.detach().abs() + eta for n, p in ps.items()]
    norm = torch.cat([(t * gg).flatten() for t, gg in zip(T, g)]).norm()
    w = [p.detach().clone() for p in ps.values()]
    with torch.no_grad():
        for p, t, gg in zip(ps.values(), T, g):
            p.add_(rho * t * t * gg / norm)
    g2 = torch.autograd.grad(nn.functional.cross_entropy(m(x), y), list(ps.values()))
    with torch.no_grad():
        for p, w0, gg in zip(ps.values(), w, g2):
            p.copy_(w0 - lr * gg)


@pytest.mark.parametrize("how", ["pairs", "param_names"])
def test_asam_uses_the_names_of_a_group_added_later(how):
    torch.manual_seed(1)
    x, y = torch.randn(16, 6, dtype=torch.float64), torch.randint(0, 3, (16,))
    hand = _model()
    _hand_asam_step(hand, x, y)
    m = _model()
    named = list(m.named_parameters())
    first, later = named[:2], named[2:]  # the LayerNorm weight is in the group added later
    opt = optimizers.build_optimizer("asam", [{"params": first}], base_kwargs={"lr": 0.1}, rho=0.5, eta=0.01)
    group = ({"params": later} if how == "pairs" else
             {"params": [p for _, p in later], "param_names": [n for n, _ in later]})
    opt.add_param_group(group)
    assert sorted(opt.param_names.values()) == sorted(n for n, _ in named)

    def closure():
        opt.zero_grad()
        loss = nn.functional.cross_entropy(m(x), y)
        loss.backward()
        return loss

    opt.step(closure)
    for a, b in zip(hand.parameters(), m.parameters()):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-12)


def test_amp_help_lists_the_methods_auto_trains_in_float32(capsys):
    full = [n for n in optimizers.available_optimizers() if resolve_amp("auto", "cuda", n)[0] == "none"]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"auto (bf16 on CUDA; float32 for {', '.join(full)}), none, bf16, fp16" in text


def _config() -> TrainConfig:
    return TrainConfig(model=MODEL, data=DATA, epochs=3, batch_size=16)


class Boom(Exception):
    pass


def _interrupted(out) -> None:
    """Train ``out`` and stop after epoch 2 (the resume state is that of epoch 1)."""
    def stop(row):
        if row["epoch"] == 2:
            raise Boom

    with pytest.raises(Boom):
        Trainer(_config(), out, progress=False, on_epoch=stop).run()


@pytest.mark.parametrize("drop", [("model",), ("epoch",), ("optimizer", "base"), ("optimizer", "wrapper")])
def test_a_resume_file_missing_a_key_names_the_file(tmp_path, capsys, drop):
    out = tmp_path / "r.pt"
    _interrupted(out)
    resume = run_paths(out)["resume"]
    state = torch.load(resume, weights_only=True)
    parent = state if len(drop) == 1 else state[drop[0]]
    del parent[drop[-1]]
    torch.save(state, resume)
    message = f"{resume}: not a resume state of this version; delete it to restart"
    with pytest.raises(CheckpointError) as e:
        Trainer(_config(), out, progress=False).run()
    assert str(e.value) == message
    code = main(["train", "--model", MODEL, "--data", DATA, "--epochs", "3", "--batch-size", "16", "--quiet",
                 "--out", str(out)])
    assert code == 2 and capsys.readouterr().err.strip().splitlines()[-1] == f"landscape: error: {message}"


def test_stale_temp_files_of_a_killed_write_are_removed(tmp_path):
    out = tmp_path / "r.pt"
    paths = run_paths(out)
    stale = {k: paths[k].parent / f".{paths[k].name}.k1ll3d_9.tmp" for k in ("resume", "out", "metrics")}
    keep = [tmp_path / ".other.pt.k1ll3d_9.tmp", tmp_path / ".r.pt.k1ll3d_9.tmp.bak", tmp_path / ".r.pt.tmp"]
    for p in [*stale.values(), *keep]:
        atomic_write_text(p, "half-written")
    _interrupted(out)  # the resume state was saved once: its stale temp file is gone, the others not yet
    assert paths["resume"].exists() and not stale["resume"].exists()
    assert stale["out"].exists() and stale["metrics"].exists()
    Trainer(_config(), out, progress=False).run()  # completes
    assert not any(p.exists() for p in stale.values()) and all(p.exists() for p in keep)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([p.name for p in keep] + ["r.metrics.jsonl",
                                                                                           "r.pt"])
