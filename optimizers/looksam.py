"""LookSAM (Liu, Mai, Chen, Hsieh, You, "Towards Efficient and Scalable Sharpness-Aware Minimization",
CVPR 2022, Alg. 1): the SAM gradient every ``k`` steps, its sharpness component reused in between.

Step ``t`` (0-based), ``g = grad L_B(w)``::

    t % k == 0:  g_s = grad L_B(w + e),  e = SAM's ascent of radius rho   (2 passes)
                 g_v = g_s - (g_s . g / ||g||^2) g                          (= g_s - ||g_s|| cos(g, g_s) g/||g||)
                 update with g_s
    otherwise:   update with g + alpha (||g|| / ||g_v||) g_v                (1 pass)

Norms and dot products are global (over all parameters, as in the paper); ``per_tensor=True`` takes them
per parameter tensor (the layer-wise form).

Source: Liu, Mai, Chen, Hsieh, You, CVPR 2022 (arXiv:2203.02714), Alg. 1: ``g_v`` from the SAM
gradient's component orthogonal to ``g`` every ``k`` steps, reused with the adaptive ratio
``alpha ||g|| / ||g_v||`` in between; defaults ``k = 5``, ``alpha = 0.7`` (the paper's LookSAM-5, as we
read it). The paper is not in the seeds; the equations above are our reading of it, consistent with
AE-SAM's description (Sec. 1) and with public implementations. No code by the authors is public; the
widely used unofficial one (github.com/rollovd/LookSAM, ``looksam.py``, ``LookSAM.step``) projects and
rescales per parameter tensor, i.e. ``per_tensor=True``.

``g_v`` is kept per parameter in the optimizer state (it is LookSAM's memory; it resumes with the
state). ``rho = 0`` means ``g_s = g`` and ``g_v = 0``: the base optimizer exactly. Both passes of a SAM
step and the single pass of the others are all-reduced under DDP (``g_v`` must be the same on every
replica).
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from optimizers import register_optimizer
from landscape.geometry import _acc
from optimizers._family import FamilyState, dot, sq_norm
from optimizers.sam import SAM

_TINY = 1e-12


class LookSAM(FamilyState, SAM):
    """LookSAM over a base optimizer: ``k`` (period of SAM steps), ``alpha`` (weight of the reused
    sharpness direction), ``per_tensor`` (layer-wise norms); see the module docstring."""

    def __init__(
        self,
        params: Iterable[Any],
        *,
        base: str = "sgd",
        base_kwargs: dict[str, Any] | None = None,
        max_grad_norm: float | None = None,
        rho: float = 0.05,
        k: int = 5,
        alpha: float = 0.7,
        per_tensor: bool = False,
        p: float = 2.0,
        normalization: str = "none",
        eta: float = 0.0,
        exclude: str = "none",
        exempt: str = "1d",
    ) -> None:
        if int(k) != k or k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        if alpha < 0:
            raise ValueError(f"alpha must be >= 0, got {alpha}")
        super().__init__(params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm, rho=rho, p=p,
                         normalization=normalization, eta=eta, exclude=exclude, exempt=exempt, sync_perturbation=True)
        self.k, self.alpha, self.per_tensor = int(k), float(alpha), bool(per_tensor)
        self._init_family()
        self.last_sam_step = False
        # (params, g_v tensors, alpha / ||g_v||) between SAM steps: no per-step state lookups
        self._cache: tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor] | None = None

    def compute_gradients(self, closure: Callable[..., torch.Tensor]) -> torch.Tensor:
        t = self._tick()
        with torch.enable_grad():
            loss = closure()
        self.last_sam_step = t % self.k == 0
        if self.last_sam_step:
            self._sam_step(closure)
        else:
            self._reuse_step()
        return loss

    def _sam_step(self, closure: Callable[..., torch.Tensor]) -> None:
        params = self.params_with_grad()
        self.first_step(zero_grad=False)  # unscales g in place
        g = [p.grad.clone() for p in params]  # copies: a closure may zero p.grad in place
        with torch.enable_grad():
            closure(update_bn=False)
        with torch.no_grad():
            gs = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            scale = self.scale_tensor(gs[0].device) if gs else None
            if scale is not None:
                gs = list(torch._foreach_div(gs, scale))
            if self.rho == 0:
                g_v = [torch.zeros_like(x) for x in gs]
            elif self.per_tensor:
                g_v = [s - (dot([s], [a]) / sq_norm([a]).clamp_min(_TINY)).to(s.dtype) * a for s, a in zip(gs, g)]
            else:
                c = (dot(gs, g) / sq_norm(g).clamp_min(_TINY)).to(gs[0].dtype)
                g_v = list(torch._foreach_sub(gs, torch._foreach_mul(g, c)))
            # an overflowed SAM pass (fp16: the scaler skips this step) keeps the last finite g_v (zero before
            # the first), so the k - 1 reuse steps after it are not lost too; decided on the device
            ok = torch.stack([torch.isfinite(v).all() for v in g_v]).all()
            for p, v in zip(params, g_v):
                v = v if v.dtype == p.dtype else v.to(p.dtype)
                old = self.state[p].get("g_v")
                self.state[p]["g_v"] = torch.where(ok, v, torch.zeros_like(v) if old is None else old)
            self._cache = None
        self.restore()

    def _reuse_step(self) -> None:
        """``g <- g + alpha ||g|| g_v / ||g_v||`` in place (``g`` possibly fp16-scaled: linear in it)."""
        if self._cache is None:  # after a SAM step or a load: the tensors holding g_v and alpha/||g_v||
            params = [p for p in self.params_with_grad() if "g_v" in self.state[p]]
            if not params:
                return
            g_v = [self.state[p]["g_v"] for p in params]
            norms = _acc(torch.stack(torch._foreach_norm(g_v)))
            if not self.per_tensor:
                norms = torch.linalg.vector_norm(norms).expand(len(g_v))
            self._cache = (params, g_v, self.alpha / norms.clamp_min(_TINY))
        params, g_v, coef = self._cache
        g = [p.grad for p in params]
        if any(t is None for t in g):  # a tensor without a gradient this step: leave it out
            keep = [i for i, t in enumerate(g) if t is not None]
            g, g_v, coef = [g[i] for i in keep], [g_v[i] for i in keep], coef[keep]
            if not g:
                return
        norms = _acc(torch.stack(torch._foreach_norm(g)))
        if self.per_tensor:
            f = (norms * coef).to(g[0].dtype)
            torch._foreach_add_(g, torch._foreach_mul(g_v, list(f.unbind())))
        elif g[0].device.type == "cpu":  # host reads are free here: scalars in Python, one fused kernel
            torch._foreach_add_(g, g_v, alpha=math.sqrt(sum(n * n for n in norms.tolist())) * float(coef[0]))
        else:  # no host sync on an accelerator
            f = (torch.linalg.vector_norm(norms) * coef[0]).to(g[0].dtype)
            torch._foreach_add_(g, torch._foreach_mul(g_v, f))

    def extra_state(self) -> dict[str, Any]:
        return self.family_state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.load_family_state(state)
        self._cache = None

    def metrics(self) -> dict[str, float]:
        return {"rho": self.rho, "sam_step": float(self.last_sam_step)}


register_optimizer("looksam")(LookSAM)

__all__ = ["LookSAM"]
