"""GA-SAM (Zhang et al. 2022, Sec. 3.3 and Algo. 1), its ablations, Layer-SAM and the multi-step defense.

GA-SAM minimizes the loss averaged over ``K + 1`` points of a multi-step ascent (eq. 14)::

    T_i  = sqrt(n_i) / (||g_i||_2 sqrt(n))           from g_0 = grad L(w), once per step (eq. 13)
    a_0  = 0
    u_k  = argmax_{||T^{-1} u||_p <= eta} u . g_{k-1}  (eq. 15; eta = 1.5 rho / K)
    a_k  = Pi_S(a_{k-1} + u_k),  S = {||T^{-1} a||_p <= rho}   (eqs. 16-18)
    g_k  = grad L(w + a_k)                             k = 1..K
    w   <- base_update(w, (1 / (K + 1)) sum_{k=0..K} g_k)

The paper's radius ``epsilon`` is ``rho`` here (the one name the whole family uses for the radius
of the ball, so ``--rho`` means the same for every method); ``ascent_steps`` is ``K`` and
``step_size`` is ``eta`` (default ``1.5 rho / K``; ``eta`` is ASAM's stability term elsewhere).

Ablations (Table 2), all as options of the same class:

* ``single_step=True``: minimize ``L(w + a_K)`` only (the gradient at the last point; with
  ``K = 1`` that is SAM's step in GA-SAM's geometry),
* ``normalization``: ``gradient`` (eq. 13, default), ``gradient_element`` (element-wise),
  ``gradient_model`` (model-wise), ``none`` (T = 1), ``weight_gradient`` (``||w_i||/||g_i||``),
  ``inverse_gradient`` (``1/||g_i||``), ``layer_rms`` (``||w_i||/sqrt(n_i)``), ``layer`` with
  ``eta=0`` (``||w_i||``); see :mod:`landscape.geometry`,
* ``start_epoch``: plain base-optimizer steps before that epoch (App. C.2: 30 for Transformers).

Registered configurations (their own defaults, the paper's IMDB settings of App. C.2.1):

* ``ga_sam``: ``p = inf``, ``rho = 1e-4``, ``K = 1``, T of eq. 13;
* ``multistep_defense`` (Zhang et al. 2021): GA-SAM with ``T = 1``: ``p = inf``, ``rho = 2e-5``, ``K = 1``;
* ``layer_sam`` (Liu et al. 2022): single-step SAM with ``T_i = ||w_i||_2 / ||g_i||_2``: ``p = 2``,
  ``rho = 1e-5`` (a :class:`optimizers.sam.SAM` configuration).

Source: Zhang, Luo, Su, Sun, "GA-SAM: Gradient-Strength based Adaptive Sharpness-Aware Minimization for
Improved Generalization", EMNLP 2022 (ga-sam.txt): eqs. 13-18 and Algo. 1; settings of App. C.2. No code
by the authors was found. Two readings the paper leaves open:

* *what a layer is.* Eq. 13's groups are general ("``l`` is the layer number when layer-wise", Sec. 2.1);
  the paper never says whether a layer's bias shares its weight's ``T_i``, and its Fig. 5 calls a whole
  Transformer block a layer. ``grouping="tensor"`` (default: each parameter tensor its own group, as
  layer-wise rules usually act, e.g. LAMB) or ``"module"`` (the tensors of one module - a Linear's weight
  and bias - together: ``||g_i||`` over both, ``n_i`` their total size; needs
  ``model.named_parameters()``, which the trainer passes). On the LayerNorm MLP of the tests one step
  at rho = 0.05 differs by 1.8e-3 between the two (5.6e-6 at rho = 1e-4).
* *when T is computed.* Algo. 1 writes "Calculate T" (line 2) above the ``while Training`` loop, but
  ``T`` depends on ``g``, and Sec. 5.5 / Figs. 4-5 argue from gradient strengths that change over training;
  here ``T`` is recomputed from ``g_0`` at every step and held through its ``K`` ascent steps.

Layer-SAM (Liu, Mai, Chen, Hsieh, You 2021, "Sharpness-aware minimization in large-batch training") is
implemented as GA-SAM describes it (Secs. 3.1, 4.2, App. C.2: single step, ``T_i = ||w_i|| / ||g_i||``,
``L_2`` ball); the original paper was not read. The multi-step defense (Zhang et al. 2021) likewise.

BatchNorm statistics are updated by the pass at ``w`` only. ``K = 0`` or ``rho = 0`` (or an epoch
before ``start_epoch``) is one plain pass: the base optimizer exactly. Under DDP the passes run
without the all-reduce (each replica attacks its own shard) and the mean gradient is all-reduced
once; ``sync_perturbation=True`` all-reduces every pass (= full-batch GA-SAM). fp16: every pass is
unscaled (and checked for inf/NaN) before it is used; the final gradient is put back in the
scaler's units (a multiplication by a power of two, exact) for the single unscale in
:meth:`apply_update`.
"""
from __future__ import annotations

import warnings
from typing import Any, Callable, Iterable

import torch

from optimizers import register_optimizer
from optimizers.base import preset
from optimizers.sam import SAM, copy_of

GROUPINGS = ("tensor", "module")


class GASAM(SAM):
    """Multi-step SAM with gradient-strength scales (GA-SAM) and its ablations; see the module docstring.

    ``rho``: the radius (the paper's epsilon); ``ascent_steps``: K; ``step_size``: eta (``None``:
    ``1.5 rho / K``); ``p``: 2 or inf; ``normalization``/``eta``/``exclude``: the operator T;
    ``single_step``: the single-step ablation; ``start_epoch``: first epoch with perturbations;
    ``sync_perturbation``: all-reduce every pass under DDP.
    """

    def __init__(
        self,
        params: Iterable[Any],
        *,
        base: str = "sgd",
        base_kwargs: dict[str, Any] | None = None,
        max_grad_norm: float | None = None,
        rho: float = 1e-4,
        ascent_steps: int = 1,
        step_size: float | None = None,
        p: float = float("inf"),
        normalization: str = "gradient",
        eta: float = 0.0,
        exclude: str = "none",
        exempt: str = "1d",
        single_step: bool = False,
        start_epoch: int = 0,
        grouping: str = "tensor",
        sync_perturbation: bool = False,
    ) -> None:
        if grouping not in GROUPINGS:
            raise ValueError(f"grouping must be one of {', '.join(GROUPINGS)}; got {grouping!r}")
        if int(ascent_steps) != ascent_steps or ascent_steps < 0:
            raise ValueError(f"ascent_steps must be an integer >= 0, got {ascent_steps}")
        if step_size is not None and step_size < 0:
            raise ValueError(f"step_size must be >= 0, got {step_size}")
        super().__init__(params, base=base, base_kwargs=base_kwargs, max_grad_norm=max_grad_norm, rho=rho, p=p,
                         normalization=normalization, eta=eta, exclude=exclude, exempt=exempt,
                         sync_perturbation=sync_perturbation)
        if float(self.geometry.p) not in (2.0, float("inf")):
            raise ValueError(f"GA-SAM projects onto L2 or Linf balls (eqs. 17-18); p must be 2 or inf, got {p}")
        self.ascent_steps = int(ascent_steps)
        self.step_size = None if step_size is None else float(step_size)
        self.single_step = bool(single_step)
        self.start_epoch = int(start_epoch)
        self.grouping = grouping
        if grouping == "module" and len(self.param_names) < sum(len(g["params"]) for g in self.param_groups):
            warnings.warn(f"{type(self).__name__}: grouping='module' needs parameter names (pass "
                          "model.named_parameters()); one group per tensor instead", stacklevel=2)

    def groups(self, params: list[torch.Tensor]) -> list[int] | None:
        """``grouping="module"``: one group per module (the parameter name without its last component),
        so a layer's weight and bias share ``T_i``; ``"tensor"``: ``None``, each tensor its own group."""
        if self.grouping != "module" or not self.param_names:
            return None
        ids: dict[str, int] = {}
        out = []
        for i, q in enumerate(params):
            name = self.param_names.get(id(q))
            out.append(ids.setdefault(name.rsplit(".", 1)[0], len(ids)) if name is not None else -1 - i)
        return out

    def eta_step(self) -> float:
        """The ascent step size ``eta`` (``1.5 rho / K`` unless ``step_size`` is given)."""
        if self.step_size is not None:
            return self.step_size
        return 1.5 * self.rho / max(1, self.ascent_steps)

    def active(self) -> bool:
        """Whether this step perturbs at all (K > 0, rho > 0, past the start epoch)."""
        return self.ascent_steps > 0 and self.rho > 0 and self.epoch >= self.start_epoch

    # -- the step -------------------------------------------------------------------------
    @torch.no_grad()
    def compute_gradients(self, closure: Callable[..., torch.Tensor]) -> torch.Tensor:
        if not self.active():
            with torch.enable_grad():
                return closure()
        sync = self.sync_perturbation
        with torch.enable_grad():
            loss = closure(sync=sync)  # g_0 at w; BatchNorm statistics updated here only
        params = self.params_with_grad()
        grads = self.unscaled_grads(params)  # g_0, true units
        scaling = self.scaling(params, grads)  # T from g_0, once per step (Algo. 1 line 2)
        origin = copy_of(params)
        self._saved = (params, origin)
        # the running mean starts as a copy of g_0 (a closure zeroing p.grad in place must not reach it)
        mean = None if self.single_step else [g.clone() for g in grads]
        a: list[torch.Tensor] = []
        eta, rho = self.eta_step(), self.radius()
        for k in range(1, self.ascent_steps + 1):
            if k == 1:  # a_1 = Pi_S(u_1) = u_1 min(1, rho / eta): the ascent step of radius min(eta, rho)
                a = self.geometry.ascent(grads, scaling, min(eta, rho))
            else:
                u = self.geometry.ascent(grads, scaling, eta)  # eq. 15, from g_{k-1}
                torch._foreach_add_(u, a)
                a = self.geometry.project(u, scaling, rho)  # eqs. 16-18
                torch._foreach_copy_(params, origin)
            torch._foreach_add_(params, a)  # w + a_k
            self._poison_on_overflow(params)
            with torch.enable_grad():
                closure(sync=sync, update_bn=False)  # g_k at w + a_k
            grads = self.unscaled_grads(params)
            if mean is not None:  # mean_k = mean_{k-1} + (g_k - mean_{k-1}) / (k + 1)
                torch._foreach_lerp_(mean, grads, 1.0 / (k + 1))
        final = grads if mean is None else mean
        scale = self.loss_scale()
        if scale is not None:  # back to the scaler's units (scale is a power of two: exact)
            torch._foreach_mul_(final, scale.to(final[0].device, final[0].dtype).reshape(()))
        for p, g in zip(params, final):
            p.grad = g
        self.restore()  # the weights back, bit-exactly; an overflow in any pass poisons the gradient
        if not sync:
            self.all_reduce_grads(closure)
        return loss

    def first_step(self, zero_grad: bool = False) -> None:
        raise NotImplementedError(f"{type(self).__name__} takes K + 1 passes per step: use step(closure)")

    def metrics(self) -> dict[str, float]:
        return {"rho": self.rho if self.active() else 0.0}


MultistepDefense = preset(
    GASAM, "MultistepDefense",
    """Multi-step adversarial parameter defense (Zhang et al. 2021): GA-SAM with ``T = 1``.""",
    rho=2e-5, normalization="none")

LayerSAM = preset(
    SAM, "LayerSAM",
    """Layer-SAM (Liu et al. 2022, as in GA-SAM's Table 1): single-step SAM with layer-wise
    ``T_i = ||w_i||_2 / ||g_i||_2`` (``normalization="weight_gradient"``).""",
    rho=1e-5, normalization="weight_gradient")

register_optimizer("ga_sam")(GASAM)
register_optimizer("multistep_defense")(MultistepDefense)
register_optimizer("layer_sam")(LayerSAM)

__all__ = ["GASAM", "LayerSAM", "MultistepDefense"]
