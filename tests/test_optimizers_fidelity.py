"""Fidelity to the sources (issue 18): each method's float64 update at 1 and 5 steps equals its equations
written out here by hand, independently of the optimizers' helpers; the readings that changed (LETS eq. 5,
ASAM's bias-only exemption, GA-SAM's grouping) are checked against both readings."""
from __future__ import annotations

import math
import warnings

import pytest
import torch
import torch.nn as nn

from optimizers import build_optimizer
from tests.family_helpers import BASE, LR, Flat, assert_close, sgd_reference, sgd_step, unit
from tests.optimizer_helpers import closure_for, flat, params_of

STEPS = [1, 5]
B1, B2, EPS = 0.9, 0.999, 1e-8


def ln_toy(seed: int = 0):
    """A float64 MLP with a LayerNorm (1-D weight that is not a bias) and one batch of 3-class data."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.Tanh(), nn.Linear(6, 3)).double()
    with torch.no_grad():  # a LayerNorm scale away from 1, so that |w| + eta matters there
        model[1].weight.uniform_(0.5, 2.0)
        model[1].bias.uniform_(-0.5, 0.5)
    x = torch.randn(10, 4, dtype=torch.float64)
    y = torch.randint(3, (10,))
    return model, x, y


def run_named(name: str, steps: int, named: bool = True, setup=None, **hp):
    """``steps`` steps on the LayerNorm toy, built from ``named_parameters()`` (or bare tensors)."""
    model, x, y = ln_toy()
    w0 = flat(params_of(model))
    params = model.named_parameters() if named else model.parameters()
    opt = build_optimizer(name, params, base_kwargs=dict(BASE), **hp)
    c = closure_for(model, x, y)
    if setup is not None:
        setup(opt, c)
    for _ in range(steps):
        opt.step(c)
    return opt, Flat(model, x, y), w0, flat(params_of(model))


def per_tensor(F: Flat, w: torch.Tensor) -> list[tuple[str, slice]]:
    out, i = [], 0
    for n, s in zip(F.names, F.shapes):
        out.append((n, slice(i, i + s.numel())))
        i += s.numel()
    return out


# ------------------------------------------------------------------ ASAM: biases only (Sec. 4)
def asam_T(F: Flat, w: torch.Tensor, eta: float, rule: str) -> torch.Tensor:
    T = torch.empty_like(w)
    for n, s in per_tensor(F, w):
        exempt = n.endswith("bias") if rule == "bias" else F.unflat(w)[n].dim() <= 1
        T[s] = 1.0 if exempt else w[s].abs() + eta
    return T


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("rule", ["bias", "1d"])
def test_asam_exempts_biases_only(steps, rule):
    """ASAM eq. 3 with T = |w| + eta on every weight, the LayerNorm scale included, and 1 on biases (the
    paper's Sec. 4 and the authors' ``'weight' in name``); ``exempt="1d"`` also leaves the scale at 1."""
    rho, eta = 0.5, 0.01
    _, F, w0, got = run_named("asam", steps, rho=rho, eta=eta, exempt=rule)

    def direction(w, t):
        g = F.grad(w)
        T = asam_T(F, w, eta, rule)
        return F.grad(w + rho * T**2 * g / (T * g).norm())

    assert_close(got, sgd_reference(w0, direction, steps))


def test_asam_rules_differ_with_a_layernorm_and_bare_tensors_fall_back_to_1d():
    _, _, _, bias = run_named("asam", 1)
    _, _, _, oned = run_named("asam", 1, exempt="1d")
    assert float((bias - oned).abs().max()) > 1e-6
    with pytest.warns(UserWarning, match="named_parameters"):
        _, _, _, bare = run_named("asam", 1, named=False)
    assert torch.equal(bare, oned)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        run_named("sam", 1, named=False)  # no exemption involved: no warning


# ------------------------------------------------------------------ LETS eq. 5
def val_batch(seed: int = 5):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(7, 4, generator=g, dtype=torch.float64), torch.randint(3, (7,), generator=g)


def with_val(opt, c):
    c.set_validation_batch(*val_batch())


def lets_reference(F: Flat, w, rho0, steps, direction, hessian, beta_lr=1e-2, decay=0.9):
    """Alg. 1: a SAM step with rho = exp(beta); F = gap^2 / 2 at w+; dw+/drho = -lr H u with
    H ~ diag(g_hat * g_hat) or g_hat g_hat^T; Adam on beta with an exponentially decayed lr."""
    xv, yv = val_batch()
    beta, m, v, buf = math.log(rho0), 0.0, 0.0, None
    for t in range(steps):
        rho = math.exp(beta)
        u = direction(w, F.grad(w))
        ghat = F.grad(w + rho * u)
        w, buf = sgd_step(w, ghat, buf)
        gap = float(F.loss(w, xv, yv).float()) - float(F.loss(w).float())  # the closure's float32 losses
        dgap = F.grad(w, xv, yv) - F.grad(w)
        dw_drho = -LR * (ghat * ghat * u if hessian == "diag" else ghat * (ghat @ u))
        dfdbeta = rho * gap * float(dgap @ dw_drho)
        m = B1 * m + (1 - B1) * dfdbeta
        v = B2 * v + (1 - B2) * dfdbeta**2
        m_hat, v_hat = m / (1 - B1 ** (t + 1)), v / (1 - B2 ** (t + 1))
        beta -= beta_lr * decay**t * m_hat / (math.sqrt(v_hat) + EPS)
    return w, beta, dfdbeta


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("hessian", ["diag", "outer"])
@pytest.mark.parametrize("name", ["lets_sam", "lets_asam"])
def test_lets_equals_hand_written_algorithm(name, hessian, steps):
    rho0 = 0.05 if name == "lets_sam" else 0.5
    eta = 0.01
    opt, F, w0, got = run_named(name, steps, setup=with_val, rho=rho0, beta_lr=1e-2, beta_lr_decay=0.9,
                                lets_hessian=hessian)

    def direction(w, g):
        if name == "lets_sam":
            return unit(g)
        T = asam_T(F, w, eta, "bias")
        return T**2 * g / (T * g).norm()

    ref_w, ref_beta, last = lets_reference(F, w0, rho0, steps, direction, hessian)
    assert_close(got, ref_w)
    assert abs(opt.beta - ref_beta) < 1e-10 and abs(opt.beta - math.log(rho0)) > 1e-4
    assert opt.last["hypergrad"] == pytest.approx(last, rel=1e-9, abs=1e-15)
    if hessian == "diag":  # the two readings give different hypergradients (a different direction)
        other, _, _, _ = run_named(name, 1, setup=with_val, rho=rho0, lets_hessian="outer")
        mine, _, _, _ = run_named(name, 1, setup=with_val, rho=rho0)
        assert abs(other.last["hypergrad"] - mine.last["hypergrad"]) > 1e-3 * abs(mine.last["hypergrad"])


# ------------------------------------------------------------------ GA-SAM: layer = module
def ga_sam_T(F: Flat, w: torch.Tensor, g: torch.Tensor, grouping: str) -> torch.Tensor:
    """Eq. 13, T_i = sqrt(n_i) / (||g_i|| sqrt(n)), over tensors or over modules (weight + bias)."""
    groups: dict[str, list[slice]] = {}
    for n, s in per_tensor(F, w):
        groups.setdefault(n.rsplit(".", 1)[0] if grouping == "module" else n, []).append(s)
    T = torch.empty_like(w)
    for slices in groups.values():
        gi = torch.cat([g[s] for s in slices])
        for s in slices:
            T[s] = math.sqrt(gi.numel()) / (gi.norm() * math.sqrt(w.numel()))
    return T


@pytest.mark.parametrize("steps", STEPS)
@pytest.mark.parametrize("grouping", ["tensor", "module"])
def test_ga_sam_grouping_equals_hand_written_algorithm(grouping, steps):
    """Algo. 1 with K = 2, p = inf: T from g_0 (eq. 13), u_k = eta T sgn(g_{k-1}) (eq. 15), a_k the
    clip of a_{k-1} + u_k to |a| <= rho T (eq. 18), update with the mean of g_0..g_K (eq. 14)."""
    rho, K = 0.05, 2
    eta = 1.5 * rho / K
    _, F, w0, got = run_named("ga_sam", steps, rho=rho, ascent_steps=K, grouping=grouping)

    def direction(w, t):
        g = F.grad(w)
        T = ga_sam_T(F, w, g, grouping)
        a, gs, gk = torch.zeros_like(w), [g], g
        for k in range(1, K + 1):
            a = torch.clamp(a + eta * T * torch.sign(gk), -rho * T, rho * T)
            gk = F.grad(w + a)
            gs.append(gk)
        return torch.stack(gs).mean(0)

    assert_close(got, sgd_reference(w0, direction, steps))


def test_ga_sam_groupings_differ_and_bare_tensors_warn():
    _, _, _, a = run_named("ga_sam", 1, rho=0.05, grouping="tensor")
    _, _, _, b = run_named("ga_sam", 1, rho=0.05, grouping="module")
    assert float((a - b).abs().max()) > 1e-6
    with pytest.warns(UserWarning, match="named_parameters"):
        _, _, _, bare = run_named("ga_sam", 1, named=False, rho=0.05, grouping="module")
    assert torch.equal(bare, a)


# ------------------------------------------------------------------ Layer-SAM
@pytest.mark.parametrize("steps", STEPS)
def test_layer_sam_equals_hand_written_update(steps):
    """GA-SAM's Layer-SAM: e = rho T^2 g / ||T g||, T_i = ||w_i|| / ||g_i|| per tensor (p = 2)."""
    rho = 0.05
    _, F, w0, got = run_named("layer_sam", steps, rho=rho)

    def direction(w, t):
        g = F.grad(w)
        T = torch.empty_like(w)
        for _, s in per_tensor(F, w):
            T[s] = w[s].norm() / g[s].norm()
        return F.grad(w + rho * T**2 * g / (T * g).norm())

    assert_close(got, sgd_reference(w0, direction, steps))


# ------------------------------------------------------------------ the efficient family
RHO = 0.1


def sam_grad(F, w):
    return F.grad(w + RHO * unit(F.grad(w)))


@pytest.mark.parametrize("steps", STEPS)
def test_looksam_equals_alg1(steps):
    """Alg. 1: every k steps g_s at w + rho g/||g|| and g_v = g_s - (g_s.g/||g||^2) g; in between
    g + alpha ||g|| g_v / ||g_v||."""
    k, alpha = 2, 0.7
    _, F, w0, got = run_named("looksam", steps, rho=RHO, k=k, alpha=alpha)
    mem = {}

    def direction(w, t):
        g = F.grad(w)
        if t % k == 0:
            gs = sam_grad(F, w)
            mem["gv"] = gs - (gs @ g) / (g @ g) * g
            return gs
        return g + alpha * g.norm() / mem["gv"].norm() * mem["gv"]

    assert_close(got, sgd_reference(w0, direction, steps))


@pytest.mark.parametrize("steps", STEPS)
def test_rst_equals_bernoulli_schedule(steps):
    """RST: z_t ~ Bernoulli(p_t), p_t linear from prob_start to prob; SAM if z_t else ERM."""
    p0, p1, total = 0.2, 0.9, 5
    draws = torch.Generator().manual_seed(3)
    u = [float(torch.rand((), generator=draws, dtype=torch.float64)) for _ in range(steps)]
    _, F, w0, got = run_named("rst", steps, setup=lambda o, c: o.configure_training(total_steps=total, seed=3),
                              rho=RHO, prob=p1, prob_start=p0, prob_schedule="linear")

    def direction(w, t):
        return sam_grad(F, w) if u[t] < p0 + (p1 - p0) * t / total else F.grad(w)

    assert_close(got, sgd_reference(w0, direction, steps))


@pytest.mark.parametrize("steps", STEPS)
def test_ae_sam_equals_alg1(steps):
    """Alg. 1: mu, sigma^2 EMAs of ||g||^2; SAM iff ||g||^2 >= mu + c_t sigma, c_t linear in t / T."""
    delta, c0, c1, total = 0.5, 0.3, -0.6, 5
    _, F, w0, got = run_named("ae_sam", steps, setup=lambda o, c: o.configure_training(total_steps=total),
                              rho=RHO, ema_decay=delta, c_start=c0, c_end=c1)
    st = {"mu": 0.0, "var": 0.0}

    def direction(w, t):
        g = F.grad(w)
        s = float(g @ g)
        st["mu"] = delta * st["mu"] + (1 - delta) * s
        st["var"] = delta * st["var"] + (1 - delta) * (s - st["mu"]) ** 2
        return sam_grad(F, w) if s >= st["mu"] + (c0 + (c1 - c0) * t / total) * math.sqrt(st["var"]) else g

    assert_close(got, sgd_reference(w0, direction, steps))


@pytest.mark.parametrize("steps", STEPS)
def test_esam_equals_swp_and_sds(steps):
    """SWP: a Bernoulli(beta) mask per tensor, e = (rho / beta) g_S / ||g_S||; SDS: the second pass on
    the ceil(gamma |B|) samples whose loss rises most from w to w + e."""
    beta, gamma = 0.5, 0.6
    _, F, w0, got = run_named("esam", steps, rho=RHO, swp_prob=beta, sds_fraction=gamma)
    gen = torch.Generator().manual_seed(0)
    tensors = per_tensor(F, w0)

    def direction(w, t):
        keep = torch.zeros_like(w)
        for m, (_, s) in zip((torch.rand(len(tensors), generator=gen, dtype=torch.float64) < beta).tolist(),
                             tensors):
            keep[s] = float(m)
        gS = F.grad(w) * keep
        e = RHO / beta * gS / gS.norm() if gS.norm() > 0 else torch.zeros_like(w)
        rise = F.losses(w + e).float() - F.losses(w).float()
        idx = torch.topk(rise, math.ceil(gamma * len(rise))).indices.sort().values
        return F.grad(w + e, F.x[idx], F.y[idx])

    assert_close(got, sgd_reference(w0, direction, steps))


def test_lets_rejects_an_unknown_hessian_reading():
    with pytest.raises(ValueError, match="lets_hessian"):
        build_optimizer("lets_sam", nn.Linear(2, 1).parameters(), lets_hessian="full")


def test_unknown_exempt_and_grouping_are_one_line_errors():
    with pytest.raises(ValueError, match="exempt"):
        build_optimizer("asam", nn.Linear(2, 1).parameters(), exempt="weights")
    with pytest.raises(ValueError, match="grouping"):
        build_optimizer("ga_sam", nn.Linear(2, 1).parameters(), grouping="layer")


# ------------------------------------------------------------------ the geometry's new arguments
def test_geometry_exempt_mask_and_groups_by_hand():
    """``exempt`` replaces the 1-D rule; ``groups`` pools ||w_i||, ||g_i|| and n_i over a group."""
    from landscape.geometry import Geometry

    torch.manual_seed(0)
    w = [torch.randn(3, 2, dtype=torch.float64), torch.randn(3, dtype=torch.float64),
         torch.randn(3, dtype=torch.float64)]
    g = [torch.randn_like(t) for t in w]
    el = Geometry(normalization="element", eta=0.01, exclude="unscaled")
    s = el.scaling(w, exempt=[False, False, True])
    assert torch.equal(s.factors[1], w[1].abs() + 0.01) and s.factors[2] is None
    assert el.scaling(w).factors[1] is None  # default: every 1-D tensor exempt
    ga = Geometry(normalization="gradient")
    s = ga.scaling(w, g, groups=[0, 0, 1])
    n = sum(t.numel() for t in w)
    g01 = torch.cat([g[0].reshape(-1), g[1]])
    for i, (num, gn) in enumerate([(9, g01.norm()), (9, g01.norm()), (3, g[2].norm())]):
        assert float(s.factors[i]) == pytest.approx(math.sqrt(num) / (float(gn) * math.sqrt(n)), rel=1e-14)
    wg = Geometry(normalization="weight_gradient").scaling(w, g, groups=[0, 0, 1])
    w01 = torch.cat([w[0].reshape(-1), w[1]])
    assert float(wg.factors[0]) == pytest.approx(float(w01.norm() / g01.norm()), rel=1e-14)
    plain = ga.scaling(w, g)
    assert all(torch.equal(a, b) for a, b in zip(plain.factors, ga.scaling(w, g, groups=[0, 1, 2]).factors))
    with pytest.raises(ValueError, match="exempt mask"):
        el.scaling(w, exempt=[True])


def test_trainer_passes_parameter_names(tmp_path):
    """The trainer builds the optimizer from ``named_parameters()``: ASAM's bias-only rule applies, no warning."""
    from optimizers.config import TrainConfig
    from optimizers.trainer import Trainer

    config = TrainConfig(model="tests.fixtures:tiny_mlp", data="tests.fixtures:blobs", epochs=1, batch_size=16,
                         lr=0.1, seed=3, eval_batch_size=32, optimizer="asam", steps=1)
    trainer = Trainer(config, tmp_path / "a.pt", progress=False)
    with warnings.catch_warnings():
        warnings.filterwarnings("error", message=".*parameter names unknown")
        trainer.run()
    names = [n for n, _ in trainer.model.named_parameters()]
    assert sorted(trainer.optimizer.param_names.values()) == sorted(names)
