"""GNR: the gradient norm regularizer (gnr.txt, "Gradient norm regularizer seeks flat minima and
improves generalization").

The regularized objective (Sec. 2.2, eqs. 1 and 4) is
``L_overall(w) = L_oracle(w) + alpha R(w)`` with ``R(w) = rho max_{w' in B(w, rho)} ||grad L_B(w')||``,
and Algorithm 1 takes, on batch ``B`` (``H(w)`` the Hessian of the batch loss ``L_B``)::

    h_loss = grad L_oracle(w)                                          (line 5)
    f      = H(w) g / ||g||,               g = grad L_B(w)             (line 6; eq. 6: f = grad ||grad L_B||)
    w_adv  = w + rho f / ||f||                                         (line 7; eq. 5)
    h_norm = rho H(w_adv) g_adv / ||g_adv||, g_adv = grad L_B(w_adv)   (line 8)
    w     <- base_update(w, h_loss + alpha h_norm)                      (line 9, with the base optimizer)

* ``hvp="exact"``: ``H v`` by double backward
  (:meth:`optimizers.closure.StepClosure.gradient_and_hvp`): two passes per step, each one forward,
  one backward with graph and one double backward.
* ``hvp="forward"`` / ``"central"``: the finite-difference variant without second derivatives,
  ``H(x) u ~ (grad L_B(x + r u) - grad L_B(x)) / r`` or ``(grad L_B(x + r u) - grad L_B(x - r u)) / 2r``
  with ``u`` the unit gradient and ``r = fd_radius``: 4 (forward) or 6 (central) plain passes.
* ``oracle`` (Sec. 2, "L_oracle ... the empirical loss, with weight decay, or the SAM loss"):
  ``"loss"``: ``h_loss = g``; ``"weight_decay"``: ``h_loss = g + oracle_decay w`` (an explicit L2 term
  in the oracle, on top of whatever ``--weight-decay`` the base optimizer applies);
  ``"sam"``: ``h_loss = grad L_B(w + e)``, ``e`` the ascent of radius ``oracle_rho`` (SAM+GNR, one more pass).
* ``gnr_fraction`` (Sec. 3.5, Table 4): GNR on a fraction of the iterations only, evenly spread — step ``t``
  (0-based) is a GNR step iff ``floor((t+1) f) > floor(t f)``; the other steps use
  ``h_loss`` alone (plain base optimizer, or SAM for the SAM oracle). The paper pairs small fractions
  with a larger ``alpha``.

The ascent ``w_adv`` (and SAM's ``e``) is :meth:`landscape.geometry.Geometry.ascent` of the configured
geometry (Euclidean by default, as in the paper); Algorithm 1's small constant ``xi`` in
``||.|| + xi`` is the geometry's floor: norms are ``max(||.||, 1e-12)``. With ``rho = 0``, ``alpha = 0``
or ``gnr_fraction = 0`` the update is the oracle's alone (the base optimizer exactly, for the plain oracle).

Data parallel: every pass of a GNR step is per replica and the update ``h_loss + alpha h_norm`` is
all-reduced once. The exact HVP runs the eager model (``torch.compile`` and DDP's reducer support no
double backward); the finite-difference variant runs the closure like any other optimizer. BatchNorm
statistics move in the first pass only. fp16: every piece is unscaled before a norm is taken and the
final gradient is handed to the scaler rescaled, so an overflow anywhere skips the step.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from optimizers import register_optimizer
from optimizers._family import FamilyState, unit
from optimizers.sam import SAM, copy_of

ORACLES = ("loss", "weight_decay", "sam")
HVPS = ("exact", "forward", "central")


class GNR(FamilyState, SAM):
    """Gradient norm regularization (Algorithm 1) over a base optimizer; see the module docstring."""

    def __init__(
        self,
        params: Iterable[Any],
        *,
        base: str = "sgd",
        base_kwargs: dict[str, Any] | None = None,
        max_grad_norm: float | None = None,
        rho: float = 0.1,
        alpha: float = 0.1,
        oracle: str = "loss",
        oracle_rho: float = 0.05,
        oracle_decay: float = 5e-4,
        hvp: str = "exact",
        fd_radius: float = 0.01,
        gnr_fraction: float = 1.0,
        p: float = 2.0,
        normalization: str = "none",
        eta: float = 0.0,
        exclude: str = "none",
        exempt: str = "1d",
    ) -> None:
        if oracle not in ORACLES:
            raise ValueError(f"oracle must be one of {', '.join(ORACLES)}; got {oracle!r}")
        if hvp not in HVPS:
            raise ValueError(f"hvp must be one of {', '.join(HVPS)}; got {hvp!r}")
        if not 0.0 <= gnr_fraction <= 1.0:
            raise ValueError(f"gnr_fraction must be in [0, 1], got {gnr_fraction}")
        if alpha < 0 or oracle_rho < 0 or fd_radius <= 0:
            raise ValueError("alpha and oracle_rho must be >= 0 and fd_radius > 0")
        super().__init__(params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm, rho=rho, p=p,
                         normalization=normalization, eta=eta, exclude=exclude, exempt=exempt)
        self.alpha, self.oracle, self.oracle_rho = float(alpha), oracle, float(oracle_rho)
        self.oracle_decay, self.hvp, self.fd_radius = float(oracle_decay), hvp, float(fd_radius)
        self.fraction = float(gnr_fraction)
        self._init_family()
        self.last_gnr_step = False
        self._unused: set[int] = set()  # ids of the parameters this step's loss did not reach

    # -- which steps ----------------------------------------------------------------------
    def is_gnr_step(self, t: int) -> bool:
        """Step ``t`` (0-based) regularizes iff ``floor((t+1) f) > floor(t f)`` (evenly spread)."""
        if self.fraction >= 1.0:
            return True
        return int((t + 1) * self.fraction) > int(t * self.fraction)

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"] if p.requires_grad]

    def _scale(self) -> torch.Tensor | None:
        """The fp16 loss scale (a 0-d tensor: never read on the host), ``None`` without a scaler."""
        return self.scale_tensor(self._params()[0].device) if self._params() else None

    def _grads(self, params: list[torch.Tensor], scale: torch.Tensor | None) -> list[torch.Tensor]:
        """Unscaled gradients of the last closure pass (zeros for a parameter without one)."""
        out = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in params]  # a closure may zero
        return list(torch._foreach_div(out, scale)) if scale is not None else out  # p.grad in place

    def _ascent(self, params: list[torch.Tensor], direction: list[torch.Tensor], radius: float) -> list[torch.Tensor]:
        return self.geometry.ascent(direction, self.scaling(params, direction), radius)

    @staticmethod
    def _place(params: list[torch.Tensor], origin: list[torch.Tensor], *moves: list[torch.Tensor]) -> None:
        """``params <- origin + sum(moves)``."""
        torch._foreach_copy_(params, origin)
        for m in moves:
            torch._foreach_add_(params, m)

    # -- the step -------------------------------------------------------------------------
    def compute_gradients(self, closure: Callable[..., torch.Tensor]) -> torch.Tensor:
        t = self._tick()
        self.last_gnr_step = self.is_gnr_step(t)
        if not self.last_gnr_step:
            return self._oracle_step(closure)
        params = self._params()
        scale = self._scale()
        origin = copy_of(params)  # released at the end of the step
        try:
            if self.hvp == "exact":
                loss, g, h_norm = self._exact(closure, params, origin)
            else:
                loss, g, h_norm = self._finite_difference(closure, params, origin, scale)
            h_loss = self._oracle_gradient(closure, params, origin, g, scale)
        finally:
            with torch.no_grad():
                torch._foreach_copy_(params, origin)
        final = list(torch._foreach_add(h_loss, h_norm, alpha=self.alpha))
        if scale is not None:  # the wrapper's update_weights unscales (and checks for inf) once
            torch._foreach_mul_(final, scale)
        for p, f in zip(params, final):  # a parameter the loss did not use this step is not updated
            p.grad = None if id(p) in self._unused else f.detach().to(p.dtype)
        self.all_reduce_grads(closure)  # the update, once
        return loss

    def _exact(self, closure: Any, params: list[torch.Tensor], origin: list[torch.Tensor]):
        if not hasattr(closure, "gradient_and_hvp"):
            raise TypeError("GNR with hvp='exact' needs a StepClosure (gradient_and_hvp); "
                            "use hvp='forward' or 'central' with a plain closure")
        loss, g, f = closure.gradient_and_hvp(unit, params=params, update_bn=True)  # f = H g / ||g||
        self._unused = {id(p) for p in getattr(closure, "unused", ())}
        with torch.no_grad():
            self._place(params, origin, self._ascent(params, f, self.rho))  # w_adv = w + rho f / ||f||
        _, _, hn = closure.gradient_and_hvp(unit, params=params, update_bn=False)  # H_adv g_adv / ||g_adv||
        return loss, g, list(torch._foreach_mul(hn, self.rho))

    def _fd_hvp(self, closure: Any, params: list[torch.Tensor], origin: list[torch.Tensor], at: list[torch.Tensor],
                g: list[torch.Tensor], scale: torch.Tensor | None) -> list[torch.Tensor]:
        """``H(x) u``, ``u = g / ||g||``, by finite differences at ``x = origin + sum(at)``."""
        step = list(torch._foreach_mul(unit(g), self.fd_radius))
        with torch.no_grad():
            self._place(params, origin, *at, step)
        with torch.enable_grad():
            closure(sync=False, update_bn=False)
        plus = self._grads(params, scale)
        if self.hvp == "forward":
            return list(torch._foreach_div(torch._foreach_sub(plus, g), self.fd_radius))
        with torch.no_grad():
            self._place(params, origin, *at, list(torch._foreach_neg(step)))
        with torch.enable_grad():
            closure(sync=False, update_bn=False)
        minus = self._grads(params, scale)
        return list(torch._foreach_div(torch._foreach_sub(plus, minus), 2 * self.fd_radius))

    def _finite_difference(self, closure: Any, params: list[torch.Tensor], origin: list[torch.Tensor],
                           scale: torch.Tensor | None):
        with torch.enable_grad():
            loss = closure(sync=False)
        self._unused = {id(p) for p in params if p.grad is None}
        g = self._grads(params, scale)
        f = self._fd_hvp(closure, params, origin, [], g, scale)
        with torch.no_grad():
            e = self._ascent(params, f, self.rho)
            self._place(params, origin, e)
        with torch.enable_grad():
            closure(sync=False, update_bn=False)
        g_adv = self._grads(params, scale)
        hn = self._fd_hvp(closure, params, origin, [e], g_adv, scale)
        return loss, g, list(torch._foreach_mul(hn, self.rho))

    def _oracle_gradient(self, closure: Any, params: list[torch.Tensor], origin: list[torch.Tensor],
                         g: list[torch.Tensor], scale: torch.Tensor | None) -> list[torch.Tensor]:
        if self.oracle == "loss":
            return g
        if self.oracle == "weight_decay":
            return list(torch._foreach_add(g, origin, alpha=self.oracle_decay))
        with torch.no_grad():
            self._place(params, origin, self._ascent(params, g, self.oracle_rho))
        with torch.enable_grad():
            closure(sync=False, update_bn=False)
        return self._grads(params, scale)

    def _oracle_step(self, closure: Callable[..., torch.Tensor]) -> torch.Tensor:
        """A step without the regularizer: the oracle's gradient alone, all-reduced by the last pass."""
        if self.oracle != "sam":
            with torch.enable_grad():
                loss = closure()
            if self.oracle == "weight_decay" and self.oracle_decay:
                scale = self._scale()
                with torch.no_grad():
                    for p in self._params():
                        if p.grad is None:
                            continue
                        if scale is None:
                            p.grad.add_(p.detach(), alpha=self.oracle_decay)
                        else:  # in the scaler's units
                            p.grad.add_(p.detach() * (scale.to(p.dtype) * self.oracle_decay))
            return loss
        with torch.enable_grad():
            loss = closure(sync=False)
        params = self.params_with_grad()
        grads = self.unscaled_grads(params)
        with torch.no_grad():  # SAM.first_step with the oracle's radius
            e = self._ascent(params, grads, self.oracle_rho)
            self._saved = (params, copy_of(params))
            torch._foreach_add_(params, e)
            self._poison_on_overflow(params)  # a replica's fp16 overflow reaches every replica
        with torch.enable_grad():
            closure(update_bn=False)
        self.restore()
        return loss

    # -- manual API, state, metrics ---------------------------------------------------------
    def first_step(self, zero_grad: bool = False) -> None:
        raise NotImplementedError("GNR needs Hessian-vector products: use step(closure)")

    def extra_state(self) -> dict[str, Any]:
        return self.family_state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.load_family_state(state)

    def metrics(self) -> dict[str, float]:
        return {"rho": self.rho, "gnr_step": float(self.last_gnr_step)}


register_optimizer("gnr")(GNR)

__all__ = ["GNR"]
