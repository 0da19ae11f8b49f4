"""ESAM: efficient sharpness-aware minimization (Du, Yan, Feng, Zhou, Zhen, Goh, Tan, "Efficient
Sharpness-aware Minimization for Improved Training of Neural Networks", ICLR 2022, Alg. 1).

Two changes to SAM, both toward less computation:

* Stochastic weight perturbation (SWP, Sec. 3.1): each step every parameter tensor is perturbed with
  probability ``beta = swp_prob`` (an independent Bernoulli per tensor, as in the authors' code), and the
  perturbation of the selected set ``S`` is scaled by ``1 / beta`` so it is unbiased::

      e = (rho / beta) T^2 g_S / ||T g_S||,   g_S = g on the tensors of S, 0 elsewhere

  (the norm is over the selected tensors only: the unselected ones have no gradient in the authors'
  first pass).
* Sharpness-sensitive data selection (SDS, Sec. 3.2): the second pass uses only the
  ``ceil(gamma |B|)`` samples (``gamma = sds_fraction``) whose loss rises most under the perturbation,
  ``l_i(w + e) - l_i(w)``::

      w <- base_update(w, grad L_{B+}(w + e)),   B+ = top-ceil(gamma |B|) of l_i(w + e) - l_i(w)

Source: the paper (not in the seeds) and the authors' code, github.com/dydjw9/Efficient_SAM,
``utils/Esam.py``: ``ESAM.first_step`` (``scale = rho / (||g_S|| + 1e-7) / beta``, the norm over the
tensors that have a gradient), ``ESAM.second_step`` (after the update, each tensor stays out of the next
step's first backward with probability ``1 - beta``: ``random.random() > beta`` turns its
``requires_grad`` off) and ``ESAM.step`` (SDS: ``position = int(gamma |B|)``, keep ``l_after - l_before >
cutoff`` with ``cutoff`` the ``position``-th largest; ``l_before`` from the training forward pass).
Deviations from the authors' code, for exactness here: the ``ceil(gamma |B|)`` largest are kept
(their ``> cutoff`` keeps one fewer); the per-sample losses come from two no-grad forward passes
(:meth:`~optimizers.closure.StepClosure.per_sample_losses`, BatchNorm frozen), at ``w`` and ``w + e``,
rather than from the first training pass; the first pass computes every tensor's gradient and the mask
is applied afterwards (toggling ``requires_grad`` per step breaks DDP's reducer and recompiles
``torch.compile``d models), so SWP's backward saving is not realized; the mask of step ``t`` is drawn at
step ``t`` (theirs at the end of step ``t - 1``, so their first step perturbs every tensor). The mask comes
from the optimizer's own generator (seeded by the trainer, in ``state_dict()``), identical on every replica.
``swp_prob = sds_fraction = 1`` is SAM exactly; ``rho = 0`` with ``sds_fraction = 1`` is the base
optimizer exactly. Defaults ``beta = 0.6``, ``gamma = 0.5`` are the authors' CIFAR settings.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from optimizers import register_optimizer
from optimizers._family import FamilyState
from optimizers.sam import SAM


class ESAM(FamilyState, SAM):
    """SAM with stochastic weight perturbation and sharpness-sensitive data selection (module docstring)."""

    def __init__(
        self,
        params: Iterable[Any],
        *,
        base: str = "sgd",
        base_kwargs: dict[str, Any] | None = None,
        max_grad_norm: float | None = None,
        rho: float = 0.05,
        swp_prob: float = 0.6,
        sds_fraction: float = 0.5,
        p: float = 2.0,
        normalization: str = "none",
        eta: float = 0.0,
        exclude: str = "none",
        exempt: str = "1d",
        sync_perturbation: bool = False,
    ) -> None:
        if not 0.0 < swp_prob <= 1.0 or not 0.0 < sds_fraction <= 1.0:
            raise ValueError("swp_prob and sds_fraction must be in (0, 1]")
        super().__init__(params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm, rho=rho, p=p,
                         normalization=normalization, eta=eta, exclude=exclude, exempt=exempt,
                         sync_perturbation=sync_perturbation)
        self.swp_prob, self.sds_fraction = float(swp_prob), float(sds_fraction)
        self._init_family()
        self._selected: set[int] | None = None  # ids of the tensors perturbed this step
        self.last: dict[str, float] = {}

    def _draw_mask(self) -> None:
        params = [p for g in self.param_groups for p in g["params"]]
        u = torch.rand(len(params), generator=self.generator, dtype=torch.float64)
        self._selected = {id(p) for p, x in zip(params, u.tolist()) if x < self.swp_prob}

    def perturbation(self, params: list[torch.Tensor], grads: list[torch.Tensor]) -> list[torch.Tensor]:
        """``e = (rho / beta) * ascent`` over the tensors selected this step (the others stay put)."""
        scaling = self.scaling(params, grads)
        if self._selected is not None:
            scaling.active = [a and id(p) in self._selected for a, p in zip(scaling.active, params)]
        return self.geometry.ascent(grads, scaling, self.radius() / self.swp_prob)

    def compute_gradients(self, closure: Callable[..., torch.Tensor]) -> torch.Tensor:
        self._tick()
        self._draw_mask()
        sds = self.sds_fraction < 1.0
        if sds and not hasattr(closure, "per_sample_losses"):
            raise TypeError("ESAM's data selection needs a StepClosure (per_sample_losses); "
                            "use sds_fraction=1 with a plain closure")
        before = closure.per_sample_losses() if sds else None  # type: ignore[attr-defined]
        with torch.enable_grad():
            loss = closure(sync=self.sync_perturbation)
        self.first_step(zero_grad=False)
        try:
            if sds:
                sharpness = closure.per_sample_losses() - before  # type: ignore[attr-defined]
                k = math.ceil(self.sds_fraction * len(sharpness))
                idx = torch.topk(sharpness, k).indices.sort().values
                self.last = {"selected": float(k)}
                with torch.enable_grad(), closure.using_batch(closure.x[idx], closure.y[idx]):  # type: ignore
                    closure(update_bn=False)
            else:
                with torch.enable_grad():
                    closure(update_bn=False)
        finally:
            self._selected = None
        self.restore()
        return loss

    def extra_state(self) -> dict[str, Any]:
        return self.family_state()

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.load_family_state(state)

    def metrics(self) -> dict[str, float]:
        return {"rho": self.rho, **self.last}


register_optimizer("esam")(ESAM)

__all__ = ["ESAM"]
