"""RST: randomized sharpness-aware training (Zhao, Zhang, Hu, "Randomized Sharpness-Aware Training for
Boosting Computational Efficiency in Deep Learning", arXiv:2203.09962).

Each step is a Bernoulli trial: with probability ``p_t`` a SAM step (2 passes), otherwise an ERM step
(1 pass)::

    z_t ~ Bernoulli(p_t)
    w  <- base_update(w, grad L_B(w + e_t))   if z_t = 1   (e_t: SAM's ascent of radius rho)
    w  <- base_update(w, grad L_B(w))         if z_t = 0

with the scheduling function ``p_t`` (``prob_schedule``; ``T`` the run's total steps, set by the trainer):

* ``constant``: ``p_t = prob`` (LETS's baseline uses 0.5),
* ``linear``:   ``p_t = prob_start + (prob - prob_start) t / T``,
* ``cosine``:   ``p_t = prob + (prob_start - prob) (1 + cos(pi t / T)) / 2``.

Source and how far it goes. The paper (arXiv:2203.09962, first circulated as "SS-SAM: Stochastic
Scheduled Sharpness-Aware Minimization", Zhao, Zhang, Hu 2022) is not in the seeds and no code by the
authors was found. What is certain (the paper's abstract, its ICLR 2023 submission and AE-SAM's Sec. 1):
every step draws SAM or ERM by a Bernoulli trial whose probability follows a predefined scheduling
function, and the paper studies four kinds of them - constant, piecewise, linear and trigonometric
(as the SS-SAM preprint was reported). Here: constant (LETS's RST baseline uses ``p = 0.5``), linear and
cosine (a trigonometric one), parametrized by us; the piecewise kind, the paper's exact parametrizations
and its generalization G-RST are not implemented or checked.

The draws come from the optimizer's own generator (seeded by the trainer with the run's seed, saved in
``state_dict()``, one uniform per step whatever ``p_t``), so a resumed run draws the same sequence and
every DDP replica takes the same decision. ``prob = 0`` is the base optimizer exactly; ``prob = 1`` is SAM.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from optimizers import register_optimizer
from optimizers._family import FamilyState
from optimizers.sam import SAM

PROB_SCHEDULES = ("constant", "linear", "cosine")


class RST(FamilyState, SAM):
    """SAM with probability ``p_t``, else ERM; see the module docstring."""

    def __init__(
        self,
        params: Iterable[Any],
        *,
        base: str = "sgd",
        base_kwargs: dict[str, Any] | None = None,
        max_grad_norm: float | None = None,
        rho: float = 0.05,
        prob: float = 0.5,
        prob_schedule: str = "constant",
        prob_start: float = 0.0,
        p: float = 2.0,
        normalization: str = "none",
        eta: float = 0.0,
        exclude: str = "none",
        exempt: str = "1d",
        sync_perturbation: bool = False,
    ) -> None:
        if prob_schedule not in PROB_SCHEDULES:
            raise ValueError(f"prob_schedule must be one of {', '.join(PROB_SCHEDULES)}; got {prob_schedule!r}")
        if not (0.0 <= prob <= 1.0 and 0.0 <= prob_start <= 1.0):
            raise ValueError("prob and prob_start must be in [0, 1]")
        super().__init__(params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm, rho=rho, p=p,
                         normalization=normalization, eta=eta, exclude=exclude, exempt=exempt,
                         sync_perturbation=sync_perturbation)
        self.prob, self.prob_schedule, self.prob_start = float(prob), prob_schedule, float(prob_start)
        self._init_family()
        self.last_sam_step = False
        self.sam_steps = 0

    def sam_probability(self, t: int) -> float:
        """``p_t`` of the schedule at step ``t`` (0-based)."""
        if self.prob_schedule == "constant":
            return self.prob
        s = self.progress(t)
        if self.prob_schedule == "linear":
            return self.prob_start + (self.prob - self.prob_start) * s
        return self.prob + (self.prob_start - self.prob) * 0.5 * (1 + math.cos(math.pi * s))

    def compute_gradients(self, closure: Callable[..., torch.Tensor]) -> torch.Tensor:
        t = self._tick()
        draw = float(torch.rand((), generator=self.generator, dtype=torch.float64))
        self.last_sam_step = draw < self.sam_probability(t)
        if self.last_sam_step:
            self.sam_steps += 1
            return super().compute_gradients(closure)
        with torch.enable_grad():
            return closure()

    def extra_state(self) -> dict[str, Any]:
        return {**self.family_state(), "sam_steps": self.sam_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.load_family_state(state)
        self.sam_steps = int(state.get("sam_steps", 0))

    def metrics(self) -> dict[str, float]:
        return {"rho": self.rho, "sam_step": float(self.last_sam_step),
                "sam_fraction": self.sam_steps / max(1, self.t)}


register_optimizer("rst")(RST)

__all__ = ["RST"]
