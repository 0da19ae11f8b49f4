"""The engineering contract of every sharpness-aware method (the single-pass family of
tests/optimizer_helpers.FAMILY, and GNR, LETS, ESAM, LookSAM, RST, AE-SAM): gradient accumulation,
clipping of the final update gradient, the AdamW base, bf16 autocast, no parameter-sized copies kept
between steps (LookSAM's g_v aside, which is the method)."""
from __future__ import annotations

import copy

import pytest
import torch

from optimizers import build_optimizer
from tests.family_helpers import BASE
from tests.optimizer_helpers import FAMILY, closure_for, flat, grad_at, params_of, toy

# Hyper-parameters large enough that every perturbation matters on the toy problem.
METHODS = {
    **{name: (name, hp) for name, hp in FAMILY.items()},
    "gnr": ("gnr", {"rho": 0.3, "alpha": 0.5, "oracle": "sam", "oracle_rho": 0.2}),
    "gnr central": ("gnr", {"rho": 0.3, "alpha": 0.5, "hvp": "central", "fd_radius": 1e-3}),
    "lets_sam": ("lets_sam", {"rho": 0.3, "beta_lr": 0.01}),
    "lets_asam": ("lets_asam", {"rho": 1.0, "beta_lr": 0.01}),
    "esam": ("esam", {"rho": 0.3, "swp_prob": 0.5, "sds_fraction": 0.6}),
    "looksam": ("looksam", {"rho": 0.3, "k": 2}),
    "rst": ("rst", {"rho": 0.3, "prob": 0.99}),  # the seed-0 draws 0.97, 0.71, 0.46: SAM steps
    "ae_sam": ("ae_sam", {"rho": 0.3, "c_start": 0.0, "c_end": 0.0}),
}


def closure(model, x, y, **kw):
    c = closure_for(model, x, y, **kw)
    xv, yv = toy(7)[1:]
    c.set_validation_batch(xv.to(x.dtype), yv)
    return c


def build(label, model, **kw):
    name, hp = METHODS[label]
    return build_optimizer(name, model.parameters(), **{"base_kwargs": dict(BASE), **kw}, **hp)


@pytest.mark.parametrize("label", METHODS)
def test_gradient_accumulation_equals_the_full_batch(label):
    got = []
    for accum in (1, 2):
        model, x, y = toy(0)
        opt = build(label, model)
        c = closure(model, x, y, accum_steps=accum)
        for _ in range(3):
            opt.step(c)
        got.append(flat(params_of(model)))
    # LETS: the closure sums the losses in float32, so L_V - L_B (and beta) round differently per chunking
    tol = 1e-10 if label.startswith("lets") else 1e-13 if label in FAMILY else 1e-12
    assert float((got[0] - got[1]).abs().max()) < tol


@pytest.mark.parametrize("label", METHODS)
def test_clipping_acts_on_the_final_update_gradient(label):
    """The update is ``-lr clip(d)`` with ``d`` the method's final gradient (not the first pass's)."""
    model, x, y = toy(0)
    w0 = params_of(model)
    probe = build(label, model, base_kwargs={"lr": 0.5})
    probe.compute_gradients(closure(model, x, y))
    d = {n: p.grad.clone() for n, p in model.named_parameters()}
    assert all(torch.equal(p, w0[n]) for n, p in model.named_parameters())
    assert float((flat(d) - flat(grad_at(model, w0, x, y))).abs().max()) > 1e-6  # not the plain gradient
    max_norm = 0.3 * float(flat(d).norm())
    model.zero_grad(set_to_none=True)
    opt = build(label, model, base_kwargs={"lr": 0.5}, max_grad_norm=max_norm)
    opt.step(closure(model, x, y))
    coef = max_norm / (float(flat(d).norm()) + 1e-6)
    ref = flat({n: w0[n] - 0.5 * coef * d[n] for n in w0})
    assert float((flat(params_of(model)) - ref).abs().max()) < 1e-14
    assert opt.last_grad_norm == pytest.approx(float(flat(d).norm()), rel=1e-12)


@pytest.mark.parametrize("label", METHODS)
def test_every_method_wraps_adamw(label):
    model, x, y = toy(0)
    twin = copy.deepcopy(model)
    adamw = {"lr": 0.01, "weight_decay": 0.1}
    probe = build(label, model, base="adamw", base_kwargs=adamw)
    probe.compute_gradients(closure(model, x, y))
    ref = torch.optim.AdamW(twin.parameters(), **adamw)
    for p, q in zip(model.parameters(), twin.parameters()):
        q.grad = p.grad.clone()
    ref.step()
    model.zero_grad(set_to_none=True)
    opt = build(label, model, base="adamw", base_kwargs=adamw)
    assert isinstance(opt.base, torch.optim.AdamW)
    opt.step(closure(model, x, y))
    assert float((flat(params_of(model)) - flat(params_of(twin))).abs().max()) < 1e-14


@pytest.mark.parametrize("label", METHODS)
def test_bf16_autocast_without_a_scaler(label):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3))
    ref = copy.deepcopy(model)
    x, y = torch.randn(32, 4), torch.randint(3, (32,))
    opt, opt_ref = build(label, model), build(label, ref)
    c, c_ref = closure(model, x, y, autocast_dtype=torch.bfloat16), closure(ref, x, y)
    for _ in range(3):
        opt.step(c)
        opt_ref.step(c_ref)
    assert opt.scaler is None and opt.skipped_steps == 0
    for p, q in zip(model.parameters(), ref.parameters()):
        assert p.dtype == torch.float32 and torch.isfinite(p).all()
        torch.testing.assert_close(p, q, rtol=0, atol=2e-2)  # bf16 rounding, not a different method


@pytest.mark.parametrize("label", METHODS)
def test_no_parameter_sized_copies_persist_between_steps(label):
    model, x, y = toy(0, bn=True)
    opt = build(label, model)
    opt.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    c = closure(model, x, y, scaler=opt.scaler)
    for _ in range(3):
        opt.step(c)
    state_ptrs = {t.data_ptr() for s in opt.state.values() for t in s.values() if torch.is_tensor(t)}

    def tensors_in(obj, depth=0):
        if torch.is_tensor(obj):
            yield obj
        elif depth < 3 and isinstance(obj, (list, tuple)):
            for o in obj:
                yield from tensors_in(o, depth + 1)
        elif depth < 3 and isinstance(obj, dict):
            for o in obj.values():
                yield from tensors_in(o, depth + 1)

    n_tensors = sum(1 for _ in model.parameters())
    owned = {k: v for k, v in vars(opt).items() if k not in ("base", "param_groups", "state", "defaults", "scaler")}
    big = [k for k, v in owned.items() for t in tensors_in(v)
           if t.numel() > n_tensors and t.data_ptr() not in state_ptrs]
    assert not big, big
    kept = {key for s in opt.state.values() for key in s}
    assert kept == ({"g_v"} if label == "looksam" else set())  # LookSAM's memory is its method
    assert {key for s in opt.base.state.values() for key in s} == {"momentum_buffer"}
    assert opt.base.defaults["foreach"] is True
    if label in FAMILY:  # the single-pass family keeps no tensor of its own (0-d: the fp16 skip counter)
        assert not [k for k, v in owned.items() if any(t.dim() for t in tensors_in(v))], owned.keys()
        assert not opt.state  # the wrapper keeps nothing per parameter


@pytest.mark.slow
@pytest.mark.parametrize("name, hp", [("looksam", {"k": 2}), ("lets_sam", {"beta_lr": 0.01}), ("esam", {}),
                                      ("gnr", {}), ("gnr", {"hvp": "forward"}), ("rst", {"prob": 0.5}),
                                      ("ae_sam", {"c_start": 0.0, "c_end": 0.0})])
def test_torch_compile_matches_eager(tmp_path, name, hp):
    """Through the trainer with ``compile=True`` (GNR's exact HVPs run the eager module either way)."""
    from optimizers.config import TrainConfig
    from optimizers.trainer import Trainer

    def cfg(compile_):
        return TrainConfig(model="tests.fixtures:tiny_mlp", data="tests.fixtures:blobs", epochs=1, steps=4,
                           batch_size=16, seed=1, optimizer=name, hparams=dict(hp), compile=compile_)

    eager = Trainer(cfg(False), tmp_path / "e.pt", progress=False).run()
    compiled = Trainer(cfg(True), tmp_path / "c.pt", progress=False).run()
    for k, v in eager.state_dict.items():
        torch.testing.assert_close(compiled.state_dict[k], v, rtol=1e-4, atol=1e-5)
