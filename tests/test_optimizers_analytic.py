"""The family's real optimizers on analytic losses (optimizers/analytic.py): steps match the equations."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from optimizers.analytic import FunctionClosure, FunctionModel, optimize_function

A = torch.tensor([[3.0, 1.0], [1.0, 2.0]], dtype=torch.float64)


def quad(w: torch.Tensor) -> torch.Tensor:
    return 0.5 * w @ (A @ w)


def rosen(w: torch.Tensor) -> torch.Tensor:
    return (1 - w[0]) ** 2 + 5 * (w[1] - w[0] ** 2) ** 2


def grad(f, w: np.ndarray) -> np.ndarray:
    t = torch.tensor(w, dtype=torch.float64, requires_grad=True)
    (g,) = torch.autograd.grad(f(t), t)
    return g.numpy()


def test_model_and_closure_lay_out_w_like_function_objective():
    m = FunctionModel(torch.arange(5.0), shapes=[(2, 2), (1,)], names=["weight", "bias"])
    assert [n for n, _ in m.named_parameters()] == ["weight", "bias"]
    assert m.weight.shape == (2, 2) and m.weight.dtype == torch.float32
    assert torch.equal(m.flat(), torch.arange(5.0))
    c = FunctionClosure(lambda w: (w ** 2).sum(), m)
    assert float(c()) == 30.0 and c.calls == 1
    assert torch.equal(m.bias.grad, torch.tensor([8.0]))
    with pytest.raises(ValueError, match="shapes hold"):
        FunctionModel(torch.zeros(3), shapes=[(2,)])


def test_sgd_is_gradient_descent():
    t = optimize_function(quad, [1.0, -2.0], "sgd", steps=5, lr=0.1)
    w = np.array([1.0, -2.0])
    for k in range(5):
        assert t.points[k] == pytest.approx(w, abs=1e-15)
        w = w - 0.1 * A.numpy() @ w
    assert t.points[5] == pytest.approx(w, abs=1e-15)
    assert t.losses == pytest.approx([float(quad(torch.tensor(p))) for p in t.points], rel=1e-14)
    assert t.evaluations == 5 and t.points.dtype == np.float64


def test_sam_and_gsam_steps_are_the_papers():
    """SAM: w - lr grad f(w + rho g/|g|); GSAM (gsam.txt Algo. 1, constant lr so rho_t = rho_max):
    w - lr (g_p - alpha g_perp), g_perp = g - (g.g_p/|g_p|^2) g_p."""
    rho, lr, alpha = 0.1, 0.02, 0.3
    sam = optimize_function(rosen, [-0.5, 0.8], "sam", steps=3, lr=lr, rho=rho)
    gsam = optimize_function(rosen, [-0.5, 0.8], "gsam", steps=3, lr=lr, rho_max=rho, rho_min=0.0, alpha=alpha)
    w_sam = w_gsam = np.array([-0.5, 0.8])
    for k in range(3):
        g = grad(rosen, w_sam)
        w_sam = w_sam - lr * grad(rosen, w_sam + rho * g / np.linalg.norm(g))
        g = grad(rosen, w_gsam)
        gp = grad(rosen, w_gsam + rho * g / (np.linalg.norm(g) + 1e-12))
        g_perp = g - (g @ gp) / (gp @ gp) * gp
        w_gsam = w_gsam - lr * (gp - alpha * g_perp)
        assert sam.points[k + 1] == pytest.approx(w_sam, abs=1e-13)
        assert gsam.points[k + 1] == pytest.approx(w_gsam, abs=1e-13)
    assert [m["rho"] for m in gsam.metrics] == [rho] * 3
    assert sam.evaluations == gsam.evaluations == 6


def test_asam_scales_weights_but_not_1d_tensors():
    """ASAM's default geometry (T = |w| + eta element-wise, 1-D tensors unscaled): with (1, 1) shapes both
    coordinates are weights; as one flat (2,) tensor they are a 'bias' and ASAM is SAM with its radius."""
    f = lambda w: (w[0] * torch.relu(w[1]) - 0.04).abs()  # noqa: E731
    w0, rho, eta, lr = np.array([0.2, 0.05]), 0.5, 0.01, 0.05
    weights = optimize_function(f, w0, "asam", steps=1, lr=lr, shapes=[(1, 1), (1, 1)], rho=rho)
    g = grad(f, w0)
    T = np.abs(w0) + eta
    e = rho * T ** 2 * g / np.linalg.norm(T * g)
    assert weights.points[1] == pytest.approx(w0 - lr * grad(f, w0 + e), abs=1e-15)
    flat = optimize_function(f, w0, "asam", steps=1, lr=lr, rho=rho)
    sam = optimize_function(f, w0, "sam", steps=1, lr=lr, rho=rho)
    assert np.array_equal(flat.points, sam.points)


def test_momentum_weight_decay_adamw_and_divergence():
    t = optimize_function(quad, [1.0, 1.0], "sgd", steps=2, lr=0.1, momentum=0.9, weight_decay=0.1)
    w, buf = np.array([1.0, 1.0]), None
    for _ in range(2):
        g = A.numpy() @ w + 0.1 * w
        buf = g if buf is None else 0.9 * buf + g
        w = w - 0.1 * buf
    assert t.end == pytest.approx(w, abs=1e-15)
    a = optimize_function(quad, [1.0, 1.0], "adamw", steps=1, lr=0.01)
    assert a.end == pytest.approx([0.99, 0.99], abs=1e-9)  # Adam's first step: lr sgn(g)
    s = optimize_function(quad, [1.0, 1.0], "sam", base="adamw", steps=1, lr=0.01, rho=0.05)
    assert s.end == pytest.approx([0.99, 0.99], abs=1e-9)
    blow = optimize_function(lambda w: torch.exp(w[0] ** 2), [3.0], "sgd", steps=50, lr=1.0)
    assert len(blow.points) < 51 and not math.isfinite(blow.losses[-1])
