"""GSAM: surrogate-gap guided SAM (Zhuang et al. 2022, Algo. 1), over any perturbation geometry.

One step, with ``g = grad f(w)`` and ``eps = 1e-12``::

    0) rho_t  = rho_min + (rho_max - rho_min) (lr_t - lr_min) / (lr_max - lr_min)
    1) e      = rho_t g / (||g|| + eps)                    (T = 1; ASAM's T with normalization="element")
    2) g_p    = grad f(w + e)
    3) g_perp = g - (g . g_p / ||g_p||^2) g_p               (component of g orthogonal to g_p)
    4) w     <- base_update(w, g_p - alpha g_perp)

With ``normalization="element"`` (and ASAM's ``eta``/``exclude``) step 1 is ASAM's perturbation:
that is the paper's "ASAM+ascent" (Sec. 6.5), registered as ``asam_ascent`` with ASAM's defaults.
The decomposition is always Euclidean (``g`` onto ``g_p``), as in the paper.

The rho schedule follows the trainer's learning rate: each param group carries ``base_lr`` (=
``lr_max``) and ``min_lr_factor`` (``lr_min = base_lr * min_lr_factor``), set by
:class:`optimizers.trainer.Trainer`. Without them (plain Python use) ``lr_max`` is the group's
``initial_lr`` (set by any ``torch.optim.lr_scheduler``) or else the lr at construction, and
``lr_min = 0``; so a constant lr gives ``rho_t = rho_max``, and if ``lr_max == lr_min`` (a constant
schedule with ``min_lr_factor = 1``) ``rho_t = rho_max`` too. ``rho_t`` is floored at 0 (only an lr
below ``lr_min`` could make it negative). ``rho_t = 0`` is one plain pass (the base optimizer
exactly, since then ``g_p = g`` and ``g_perp = 0``); ``alpha = 0`` is SAM with the scheduled radius.

DDP: with a per-replica perturbation (default) both passes run without the gradient all-reduce,
each replica decomposes its own ``g``/``g_p``, and the final gradient is all-reduced once
(:meth:`optimizers.closure.StepClosure.all_reduce_grads`) - every replica then applies the same
update. ``sync_perturbation=True`` all-reduces both passes instead (= full-batch GSAM).
fp16: ``g`` is unscaled before the perturbation; ``g_p`` stays scaled and the combination is
formed in its units (the projection coefficient is scale invariant), so the scaler's single
unscale/inf check in :meth:`apply_update` sees the final gradient.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from optimizers import register_optimizer
from optimizers.base import preset
from optimizers.sam import SAM

_TINY = 1e-30


def _acc(t: torch.Tensor) -> torch.Tensor:
    return t.float() if t.dtype in (torch.float16, torch.bfloat16) else t


def _dot(a: list[torch.Tensor], b: list[torch.Tensor]) -> torch.Tensor:
    """``sum_i <a_i, b_i>`` as a 0-d tensor (one fused multiply, one concatenated sum; float32 at least)."""
    prods = torch._foreach_mul(a, b)
    return _acc(torch.cat([t.reshape(-1) for t in prods])).sum()


class GSAM(SAM):
    """Surrogate-gap guided SAM: descend along ``g_p - alpha g_perp`` with an lr-tied radius.

    ``rho_max``/``rho_min``: the radius at the largest/smallest lr of the schedule; ``alpha``: the
    ascent coefficient on ``g_perp``; ``p``, ``normalization``, ``eta``, ``exclude``: the geometry of
    the perturbation (:mod:`landscape.geometry`); ``sync_perturbation``: all-reduce both passes under
    DDP. Defaults: the paper's ResNet setting (Table 4: 0.04, 0.02, 0.01).
    """

    perturb_eps = 1e-12  # the paper's eps in rho g / (||g|| + eps)

    def __init__(
        self,
        params: Iterable[Any],
        *,
        base: str = "sgd",
        base_kwargs: dict[str, Any] | None = None,
        max_grad_norm: float | None = None,
        rho_max: float = 0.04,
        rho_min: float = 0.02,
        alpha: float = 0.01,
        p: float = 2.0,
        normalization: str = "none",
        eta: float = 0.0,
        exclude: str = "none",
        exempt: str = "1d",
        sync_perturbation: bool = False,
    ) -> None:
        if rho_min < 0 or rho_max < 0:
            raise ValueError(f"rho_max and rho_min must be >= 0, got {rho_max}, {rho_min}")
        super().__init__(params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm, rho=rho_max,
                         p=p, normalization=normalization, eta=eta, exclude=exclude, exempt=exempt,
                         sync_perturbation=sync_perturbation)
        self.rho_max, self.rho_min, self.alpha = float(rho_max), float(rho_min), float(alpha)
        self._lr0 = float(self.param_groups[0]["lr"])
        # Transient, between first_step and the decomposition: the first-pass gradient g (unscaled).
        self._g: list[torch.Tensor] | None = None
        self._g_params: list[torch.Tensor] = []  # the parameters g belongs to

    # -- the radius -----------------------------------------------------------------------
    def lr_range(self) -> tuple[float, float]:
        """``(lr_max, lr_min)`` of the schedule the radius follows (see the module docstring)."""
        group = self.param_groups[0]  # OneCycleLR's peak is max_lr (its initial_lr is max_lr / div_factor)
        lr_max = float(group.get("base_lr", group.get("max_lr", group.get("initial_lr", self._lr0))))
        return lr_max, lr_max * float(group.get("min_lr_factor", 0.0))

    def radius(self) -> float:
        """``rho_t = rho_min + (rho_max - rho_min) (lr - lr_min) / (lr_max - lr_min)`` (Algo. 1 step 0), within
        ``[0, rho_max]`` (an lr above the schedule's peak, set by hand or by a scheduler, does not raise it)."""
        lr = float(self.param_groups[0]["lr"])
        lr_max, lr_min = self.lr_range()
        if not lr_max > lr_min:
            return self.rho_max
        rho = self.rho_min + (self.rho_max - self.rho_min) * (lr - lr_min) / (lr_max - lr_min)
        return min(self.rho_max, max(0.0, rho))

    def perturbation(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """``rho_t T^2 g / (||T g|| + eps)`` (p = 2; Algo. 1 step 1a), ``rho_t T sgn(g)`` (p = inf)."""
        return self.geometry.ascent(grads, self.scaling(params, grads), self.radius(), eps=self.perturb_eps)

    # -- the step -------------------------------------------------------------------------
    def compute_gradients(self, closure: Callable[..., torch.Tensor]) -> torch.Tensor:
        if self.radius() == 0.0:  # g_p = g, g_perp = 0: the base optimizer
            with torch.enable_grad():
                return closure()
        per_replica = not self.sync_perturbation and self.alpha != 0.0
        with torch.enable_grad():
            loss = closure(sync=self.sync_perturbation)
        self.first_step(zero_grad=False)
        with torch.enable_grad():
            closure(sync=not per_replica, update_bn=False)
        self.restore()
        self.decompose()
        if per_replica:
            self.all_reduce_grads(closure)
        return loss

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        """``w <- w + e``; keeps ``g`` (the gradient tensors themselves, no copy) for the decomposition
        and detaches them from ``p.grad`` so that the next backward cannot accumulate into them (whatever
        ``zero_grad``)."""
        params = self.params_with_grad()
        super().first_step(zero_grad=False)
        self._g = [p.grad for p in params]
        self._g_params = params
        for p in params:
            p.grad = None

    @torch.no_grad()
    def decompose(self) -> None:
        """``p.grad <- g_p - alpha g_perp`` with ``g_perp = g - (g.g_p / ||g_p||^2) g_p`` (Algo. 1 steps 3-4)."""
        (g, self._g), (g_params, self._g_params) = (self._g, None), (self._g_params, [])
        if g is None:
            raise RuntimeError("decompose() without a preceding first_step()")
        if self.alpha == 0.0:
            return
        # by parameter, not position: a pass may leave some without a gradient (stochastic depth, routing);
        # a missing g or g_p is zero
        first = {id(p): gi for p, gi in zip(g_params, g)}
        params = list(g_params) + [p for p in self.params_with_grad() if id(p) not in first]
        for p in params:
            if p.grad is None:
                p.grad = torch.zeros_like(p)
        gp = [p.grad for p in params]
        g = [first[id(p)] if id(p) in first else torch.zeros_like(p) for p in params]
        gp_sq = _acc(torch.stack(torch._foreach_norm(gp))).square().sum()
        c = _dot(g, gp) / gp_sq.clamp_min(_TINY)  # scale invariant in g_p
        scale = self.loss_scale()
        k = self.alpha if scale is None else self.alpha * scale.to(gp[0].device, c.dtype).reshape(())
        # g_p - alpha S (g - c g_p) = (1 + alpha S c) g_p - alpha S g   (S = 1 without a scaler)
        coef = 1.0 + k * c
        torch._foreach_mul_(gp, coef.to(gp[0].dtype))
        if torch.is_tensor(k):
            torch._foreach_mul_(g, (-k).to(g[0].dtype))
            torch._foreach_add_(gp, g)
        else:
            torch._foreach_add_(gp, g, alpha=-k)

    def second_step(self, zero_grad: bool = False) -> bool:
        """Manual API: ``loss.backward(); first_step(); loss_at_w_plus_e.backward(); second_step()``."""
        self.restore()
        self.decompose()
        stepped = self.apply_update()
        if zero_grad:
            self.zero_grad()
        return stepped


ASAMAscent = preset(
    GSAM, "ASAMAscent",
    """ASAM+ascent (GSAM paper Sec. 6.5): GSAM whose perturbation is ASAM's (``T = |w| + eta`` element-wise,
    biases unscaled), with rho 10x GSAM's as the papers recommend for ASAM. The GSAM authors' code
    (github.com/juntang-zhuang/GSAM, ``gsam/gsam.py``, ``adaptive=True``) uses ``T = |w|`` on every tensor,
    biases included, without ``eta``: ``eta=0, exclude="none"`` here.""",
    rho_max=0.4, rho_min=0.2, normalization="element", eta=0.01, exclude="unscaled", exempt="bias")

register_optimizer("gsam")(GSAM)
register_optimizer("asam_ascent")(ASAMAscent)

__all__ = ["ASAMAscent", "GSAM"]
