"""Code nobody here wrote: a HuggingFace GPT-2 from a tiny config with dict batches and its own LM loss,
through the front door, the measures and ``landscape analyze --model/--data/--loss``; foreign checkpoint files
(bare state_dicts, Lightning-style dicts with a prefix, safetensors)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch.func import functional_call

import landscape
from landscape.checkpoint import CheckpointError, load_checkpoint, open_checkpoint
from landscape.cli import main
from landscape.landscapes.directions import random_directions
from landscape.objective import Objective
from tests.curvature_helpers import assert_unchanged, snapshot

transformers = pytest.importorskip("transformers")
from tests.hf_models import lm_loader, lm_loss, tiny_gpt2  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning", "ignore::FutureWarning")

SELECT = r"h\.1\.ln_2|h\.1\.mlp\.c_proj\.bias"  # 48 parameters: a dense Hessian is cheap


@pytest.fixture(scope="module")
def gpt2():
    return tiny_gpt2().double()


def reference(model, names):
    """``(w0, f)``: the full-data mean of GPT-2's own loss as a function of the named parameters, written
    with HF's forward directly (no landscape code): sum of per-batch loss * tokens / tokens."""
    named = dict(model.named_parameters())
    shapes, sizes = [named[n].shape for n in names], [named[n].numel() for n in names]
    w0 = torch.cat([named[n].detach().reshape(-1) for n in names])
    batches = list(lm_loader())

    def f(w):
        params = {n: t.view(s) for n, t, s in zip(names, w.split(sizes), shapes)}
        total, count = 0.0, 0
        for b in batches:
            n = int((b["labels"][:, 1:] != -100).sum())
            total = total + functional_call(model, params, (), b).loss * n
            count += n
        return total / count

    return w0, f


def test_gpt2_eigenvalues_and_trace_against_a_dense_hessian(gpt2):
    before = snapshot(gpt2)
    obj = Objective(gpt2, lm_loader(), loss=lm_loss, params=SELECT)
    assert obj.num_params == 48 and obj.num_samples == 24
    w0, f = reference(gpt2, obj.names)
    assert obj.loss() == pytest.approx(float(f(w0)), rel=1e-6)  # HF computes its loss in float32
    H = torch.autograd.functional.hessian(f, w0)
    H = 0.5 * (H + H.T)  # GPT-2's loss runs in float32 inside: its Hessian is symmetric to ~1e-7 only
    exact = torch.linalg.eigvalsh(H).flip(0)
    eig = landscape.hessian_eigenvalues(obj, k=3, tol=1e-7)
    assert eig.converged
    torch.testing.assert_close(torch.as_tensor(eig.eigenvalues), exact[:3], rtol=1e-5, atol=1e-6)
    tr = landscape.hessian_trace(obj, max_samples=150, rank=50, rtol=None)  # sketch rank >= P: exact
    assert tr.trace == pytest.approx(float(H.trace()), rel=1e-5)
    assert_unchanged(gpt2, before)


def test_gpt2_sharpness_and_surface(gpt2):
    before = snapshot(gpt2)
    obj = Objective(gpt2, lm_loader(), loss=lm_loss, params=SELECT)
    w0, f = reference(gpt2, obj.names)
    g = torch.autograd.functional.jacobian(f, w0)
    lam = float(torch.linalg.eigvalsh(torch.autograd.functional.hessian(f, w0)).abs().max())
    rho = 1e-2
    sam = float(f(w0 + rho * g / g.norm()) - f(w0))  # SAM's one step, by hand
    worst = landscape.sharpness_of(obj, rho=rho, steps=10)
    assert sam - 1e-9 <= worst.sharpness <= rho * float(g.norm()) + 0.5 * rho ** 2 * lam * 1.1
    adaptive = landscape.sharpness_of(obj, rho=0.5, adaptive=True, steps=5)
    assert adaptive.sharpness > 0 and adaptive.perturbation_norm <= 0.5 * (1 + 1e-9)
    s = landscape.surface(obj, points=3, range=(-0.5, 0.5), seed=1)
    assert s["train_loss"].shape == (3, 3)
    assert s.value_at("train_loss", 0.0, 0.0) == pytest.approx(float(f(w0)), rel=1e-6)
    dirs = random_directions(obj, 2, seed=1).vectors.to(w0)  # the surface's directions: same seed, same draw
    corner = float(f(w0 + 0.5 * dirs[0] - 0.5 * dirs[1]))
    assert s.value_at("train_loss", 0.5, -0.5) == pytest.approx(corner, rel=1e-6)
    assert_unchanged(gpt2, before)


def test_analyze_cli_on_a_gpt2_checkpoint_with_its_own_loss(tmp_path, gpt2, capsys):
    from safetensors.torch import save_model

    ckpt = tmp_path / "model.safetensors"
    save_model(tiny_gpt2(), str(ckpt))  # drops the tied lm_head.weight
    out = tmp_path / "report.json"
    flags = ["--model", "tests.hf_models:tiny_gpt2", "--data", "tests.hf_models:lm_data", "--loss",
             "tests.hf_models:lm_loss", "--top-k", "2", "--trace-samples", "20", "--sharpness-rho", "0.01",
             "--adaptive-rho", "", "--params", SELECT, "--json", str(out), "--quiet"]
    assert main(["analyze", str(ckpt), *flags]) == 0
    report = json.loads(out.read_text())
    assert report["loss"] == {"loss": "loss_fn tests.hf_models:lm_loss"} and report["complete"]
    w0, f = reference(gpt2, Objective(gpt2, lm_loader(), loss=lm_loss, params=SELECT).names)
    assert report["metrics"]["train_loss"] == pytest.approx(float(f(w0)), rel=1e-6)
    assert report["metrics"]["test_loss"] is not None and report["metrics"]["train_acc"] is None
    assert len(report["hessian_eigenvalues"]["eigenvalues"]) == 2
    assert report["sharpness"]["rows"][0]["worst_case"]["sharpness"] > 0


@pytest.mark.parametrize("command", ["plot1d", "plot2d"])
def test_surfaces_of_data_without_a_test_split(tmp_path, command, capsys):
    """A ``--data`` factory that returns one DataLoader: the surfaces default to its train split."""
    from safetensors.torch import save_model

    ckpt = tmp_path / "model.safetensors"
    save_model(tiny_gpt2(), str(ckpt))
    stem = tmp_path / command
    flags = ["--model", "tests.hf_models:tiny_gpt2", "--data", "tests.hf_models:lm_train_only", "--loss",
             "tests.hf_models:lm_loss", "--xpoints", "3", "--no-html", "--format", "png", "--out", str(stem), "--quiet"]
    assert main([command, str(ckpt), *flags]) == 0
    assert "not finite" not in capsys.readouterr().out  # the LM loss gives no accuracy: no note about it
    npz = np.load(f"{stem}.npz")
    assert "train_loss" in npz.files and "test_loss" not in npz.files
    capsys.readouterr()
    assert main([command, str(ckpt), *flags, "--split", "test", "--restart"]) != 0  # asked for: still an error
    assert "the data has no test split" in capsys.readouterr().err


def test_foreign_checkpoint_files(tmp_path):
    from safetensors.torch import save_file

    model = tiny_gpt2()
    sd = model.state_dict()
    lightning = tmp_path / "lightning.ckpt"
    torch.save({"epoch": 3, "global_step": 10, "state_dict": {f"model.{k}": v for k, v in sd.items()}}, lightning)
    factories = dict(model="tests.hf_models:tiny_gpt2", data="tests.hf_models:lm_data")
    with pytest.raises(CheckpointError, match=r"try --strip-prefix model\."):
        open_checkpoint(lightning, **factories)
    _, net, data = open_checkpoint(lightning, strip_prefix="model.", **factories)
    assert all(torch.equal(net.state_dict()[k], v) for k, v in sd.items())
    assert data.splits == ["train", "test"]
    bare = tmp_path / "bare.pt"
    torch.save(sd, bare)
    assert load_checkpoint(bare, allow_state_dict=True).state_dict.keys() == sd.keys()
    plain = tmp_path / "weights.bin"  # safetensors recognised by its header, whatever the name
    save_file({k: v.contiguous() for k, v in sd.items() if k != "lm_head.weight"}, str(plain))
    assert open_checkpoint(plain, **factories)[0].state_dict.keys() == sd.keys() - {"lm_head.weight"}
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(plain.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="corrupt or truncated safetensors"):
        load_checkpoint(broken, allow_state_dict=True)


def test_encoder_decoder_and_causal_lm_under_the_built_in_task():
    """A T5 (encoder-decoder) with dict batches of padded ``labels`` under ``loss="language_model"``: the labels
    reach the model (it builds its decoder inputs from them) and the full-data loss is the token mean of T5's own
    loss, also for a copy task (labels = input_ids); a causal LM whose labels are its inputs (HuggingFace's
    convention) is refused with the fix."""
    from transformers import GPT2Config, GPT2LMHeadModel, T5Config, T5ForConditionalGeneration

    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(vocab_size=40, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2,
                                             decoder_start_token_id=0, pad_token_id=0)).eval()
    ids, labels = torch.randint(0, 40, (6, 7)), torch.randint(0, 40, (6, 5))
    labels[:2, 3:] = -100
    batches = [{"input_ids": ids[i:i + 3], "labels": labels[i:i + 3]} for i in (0, 3)]
    with torch.no_grad():
        tokens = [int((b["labels"] != -100).sum()) for b in batches]
        expected = sum(float(t5(**b).loss) * n for b, n in zip(batches, tokens)) / sum(tokens)
    obj = Objective(t5, batches, loss="language_model")
    assert obj.loss() == pytest.approx(expected, rel=1e-5) and obj.total_count == sum(tokens)
    assert np.isfinite(landscape.hessian_eigenvalues(obj, k=1).eigenvalues).all()
    copy = {"input_ids": ids[:, :5], "labels": ids[:, :5].clone()}  # a copy task: T5's logits line up with labels
    with torch.no_grad():
        assert Objective(t5, copy, loss="language_model").loss() == pytest.approx(float(t5(**copy).loss), rel=1e-5)
    gpt2 = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=31, n_positions=8))
    ids = torch.randint(0, 31, (4, 8))
    with pytest.raises(landscape.objective.loss.LossError, match="labels equal input_ids"):
        Objective(gpt2, [{"input_ids": ids, "labels": ids}], loss="language_model").loss()
