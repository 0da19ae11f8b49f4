"""SAM and ASAM: descend with the gradient at the worst nearby point.

SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021, eq. 3 and Sec. 4)::

    e_t     = argmax_{||T^{-1} e||_p <= rho} e . g_t            (landscape.geometry.Geometry.ascent)
            = rho T^2 g_t / ||T g_t||_2                          (p = 2)
    w_{t+1} = base_update(w_t, grad L_B(w_t + e_t))

with ``T = 1`` for SAM and ``T = |w| + eta`` (element) or the filter-wise operator for ASAM.
:class:`SAM` is also the base of the family: subclasses change the radius
(:meth:`SAM.radius`), the perturbation (:meth:`SAM.perturbation`) or the step itself
(:meth:`SAM.compute_gradients`).

One step, driven by the trainer's :class:`~optimizers.closure.StepClosure`:

1. ``closure(sync=sync_perturbation)``: ``g = grad L_B(w)``; BatchNorm statistics are updated here
   only. Under DDP the perturbation is per replica by default (no all-reduce on this pass);
   ``sync_perturbation=True`` all-reduces ``g`` first.
2. :meth:`SAM.first_step`: ``w <- w + e`` (the original weights are kept until step 4 only).
3. ``closure(update_bn=False)``: ``grad L_B(w + e)``, all-reduced once.
4. :meth:`SAM.restore` puts the original weights back (bit-exactly); the wrapper clips the
   gradient of step 3 and steps the base optimizer with it.

Mixed precision: with an fp16 loss scaler the first-pass gradient is unscaled before any norm
is taken; an inf/NaN in it makes the whole step skip (the scaler backs off) exactly like an
overflow in the final gradient. Under DDP with a per-replica perturbation only the replica that
overflowed sees it, so its perturbed weights are poisoned with a NaN: its second-pass gradient is
NaN and the all-reduce carries the overflow to every replica, which all skip together. bf16
autocast needs no scaler.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import torch

from landscape.geometry import Geometry, Scaling
from optimizers import register_optimizer
from optimizers.base import ClosureOptimizer, preset


def copy_of(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Bit-exact copies (fresh storage, one fused copy kernel)."""
    out = [torch.empty_like(t) for t in tensors]
    if out:
        torch._foreach_copy_(out, [t.detach() for t in tensors])
    return out


class SAM(ClosureOptimizer):
    """Sharpness-aware minimization over the ball ``{||T^{-1} e||_p <= rho}``.

    ``p``: 2 or ``inf``; ``normalization``, ``eta``, ``exclude``: the operator ``T`` (see
    :mod:`landscape.geometry`); ``sync_perturbation``: all-reduce the ascent gradient under DDP.
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        base: str = "sgd",
        base_kwargs: dict[str, Any] | None = None,
        max_grad_norm: float | None = None,
        rho: float = 0.05,
        p: float = 2.0,
        normalization: str = "none",
        eta: float = 0.0,
        exclude: str = "none",
        sync_perturbation: bool = False,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        super().__init__(params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm)
        self.rho = float(rho)
        self.geometry = Geometry(p=p, normalization=normalization, eta=eta, exclude=exclude)
        self.sync_perturbation = bool(sync_perturbation)
        # Transient, between first_step and restore only: the perturbed tensors and their values.
        self._saved: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._first_inf: torch.Tensor | None = None

    # -- the step -----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        self._first_inf = None  # the overflow flag is per step
        return super().step(closure)

    def compute_gradients(self, closure: Callable[..., torch.Tensor]) -> torch.Tensor:
        with torch.enable_grad():
            loss = closure(sync=self.sync_perturbation)
        self.first_step()
        with torch.enable_grad():
            closure(update_bn=False)
        self.restore()
        return loss

    def radius(self) -> float | torch.Tensor:
        """The radius ``rho`` of this step (GSAM ties it to the lr, LETS learns it)."""
        return self.rho

    def perturbation(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """``e = argmax_{||T^{-1} e||_p <= rho} e . g`` at the current weights."""
        scaling: Scaling = self.geometry.scaling(params, grads)
        return self.geometry.ascent(grads, scaling, self.radius())

    @torch.no_grad()
    def first_step(self, zero_grad: bool = False) -> None:
        """``w <- w + e(w, g)`` with ``g`` the gradient now in ``p.grad``."""
        params = self.params_with_grad()
        grads = self.unscaled_grads(params)
        e = self.perturbation(params, grads)
        self._saved = (params, copy_of(params))
        torch._foreach_add_(params, e)
        self._poison_on_overflow(params)
        if zero_grad:
            self.zero_grad()

    def _poison_on_overflow(self, params: list[torch.Tensor]) -> None:
        """A NaN in one perturbed weight if an earlier pass overflowed (fp16), so that the next pass's
        gradient is NaN on this replica and, after the all-reduce, on all of them (no host sync)."""
        if self._first_inf is not None and params:
            flag = torch.where(self._first_inf > 0, float("nan"), 0.0)
            params[0].view(-1)[:1].add_(flag.to(params[0].device, params[0].dtype))

    @torch.no_grad()
    def restore(self) -> None:
        """Put back the weights ``first_step`` perturbed (bit-exactly) and release the copy."""
        if self._saved is None:
            raise RuntimeError("restore() without a preceding first_step()")
        params, originals = self._saved
        torch._foreach_copy_(params, originals)
        self._saved = None
        if self._first_inf is not None:  # an overflow in the first pass skips the whole step
            for p in self.params_with_grad()[:1]:
                p.grad.view(-1)[:1].add_(torch.where(self._first_inf > 0, float("inf"), 0.0).to(p.grad.dtype))
            self._first_inf = None

    def second_step(self, zero_grad: bool = False) -> bool:
        """Manual API (``loss.backward(); first_step(); loss2.backward(); second_step()``):
        restore ``w`` and apply the update with the gradient now in ``p.grad``."""
        self.restore()
        stepped = self.apply_update()
        if zero_grad:
            self.zero_grad()
        return stepped

    def unscaled_grads(self, params: list[torch.Tensor]) -> list[torch.Tensor]:
        """``p.grad`` of ``params``, divided in place by the fp16 loss scale (with inf/NaN detection:
        an overflow in any pass before the final one skips the step, see :meth:`restore`)."""
        grads = [p.grad for p in params]
        scale = self.loss_scale()  # the live scale tensor (no host sync)
        if scale is not None and grads:
            if self._first_inf is None:  # one flag for every pass of the step
                self._first_inf = torch.zeros(1, device=grads[0].device)
            wide = scale.double() if scale.device.type != "mps" else scale  # MPS has no float64
            inv = wide.reciprocal().float().to(grads[0].device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, self._first_inf, inv)
        return grads

    def metrics(self) -> dict[str, float]:
        r = self.radius()
        return {"rho": float(r)}


ASAM = preset(
    SAM, "ASAM",
    """Adaptive SAM (Kwon et al. 2021): ``T = |w| + eta`` element-wise (or filter-wise), biases and
    normalization weights unscaled, ``rho = 0.5`` (the paper's CIFAR-10 setting).""",
    rho=0.5, normalization="element", eta=0.01, exclude="unscaled")

register_optimizer("sam")(SAM)
register_optimizer("asam")(ASAM)

__all__ = ["ASAM", "SAM", "copy_of"]
