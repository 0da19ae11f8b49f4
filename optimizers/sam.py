"""SAM and ASAM: descend with the gradient at the worst nearby point.

SAM (Foret et al. 2021) and ASAM (Kwon et al. 2021, Sec. 4 and Alg. 1)::

    e_t     = argmax_{||T^{-1} e||_p <= rho} e . g_t            (landscape.geometry.Geometry.ascent)
            = rho T^2 g_t / ||T g_t||_2                          (p = 2)
    w_{t+1} = base_update(w_t, grad L_B(w_t + e_t))

with ``T = 1`` for SAM and ``T = |w| + eta`` (element) or the filter-wise operator for ASAM.

Sources. SAM: Foret et al., ICLR 2021, eqs. 2-3 and Alg. 1. ASAM: Kwon et al., ICML 2021 (asam.txt),
Sec. 4, eq. 7 and Alg. 1, with the element-wise/filter-wise ``T`` of Sec. 3 (eq. 5; ``T + eta I`` for
stability), and Sec. 3: "diagonal elements of T_w corresponding to biases must be replaced by constants",
i.e. ``T = 1`` on biases only, the setting of all their experiments ("not to employ bias normalization",
Sec. 5.2). The authors' code (github.com/SamsungLabs/ASAM, ``asam.py``, ``ASAM.ascent_step``) scales
every parameter whose name contains ``weight`` - BatchNorm/LayerNorm scales included - and nothing
else; on standard layers that is the paper's rule. ``exempt`` says which tensors ``exclude`` acts on:
``"bias"`` (ASAM's default: tensors whose name's last component ends in ``bias``; needs the parameter
names, i.e. ``model.named_parameters()``, which the trainer passes; given bare tensors it falls back to
``"1d"`` with a warning) or ``"1d"`` (every tensor with at most one dimension: biases *and*
normalization-layer scales, this project's earlier rule). With a LayerNorm the two differ (one float64
step of the LayerNorm toy in the tests by 2.3e-4).

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

import warnings
from typing import Any, Callable, Iterable

import torch

from landscape.geometry import Geometry, Scaling
from optimizers import register_optimizer
from optimizers.base import ClosureOptimizer, preset

EXEMPT = ("1d", "bias")


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
        exempt: str = "1d",
        sync_perturbation: bool = False,
    ) -> None:
        if rho < 0:
            raise ValueError(f"rho must be >= 0, got {rho}")
        if exempt not in EXEMPT:
            raise ValueError(f"exempt must be one of {', '.join(EXEMPT)}; got {exempt!r}")
        super().__init__(params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm)
        self.rho = float(rho)
        self.geometry = Geometry(p=p, normalization=normalization, eta=eta, exclude=exclude)
        self.exempt = exempt
        # parameter names (given model.named_parameters()), by tensor identity
        self.param_names: dict[int, str] = {id(q): n for g in self.param_groups
                                            for q, n in zip(g["params"], g.get("param_names", ()))}
        if exempt == "bias" and exclude != "none" and len(self.param_names) < sum(len(g["params"])
                                                                                 for g in self.param_groups):
            warnings.warn(f"{type(self).__name__}: parameter names unknown (pass model.named_parameters()); "
                          "exempting every tensor with at most one dimension, normalization-layer scales "
                          "included, instead of the biases only", stacklevel=2)
        self.sync_perturbation = bool(sync_perturbation)
        # Transient, between first_step and restore only: the perturbed tensors and their values.
        self._saved: tuple[list[torch.Tensor], list[torch.Tensor]] | None = None
        self._first_inf: torch.Tensor | None = None

    def add_param_group(self, param_group: dict[str, Any]) -> None:
        """Names work as at construction: ``(name, tensor)`` pairs (``model.named_parameters()``) or a
        ``param_names`` list give the new tensors their names (ASAM's ``exempt="bias"``, GA-SAM's modules)."""
        super().add_param_group(param_group)
        if hasattr(self, "param_names"):  # not while the constructor adds the first groups
            self.param_names.update(zip(map(id, param_group["params"]), param_group.get("param_names", ())))

    # -- the step -----------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[..., torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        self._first_inf = None  # the overflow flag is per step
        return super().step(closure)

    def compute_gradients(self, closure: Callable[..., torch.Tensor]) -> torch.Tensor:
        with torch.enable_grad():
            loss = closure(sync=self.sync_perturbation)
        self.first_step(zero_grad=False)  # the closure zeroes the gradients itself
        with torch.enable_grad():
            closure(update_bn=False)
        self.restore()
        return loss

    def radius(self) -> float | torch.Tensor:
        """The radius ``rho`` of this step (GSAM ties it to the lr, LETS learns it)."""
        return self.rho

    def scaling(self, params: list[torch.Tensor], grads: list[torch.Tensor] | None) -> Scaling:
        """``T`` at ``params`` (the geometry's operator, with this optimizer's exempt tensors and groups)."""
        return self.geometry.scaling(params, grads, exempt=self.exempt_mask(params), groups=self.groups(params))

    def exempt_mask(self, params: list[torch.Tensor]) -> list[bool] | None:
        """Which tensors ``exclude`` acts on; ``None``: the geometry's default (at most one dimension)."""
        if self.exempt != "bias" or self.geometry.exclude == "none" or not self.param_names:
            return None
        names = self.param_names
        return [n.rsplit(".", 1)[-1].endswith("bias") if (n := names.get(id(q))) is not None else q.dim() <= 1
                for q in params]

    def groups(self, params: list[torch.Tensor]) -> list[int] | None:
        """Group ids of the layer-wise operators; ``None``: one group per tensor (GA-SAM overrides)."""
        return None

    def perturbation(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """``e = argmax_{||T^{-1} e||_p <= rho} e . g`` at the current weights."""
        return self.geometry.ascent(grads, self.scaling(params, grads), self.radius())

    @torch.no_grad()
    def first_step(self, zero_grad: bool = True) -> None:
        """``w <- w + e(w, g)`` with ``g`` the gradient now in ``p.grad``; ``zero_grad``: then clear ``p.grad``, so
        that the manual API's second backward gives the gradient at ``w + e`` alone."""
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
        grads = [torch.zeros_like(p) if p.grad is None else p.grad for p in params]  # none this pass: zeros
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
    """Adaptive SAM (Kwon et al. 2021): ``T = |w| + eta`` element-wise (or filter-wise), biases unscaled
    (Sec. 3; ``exempt="1d"`` also leaves normalization-layer scales unscaled), ``rho = 0.5`` (the paper's
    CIFAR-10 setting).""",
    rho=0.5, normalization="element", eta=0.01, exclude="unscaled", exempt="bias")

register_optimizer("sam")(SAM)
register_optimizer("asam")(ASAM)

__all__ = ["ASAM", "EXEMPT", "SAM", "copy_of"]
