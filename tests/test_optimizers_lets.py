"""LETS-SAM / LETS-ASAM: float64 steps and the learned radius equal the equations written out by hand."""
from __future__ import annotations

import math

import pytest
import torch

from optimizers import build_optimizer
from tests.family_helpers import BASE, LR, Flat, assert_close, run, sgd_step, unit
from tests.optimizer_helpers import closure_for, flat, params_of, toy

B1, B2, EPS = 0.9, 0.999, 1e-8


def val_batch(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randint(3, (7,), generator=g)


def with_val(opt, c):
    c.set_validation_batch(*val_batch())


def lets_reference(F: Flat, w, rho0, steps, direction, beta_lr=1e-4, decay=0.99999):
    """Alg. 1 by hand: SAM step with rho = exp(beta), then Adam on beta with the first-order hypergradient
    (the rank-one reading of eq. 5, ``lets_hessian="outer"``; the diagonal default is in test_optimizers_fidelity)."""
    xv, yv = val_batch()
    beta, m, v, buf = math.log(rho0), 0.0, 0.0, None
    hyper = []
    for t in range(steps):
        rho = math.exp(beta)
        u = direction(w, F.grad(w))
        ghat = F.grad(w + rho * u)
        w, buf = sgd_step(w, ghat, buf)
        # the closure reports losses in float32 (StepClosure's convention); round them the same way
        gap = float(F.loss(w, xv, yv).float()) - float(F.loss(w).float())
        d = F.grad(w, xv, yv) - F.grad(w)
        dfdrho = gap * float(d @ (-LR * ghat * (ghat @ u)))  # F = gap^2 / 2, H ~ g_hat g_hat^T
        dfdbeta = rho * dfdrho
        hyper.append(dfdbeta)
        m = B1 * m + (1 - B1) * dfdbeta
        v = B2 * v + (1 - B2) * dfdbeta**2
        m_hat, v_hat = m / (1 - B1 ** (t + 1)), v / (1 - B2 ** (t + 1))
        beta -= beta_lr * decay**t * m_hat / (math.sqrt(v_hat) + EPS)
    return w, beta, hyper


def test_lets_sam_equals_hand_written_algorithm():
    rho0 = 0.05
    opt, F, w0, got = run("lets_sam", steps=3, rho=rho0, setup=with_val, beta_lr=1e-2, beta_lr_decay=0.9,
                            lets_hessian="outer")
    ref_w, ref_beta, hyper = lets_reference(F, w0, rho0, 3, lambda w, g: unit(g), beta_lr=1e-2, decay=0.9)
    assert_close(got, ref_w)
    assert abs(opt.beta - ref_beta) < 1e-10 and abs(opt.beta - math.log(rho0)) > 1e-3  # rho moved
    assert opt.last["hypergrad"] == pytest.approx(hyper[-1], rel=1e-10, abs=1e-14)
    assert opt.metrics()["rho"] == pytest.approx(math.exp(ref_beta), rel=1e-12)


def test_lets_asam_equals_hand_written_algorithm():
    rho0, eta = 0.5, 0.01
    _, F, w0, _ = run("sgd", steps=0)
    names = F.names

    def asam_u(w, g):
        T = torch.cat([(t.abs() + eta).reshape(-1) if t.dim() > 1 else torch.ones(t.numel(), dtype=t.dtype)
                       for t in F.unflat(w).values()])
        return T**2 * g / (T * g).norm()

    opt, F, w0, got = run("lets_asam", steps=2, rho=rho0, eta=eta, setup=with_val, beta_lr=1e-2,
                            lets_hessian="outer")
    ref_w, ref_beta, _ = lets_reference(F, w0, rho0, 2, asam_u, beta_lr=1e-2)
    assert names == F.names
    assert_close(got, ref_w)
    assert abs(opt.beta - ref_beta) < 1e-10


def test_rho_zero_is_the_base_optimizer_bit_for_bit():
    opt, _, _, got = run("lets_sam", steps=3, rho=0.0, setup=with_val)
    _, _, _, ref = run("sgd", steps=3)
    assert torch.equal(got, ref) and opt.radius() == 0.0 and "beta" not in opt.metrics()


def test_needs_a_validation_batch():
    with pytest.raises(RuntimeError, match="validation batch"):
        run("lets_sam", steps=1)


def test_state_round_trip_resumes_beta_and_adam_exactly():
    opt, _, _, _ = run("lets_sam", steps=2, setup=with_val, beta_lr=1e-2)
    model, x, y = toy(0)
    other = build_optimizer("lets_sam", model.parameters(), base_kwargs=dict(BASE), beta_lr=1e-2)
    other.load_state_dict(opt.state_dict())
    assert (other.beta, other.adam_m, other.adam_v, other.adam_t, other.t) == \
        (opt.beta, opt.adam_m, opt.adam_v, opt.adam_t, opt.t)
    assert other.metrics() == opt.metrics()


def test_manual_api_then_hyper_step_equals_closure_step():
    opt_a, _, _, auto = run("lets_sam", steps=1, setup=with_val, beta_lr=1e-2)
    model, x, y = toy(0)
    opt = build_optimizer("lets_sam", model.parameters(), base_kwargs=dict(BASE), beta_lr=1e-2)
    c = closure_for(model, x, y)
    with_val(opt, c)
    loss_fn = torch.nn.functional.cross_entropy
    loss_fn(model(x), y).backward()
    opt.first_step(zero_grad=True)
    loss_fn(model(x), y).backward()
    opt.second_step()
    opt.hyper_step(c)
    assert torch.equal(flat(params_of(model)), auto) and opt.beta == opt_a.beta
