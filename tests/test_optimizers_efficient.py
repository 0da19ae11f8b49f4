"""LookSAM, RST, AE-SAM and ESAM: float64 steps equal their papers' rules written out by hand; the
degenerate settings are the base optimizer (or SAM) bit for bit; the decisions resume exactly."""
from __future__ import annotations

import math

import pytest
import torch

from optimizers import build_optimizer
from tests.family_helpers import BASE, assert_close, assert_same_as_sgd, run, sgd_reference, unit
from tests.optimizer_helpers import closure_for, toy

RHO = 0.1


def sam_grad(F, w, rho=RHO):
    return F.grad(w + rho * unit(F.grad(w)))


# ------------------------------------------------------------------ LookSAM
@pytest.mark.parametrize("per_tensor", [False, True])
def test_looksam_equals_hand_written_algorithm(per_tensor):
    k, alpha, steps = 3, 0.7, 7
    opt, F, w0, got = run("looksam", steps=steps, rho=RHO, k=k, alpha=alpha, per_tensor=per_tensor)
    slices = []
    i = 0
    for s in F.shapes:
        slices.append(slice(i, i + s.numel()))
        i += s.numel()
    parts = slices if per_tensor else [slice(0, i)]
    state = {}

    def direction(w, t):
        g = F.grad(w)
        if t % k == 0:
            gs = sam_grad(F, w)
            state["gv"] = torch.cat([gs[s] - (gs[s] @ g[s]) / (g[s] @ g[s]) * g[s] for s in parts])
            return gs
        gv = state["gv"]
        return torch.cat([g[s] + alpha * g[s].norm() / gv[s].norm() * gv[s] for s in parts])

    assert_close(got, sgd_reference(w0, direction, steps))
    assert opt.metrics()["sam_step"] == 1.0  # step 6 = 2k


def test_looksam_k1_is_sam_and_rho0_is_sgd():
    _, _, _, a = run("looksam", steps=3, rho=RHO, k=1)
    _, _, _, b = run("sam", steps=3, rho=RHO)
    assert torch.equal(a, b)
    assert_same_as_sgd("looksam", steps=6, rho=0.0, k=2)


def test_looksam_state_keeps_g_v():
    opt, _, _, _ = run("looksam", steps=2, k=5)
    sd = opt.state_dict()
    assert len(sd["wrapper"]["state"]) == 4 and all("g_v" in s for s in sd["wrapper"]["state"].values())
    model, _, _ = toy(0)
    other = build_optimizer("looksam", model.parameters(), base_kwargs=dict(BASE), k=5)
    other.load_state_dict(sd)
    for p, q in zip(other.param_groups[0]["params"], opt.param_groups[0]["params"]):
        assert torch.equal(other.state[p]["g_v"], opt.state[q]["g_v"])
    assert other.t == 2


# ------------------------------------------------------------------ RST
def rst_draws(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [float(torch.rand((), generator=g, dtype=torch.float64)) for _ in range(n)]


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_rst_equals_bernoulli_mixture(schedule):
    steps, prob, start = 8, 0.6, 0.1

    def setup(opt, c):
        opt.configure_training(total_steps=steps, seed=11)

    opt, F, w0, got = run("rst", steps=steps, rho=RHO, prob=prob, prob_schedule=schedule, prob_start=start,
                          setup=setup)
    u = rst_draws(steps, 11)

    def p_t(t):
        s = t / steps
        return {"constant": prob, "linear": start + (prob - start) * s,
                "cosine": prob + (start - prob) * 0.5 * (1 + math.cos(math.pi * s))}[schedule]

    sam = [u[t] < p_t(t) for t in range(steps)]
    assert 0 < sum(sam) < steps
    assert_close(got, sgd_reference(w0, lambda w, t: sam_grad(F, w) if sam[t] else F.grad(w), steps))
    assert opt.sam_steps == sum(sam)


def test_rst_extremes():
    assert_same_as_sgd("rst", prob=0.0)
    _, _, _, a = run("rst", steps=3, rho=RHO, prob=1.0)
    _, _, _, b = run("sam", steps=3, rho=RHO)
    assert torch.equal(a, b)


def test_rst_schedule_needs_the_run_length():
    with pytest.raises(RuntimeError, match="total_steps"):
        run("rst", steps=1, prob_schedule="linear")


# ------------------------------------------------------------------ AE-SAM
def test_ae_sam_equals_hand_written_policy():
    steps, delta, c0, c1 = 8, 0.5, 0.5, -0.5

    def setup(opt, c):
        opt.configure_training(total_steps=steps)

    opt, F, w0, got = run("ae_sam", steps=steps, rho=RHO, ema_decay=delta, c_start=c0, c_end=c1, setup=setup)
    st = {"mu": 0.0, "var": 0.0, "sam": []}

    def direction(w, t):
        g = F.grad(w)
        s = float(g @ g)
        st["mu"] = delta * st["mu"] + (1 - delta) * s
        st["var"] = delta * st["var"] + (1 - delta) * (s - st["mu"]) ** 2
        c = c0 + (c1 - c0) * t / steps
        use = s >= st["mu"] + c * math.sqrt(st["var"])
        st["sam"].append(use)
        return sam_grad(F, w) if use else g

    assert_close(got, sgd_reference(w0, direction, steps))
    assert 0 < sum(st["sam"]) < steps and opt.sam_steps == sum(st["sam"])
    assert opt.mu == pytest.approx(st["mu"], rel=1e-12) and opt.var == pytest.approx(st["var"], rel=1e-10)


def test_ae_sam_degenerate():
    assert_same_as_sgd("ae_sam", rho=0.0, c_start=0.0, c_end=0.0)
    assert_same_as_sgd("ae_sam", c_start=math.inf, c_end=math.inf)


# ------------------------------------------------------------------ ESAM
def test_esam_equals_swp_and_sds_by_hand():
    beta, gamma, steps = 0.5, 0.6, 3
    opt, F, w0, got = run("esam", steps=steps, rho=RHO, swp_prob=beta, sds_fraction=gamma)
    gen = torch.Generator().manual_seed(0)
    slices, i = [], 0
    for s in F.shapes:
        slices.append(slice(i, i + s.numel()))
        i += s.numel()
    chosen = []

    def direction(w, t):
        mask = torch.rand(len(slices), generator=gen, dtype=torch.float64) < beta
        keep = torch.zeros_like(w)
        for m, s in zip(mask.tolist(), slices):
            keep[s] = float(m)
        chosen.append(mask.tolist())
        g = F.grad(w) * keep
        e = RHO / beta * g / g.norm()
        # per-sample losses as the closure reports them (float32), the largest increases kept
        sharp = F.losses(w + e).float() - F.losses(w).float()
        k = math.ceil(gamma * len(sharp))
        idx = torch.topk(sharp, k).indices.sort().values
        return F.grad(w + e, F.x[idx], F.y[idx])

    assert_close(got, sgd_reference(w0, direction, steps))
    assert any(not all(m) for m in chosen) and any(any(m) for m in chosen)
    assert opt.metrics()["selected"] == 6.0


def test_esam_degenerate():
    _, _, _, a = run("esam", steps=3, rho=RHO, swp_prob=1.0, sds_fraction=1.0)
    _, _, _, b = run("sam", steps=3, rho=RHO)
    assert torch.equal(a, b)
    assert_same_as_sgd("esam", rho=0.0, sds_fraction=1.0)


def test_esam_mask_stream_resumes():
    opt, _, _, _ = run("esam", steps=2)
    model, _, _ = toy(0)
    other = build_optimizer("esam", model.parameters(), base_kwargs=dict(BASE))
    other.load_state_dict(opt.state_dict())
    assert torch.equal(other.generator.get_state(), opt.generator.get_state()) and other.t == 2


def test_batchnorm_moves_once_for_every_method():
    model, x, y = toy(1, bn=True)
    ref = toy(1, bn=True)[0]
    with torch.no_grad():
        ref(x)
    for name, hp in [("looksam", {"k": 1}), ("rst", {"prob": 1.0}), ("ae_sam", {"c_start": -9.0, "c_end": -9.0}),
                     ("esam", {})]:
        model, _, _ = toy(1, bn=True)
        opt = build_optimizer(name, model.parameters(), base_kwargs={"lr": 0.1}, rho=0.5, **hp)
        opt.step(closure_for(model, x, y))
        assert opt.metrics().get("sam_step", 1.0) == 1.0
        assert int(model[1].num_batches_tracked) == 1, name
        assert torch.equal(model[1].running_mean, ref[1].running_mean), name
        assert opt._saved is None


def test_looksam_keeps_the_last_finite_g_v_after_an_overflowed_sam_pass():
    """An fp16 overflow on a SAM step's second pass (injected: inf gradients) must not store a NaN g_v: the
    scaler skips that step, and the k - 1 reuse steps after it use the last finite g_v."""
    model, x, y = toy(0)
    opt = build_optimizer("looksam", model.parameters(), base_kwargs=dict(BASE), k=2)
    c = closure_for(model, x, y)
    state = {"step": 0}

    def overflowing(update_bn=True):
        loss = c(update_bn=update_bn)
        if state["step"] == 2 and not update_bn:  # the perturbed pass of the second SAM step
            for p in model.parameters():
                p.grad.fill_(math.inf)
        return loss

    for step in range(2):
        state["step"] = step
        opt.step(overflowing)
    kept = {p: opt.state[p]["g_v"].clone() for p in model.parameters()}
    assert all(torch.isfinite(v).all() for v in kept.values())
    state["step"] = 2
    opt.step(overflowing)
    for p in model.parameters():
        assert torch.equal(opt.state[p]["g_v"], kept[p])
