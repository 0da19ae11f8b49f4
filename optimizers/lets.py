"""LETS-SAM and LETS-ASAM: learn the perturbation radius by bilevel optimization (Wang, Jiang, Fu, Zhang,
"Enhancing Sharpness-Aware Minimization by Learning Perturbation Radius", arXiv:2408.08222;
lets.txt in the seeds, Alg. 1, eqs. 2-5 and 8).

Source and how far it goes. lets.txt lost every formula in extraction (the equation numbers and the prose
around them survive); no code by the authors is public (searched: GitHub, the paper's pages). What the
text fixes: ``rho = exp(beta)`` with ``beta`` unconstrained (Sec. 4.1); the upper objective is the squared
generalization gap (Sec. 3.1, Table 6), ``(1/2)(L_V - L_B)^2`` as public summaries of the paper quote
it (sciencestack.ai, themoonlight.io; the factor only rescales the hypergradient, which Adam undoes);
``beta`` is learned by Adam with an "exponential learning rate scheduler" and initial lr 1e-4 (Sec. 4.1,
Tables 10-12; the decay factor is not legible there, ``beta_lr_decay`` is ours);
validation batches are sampled from the training set (Sec. 4.1, following [34]); ``w+`` is one SAM step
(eq. 4) or one ASAM step (eq. 8); and eq. 5 replaces the Hessian in ``dw+/drho`` by "a first-order
derivative", following Bottou et al. (2018) and Khan et al. (2018, Vadam). The notation section introduces
``diag(.)`` and the elementwise square of a vector, and Vadam's approximation is the *diagonal*
``H ~ diag(g * g)``; so the default here is the diagonal reading (``lets_hessian="diag"``). The earlier
rank-one reading ``H ~ g_hat g_hat^T`` (Gauss-Newton with one gradient) is kept as ``lets_hessian="outer"``.
Either way this is a reconstruction: the formula of eq. 5 itself could not be read.

Lower level (the model; eqs. 4 and 8)::

    g      = grad L_B(w)
    u      = g / ||g||                        LETS-SAM
           = T^2 g / ||T g||                   LETS-ASAM  (Geometry.ascent with radius 1, T = |w| + eta)
    g_hat  = grad L_B(w + rho u)
    w+     = base_update(w, g_hat)            (the step actually taken; SGD: w+ = w - lr g_hat)

Upper level (the radius), at ``w+``::

    F         = (L_V(w+) - L_B(w+))^2 / 2     the squared generalization gap (Sec. 3.1)
    dF/drho   = Delta (grad L_V(w+) - grad L_B(w+))^T dw+/drho,   Delta = L_V(w+) - L_B(w+)
    dw+/drho  = -lr H(w + rho u) u
              ~ -lr g_hat * g_hat * u                 (diag:  H ~ diag(g_hat * g_hat), eq. 5)
              ~ -lr g_hat (g_hat^T u)                 (outer: H ~ g_hat g_hat^T)
    dF/dbeta  = rho dF/drho
    beta     <- Adam(beta, dF/dbeta),  lr_beta(t) = beta_lr * beta_lr_decay^t

(``*`` is the elementwise product.) ``lr`` is each parameter group's current learning rate, and the
``g_hat`` multiplying ``-lr`` is the gradient the base optimizer used (after clipping), the others the
gradient at ``w + rho u``. With AdamW as the base, ``-lr g_hat`` is the same first-order stand-in for
``dw+/dg_hat`` (the paper trains ViT with Adam the same way). Per step: the two SAM passes plus two
passes at ``w+`` (``B_t`` and ``V_t``), all with BatchNorm statistics frozen but the first. Under DDP
the SAM part is as :class:`~optimizers.sam.SAM`; the passes at ``w+`` are per replica and the four
scalars ``L_V, L_B, (grad L_V - grad L_B)^T v, g_hat^T u`` are averaged over ranks in one small
all-reduce, so ``beta`` stays identical everywhere. ``rho`` (and ``beta``, the hypergradient and the gap)
are in :meth:`metrics`, which the trainer writes to the step log every step. ``rho = 0`` is
``beta = -inf``: the base optimizer exactly, forever. ``lets_hessian="diag"`` holds one extra
parameter-sized buffer (``g_hat * u``) from the SAM step to the hyper step.

Manual API: ``first_step()`` / ``second_step()`` as SAM, then ``hyper_step(closure)`` for the radius.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from landscape import distributed as D
from optimizers import register_optimizer
from optimizers._family import FamilyState, dot
from optimizers.base import preset
from optimizers.sam import SAM

ADAM_BETAS, ADAM_EPS = (0.9, 0.999), 1e-8
HESSIANS = ("diag", "outer")


class LETSSAM(FamilyState, SAM):
    """SAM whose radius ``rho = exp(beta)`` minimizes the squared train/validation gap; see the module."""

    def __init__(
        self,
        params: Iterable[Any],
        *,
        base: str = "sgd",
        base_kwargs: dict[str, Any] | None = None,
        max_grad_norm: float | None = None,
        rho: float = 0.05,
        beta_lr: float = 1e-4,
        beta_lr_decay: float = 0.99999,
        val_fraction: float = 0.1,
        lets_hessian: str = "diag",
        p: float = 2.0,
        normalization: str = "none",
        eta: float = 0.0,
        exclude: str = "none",
        exempt: str = "1d",
        sync_perturbation: bool = False,
    ) -> None:
        if not 0.0 <= val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
        if lets_hessian not in HESSIANS:
            raise ValueError(f"lets_hessian must be one of {', '.join(HESSIANS)}; got {lets_hessian!r}")
        if beta_lr < 0 or not 0.0 < beta_lr_decay <= 1.0:
            raise ValueError("beta_lr must be >= 0 and beta_lr_decay in (0, 1]")
        super().__init__(params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm, rho=rho, p=p,
                         normalization=normalization, eta=eta, exclude=exclude, exempt=exempt,
                         sync_perturbation=sync_perturbation)
        self.beta = math.log(rho) if rho > 0 else -math.inf
        self.beta_lr, self.beta_lr_decay = float(beta_lr), float(beta_lr_decay)
        self.lets_hessian = lets_hessian
        self.validation_fraction = float(val_fraction)  # the trainer holds this much of the training set out
        self.adam_m, self.adam_v, self.adam_t = 0.0, 0.0, 0
        self.last: dict[str, float] = {}
        self._init_family()
        self._u: list[torch.Tensor] | None = None  # transient: the unit ascent direction of this step
        # transient, from restore() to hyper_step(): g_hat^T u, and g_hat * u by tensor (diag only), unscaled
        self._ghat_u: torch.Tensor | None = None
        self._ghat_u_elem: dict[int, torch.Tensor] = {}

    # -- lower level: SAM with rho = exp(beta) ----------------------------------------------
    def radius(self) -> float:
        return math.exp(self.beta)

    def perturbation(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """``e = rho u`` with ``u`` the ascent of radius 1 (kept until :meth:`restore` for ``g_hat^T u``)."""
        u = self.geometry.ascent(grads, self.scaling(params, grads), 1.0)
        self._u = u
        return list(torch._foreach_mul(u, self.radius()))

    @torch.no_grad()
    def restore(self) -> None:
        """Record ``g_hat * u`` elementwise (``g_hat`` the gradient now in ``p.grad``, unscaled), then
        restore ``w``."""
        if self._saved is not None and self._u is not None:
            params = self._saved[0]
            grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]
            prod = torch._foreach_mul(grads, self._u)
            scale = self.scale_tensor(prod[0].device) if prod else None
            if scale is not None:
                torch._foreach_div_(prod, scale)
            acc = torch.float64 if prod and prod[0].dtype == torch.float64 else torch.float32
            self._ghat_u = torch.stack([v.sum(dtype=acc) for v in prod]).sum() if prod else torch.zeros(())
            self._ghat_u_elem = {id(q): v for q, v in zip(params, prod)} if self.lets_hessian == "diag" else {}
        self._u = None
        super().restore()

    # -- upper level: the radius ----------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        if closure is not None and not hasattr(closure, "validation"):
            raise TypeError(f"{type(self).__name__} learns its radius on a validation batch: it needs a StepClosure "
                            "with set_validation_batch (closure.validation())")
        loss = super().step(closure)  # the lower level: a SAM step with rho = exp(beta)
        self.hyper_step(closure)  # leaves beta alone if an overflow skipped the update (no w+ to learn from)
        return loss

    @torch.no_grad()
    def hyper_step(self, closure: Any) -> float:
        """One Adam step on ``beta`` at ``w+`` (call after the model update); returns ``dF/dbeta`` (0 and beta
        left alone if the update was skipped: the flag is read with the four scalars, one host read)."""
        t = self._tick()
        ghat_u = self._ghat_u
        self._ghat_u = None
        if ghat_u is None:
            raise RuntimeError("hyper_step() needs the SAM step of this iteration first")
        prod, self._ghat_u_elem = self._ghat_u_elem, {}
        groups = [(g["lr"], [p for p in g["params"] if p.grad is not None]) for g in self.param_groups]
        ghat = [(lr, [p.grad for p in ps], ps) for lr, ps in groups]  # the update gradient, as the base used it
        if self.lets_hessian == "diag":  # dw+/drho ~ -lr g_hat * g_hat * u: the vector paired with the gap gradient
            ghat = [(lr, [g * prod[id(p)] if id(p) in prod else torch.zeros_like(g) for g, p in zip(gh, ps)], ps)
                    for lr, gh, ps in ghat]
        with torch.enable_grad():
            loss_b = closure(sync=False, update_bn=False)
        grad_b = [[self._grad(p) for p in ps] for _, _, ps in ghat]
        with torch.enable_grad(), closure.validation():
            loss_v = closure(sync=False, update_bn=False)
        scale = self.scale_tensor(loss_b.device)
        # sum_groups lr (grad L_V - grad L_B)^T v, v = g_hat (outer) or g_hat * g_hat * u (diag)
        d_ghat = sum(lr * dot(list(torch._foreach_sub([self._grad(p) for p in ps], gb)), gh)
                     for (lr, gh, ps), gb in zip(ghat, grad_b))
        if scale is not None:
            d_ghat = d_ghat / scale.to(d_ghat.device)
        # float64 on the CPU (MPS has none); all_reduce_sum moves it where the backend takes it
        stats = torch.stack([torch.as_tensor(x).detach().reshape(()).cpu().double()
                             for x in (loss_v, loss_b, d_ghat, ghat_u, self.last_skip)])
        if D.is_distributed():
            stats = D.all_reduce_sum(stats) / D.world_size()
        lv, lb, dg, gu, skipped = stats.tolist()  # the one host read of a LETS step: beta lives on the host
        if skipped:
            return 0.0
        gap = lv - lb
        rho = self.radius()
        # F = (L_V - L_B)^2 / 2: dF/drho = gap (grad L_V - grad L_B)^T dw+/drho
        dfdrho = gap * (-gu * dg) if self.lets_hessian == "outer" else gap * (-dg)
        dfdbeta = rho * dfdrho
        self.last = {"val_gap": gap, "hypergrad": dfdbeta}
        if not all(math.isfinite(v) for v in (gap, dfdbeta)):
            return dfdbeta  # an overflow in these passes: leave beta alone
        b1, b2 = ADAM_BETAS
        self.adam_t += 1
        self.adam_m = b1 * self.adam_m + (1 - b1) * dfdbeta
        self.adam_v = b2 * self.adam_v + (1 - b2) * dfdbeta * dfdbeta
        m_hat = self.adam_m / (1 - b1 ** self.adam_t)
        v_hat = self.adam_v / (1 - b2 ** self.adam_t)
        lr_beta = self.beta_lr * self.beta_lr_decay ** t
        self.beta -= lr_beta * m_hat / (math.sqrt(v_hat) + ADAM_EPS)
        return dfdbeta

    @staticmethod
    def _grad(p: torch.Tensor) -> torch.Tensor:
        return torch.zeros_like(p) if p.grad is None else p.grad

    # -- state, metrics --------------------------------------------------------------------------
    def extra_state(self) -> dict[str, Any]:
        return {"beta": self.beta, "adam_m": self.adam_m, "adam_v": self.adam_v, "adam_t": self.adam_t,
                "last": dict(self.last), **self.family_state()}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.beta = float(state["beta"])
        self.adam_m, self.adam_v = float(state["adam_m"]), float(state["adam_v"])
        self.adam_t = int(state["adam_t"])
        self.last = dict(state.get("last", {}))
        self.load_family_state(state)

    def metrics(self) -> dict[str, float]:
        out = {"rho": self.radius(), **self.last}
        if math.isfinite(self.beta):
            out["beta"] = self.beta
        return out


LETSASAM = preset(
    LETSSAM, "LETSASAM",
    """LETS on ASAM (lets.txt Sec. 3.3): ``u = T^2 g / ||T g||``, ``T = |w| + eta`` on weights, 1 on biases;
    initial ``rho = 0.5`` (ASAM's CIFAR setting), ``eta = 0.01``.""",
    rho=0.5, normalization="element", eta=0.01, exclude="unscaled", exempt="bias")

register_optimizer("lets_sam")(LETSSAM)
register_optimizer("lets_asam")(LETSASAM)

__all__ = ["LETSASAM", "LETSSAM"]
