"""AE-SAM: an adaptive policy to employ SAM (Jiang, Yang, Zhang, Kwok, "An Adaptive Policy to Employ
Sharpness-Aware Minimization", ICLR 2023, Alg. 1).

SAM only where the landscape looks sharp, judged by the squared stochastic gradient norm against its
running mean and variance (exponential moving averages with decay ``delta = ema_decay``)::

    s_t       = ||grad L_B(w_t)||^2
    mu_t      = delta mu_{t-1} + (1 - delta) s_t                  (mu_0 = 0)
    sigma_t^2 = delta sigma_{t-1}^2 + (1 - delta) (s_t - mu_t)^2  (sigma_0 = 0)
    c_t       = c_start + (c_end - c_start) t / T                  (linear; the paper's lambda_2 -> lambda_1)
    SAM step (2 passes) if s_t >= mu_t + c_t sigma_t, else ERM (1 pass)

``T`` is the run's total number of steps (set by the trainer). Defaults ``delta = 0.9``,
``c_start = 1``, ``c_end = -1``: SAM is rare early (above one standard deviation) and frequent late
(above mean minus one), about half of the steps overall for Gaussian ``s_t``.

Source and how far it goes. The paper is not in the seeds and no code by the authors was found
(searched GitHub and the paper's pages). The structure above - the squared stochastic gradient norm as
the sharpness signal, its mean and variance tracked by exponential moving averages with forgetting rate
``delta``, SAM iff ``s_t >= mu_t + c_t sigma_t``, ``c_t`` linear in ``t / T`` between the paper's
``lambda_2`` (start) and ``lambda_1`` (end) - matches the paper's introduction (arXiv:2304.14647, Sec. 1
and 3) and public summaries of its Alg. 1; the exact update order (``mu_t`` before ``sigma_t``, ``sigma_t``
around the new ``mu_t``), the zero initial EMAs and the defaults ``delta = 0.9``, ``lambda_1 = -1``,
``lambda_2 = 1`` are from our reading of the paper and could not be re-checked here. The gradient is
all-reduced before ``s_t`` is taken, so every DDP replica decides alike; the EMAs are float64 scalars
in ``state_dict()``. An inf/NaN ``s_t`` (fp16 overflow) leaves the EMAs alone and the step is skipped.
``rho = 0`` (or ``c_start = c_end = inf``) is the base optimizer exactly.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Iterable

import torch

from optimizers import register_optimizer
from optimizers._family import FamilyState, sq_norm
from optimizers.sam import SAM


class AESAM(FamilyState, SAM):
    """SAM when ``||g||^2 >= mu + c_t sigma``, else ERM; see the module docstring."""

    def __init__(
        self,
        params: Iterable[Any],
        *,
        base: str = "sgd",
        base_kwargs: dict[str, Any] | None = None,
        max_grad_norm: float | None = None,
        rho: float = 0.05,
        ema_decay: float = 0.9,
        c_start: float = 1.0,
        c_end: float = -1.0,
        p: float = 2.0,
        normalization: str = "none",
        eta: float = 0.0,
        exclude: str = "none",
        exempt: str = "1d",
    ) -> None:
        if not 0.0 <= ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1), got {ema_decay}")
        super().__init__(params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm, rho=rho, p=p,
                         normalization=normalization, eta=eta, exclude=exclude, exempt=exempt, sync_perturbation=True)
        self.ema_decay, self.c_start, self.c_end = float(ema_decay), float(c_start), float(c_end)
        self.mu, self.var = 0.0, 0.0
        self._init_family()
        self.last: dict[str, float] = {}
        self.sam_steps = 0

    def threshold_coefficient(self, t: int) -> float:
        """``c_t``, linear from ``c_start`` (t = 0) to ``c_end`` (t = T)."""
        if self.c_start == self.c_end:
            return self.c_start
        return self.c_start + (self.c_end - self.c_start) * self.progress(t)

    def compute_gradients(self, closure: Callable[..., torch.Tensor]) -> torch.Tensor:
        t = self._tick()
        with torch.enable_grad():
            loss = closure()
        grads = [p.grad for p in self.params_with_grad()]
        sq = sq_norm(grads)
        scale = self.scale_tensor(sq.device)
        s = float(sq if scale is None else sq / scale.to(sq.dtype).square())  # the step's one host read
        c = self.threshold_coefficient(t)
        use_sam = False
        if math.isfinite(s):
            d = self.ema_decay
            self.mu = d * self.mu + (1 - d) * s
            self.var = d * self.var + (1 - d) * (s - self.mu) ** 2
            use_sam = s >= self.mu + c * math.sqrt(self.var)
        self.last = {"grad_sq_norm": s, "mu": self.mu, "sigma": math.sqrt(self.var), "c": c,
                     "sam_step": float(use_sam)}
        if use_sam:
            self.sam_steps += 1
            self.first_step(zero_grad=False)
            with torch.enable_grad():
                closure(update_bn=False)
            self.restore()
        return loss

    def extra_state(self) -> dict[str, Any]:
        return {**self.family_state(), "mu": self.mu, "var": self.var, "sam_steps": self.sam_steps}

    def load_extra_state(self, state: dict[str, Any]) -> None:
        self.load_family_state(state)
        self.mu, self.var = float(state["mu"]), float(state["var"])
        self.sam_steps = int(state.get("sam_steps", 0))

    def metrics(self) -> dict[str, float]:
        return {"rho": self.rho, **self.last, "sam_fraction": self.sam_steps / max(1, self.t)}


register_optimizer("ae_sam")(AESAM)

__all__ = ["AESAM"]
