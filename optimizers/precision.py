"""Mixed precision per method: what ``amp="auto"`` means for each optimizer.

A sharpness-aware update is the plain gradient plus a sharpness part, a difference of gradients (or losses)
at points a radius apart: ``g(w + e) - g(w)``. Autocast rounds every matmul/conv input to bf16 (8 bits of
mantissa) or fp16 (11), so each gradient carries a rounding error of order ``2^-8 |g|`` in bf16, and where
the radius is small the sharpness part drowns in it. ``benchmarks/bench_amp.py`` measures, for each method
at its default hyper-parameters, ``||u_bf16 - u_fp32|| / ||u_fp32 - g||`` (``u`` the update, ``g`` the
plain fp32 gradient; CPU autocast emulates CUDA's): methods where it exceeds :data:`MAX_DEVIATION` are
listed in :data:`FULL_PRECISION`, and ``amp="auto"`` trains them in float32 (with TF32 off on CUDA: TF32
keeps 10 bits of mantissa, as fp16 does). An explicit ``bf16``/``fp16`` is honoured with a warning.
"""
from __future__ import annotations

import warnings

MAX_DEVIATION = 0.1  # the sharpness part must stay at least ten times the rounding noise of the update
AMP_CHOICES = ("auto", "none", "bf16", "fp16")

# method: why reduced precision swamps its update. The bf16 (fp16) deviation is the worst of 3-7 seeds of
# benchmarks/bench_amp.py (a BatchNorm CNN, CPU autocast) at the method's default hyper-parameters. The error
# is the bf16 rounding of the gradient at the perturbed point itself (SAM: 0.27-0.31 with the perturbation
# taken from an exact float32 gradient, 0.28-0.32 in bf16; the perturbation and the final gradient are float32
# tensors already), so no float32 arithmetic around the passes removes it: only float32 passes do.
_SAM_ROUNDING = "bf16 rounding of the perturbed gradient is {bf16} of its sharpness part ({fp16} in fp16)"
FULL_PRECISION: dict[str, str] = {
    "sam": _SAM_ROUNDING.format(bf16="0.32", fp16="0.14"),
    "ae_sam": _SAM_ROUNDING.format(bf16="0.32", fp16="0.14"),
    "lets_sam": _SAM_ROUNDING.format(bf16="0.32", fp16="0.14"),
    "looksam": _SAM_ROUNDING.format(bf16="0.32", fp16="0.14"),
    "rst": _SAM_ROUNDING.format(bf16="0.32", fp16="0.14"),
    "gsam": _SAM_ROUNDING.format(bf16="0.39", fp16="0.14"),
    "esam": "its data selection ranks per-sample loss increases that bf16 reorders (deviation up to 0.45 bf16)",
    "ga_sam": "its rho 1e-4 ascent leaves a sharpness part below bf16 rounding (deviation 0.73 bf16, 0.38 fp16)",
    "gnr": "its gradient-norm term H g drowns in bf16 rounding (deviation 1.7 bf16, 0.59 fp16 with the exact "
           "H g; 1.9 and 1.1 by forward, 1.7 and 0.96 by central differences)",
    "layer_sam": "its rho 1e-5 layer-wise perturbation is below bf16 rounding (deviation 2.9 bf16, 1.1 fp16)",
    "multistep_defense": "its rho 2e-5 ascent is below bf16 rounding (deviation 6.1 bf16, 1.8 fp16)",
}
# Under MAX_DEVIATION in bf16 at their defaults, worst of 7 seeds (asam, lets_asam 0.077; asam_ascent 0.097:
# ASAM's radius is 10x SAM's), or no gradient difference at all (sgd, adamw). The deviation grows as the
# radius shrinks (about 1 / rho).
REDUCED_PRECISION_OK: frozenset[str] = frozenset({"sgd", "adamw", "asam", "asam_ascent", "lets_asam"})


def resolve_amp(requested: str, device_type: str, optimizer: str) -> tuple[str, str | None]:
    """``(amp, note)``: ``amp`` in none/bf16/fp16 for ``optimizer`` on ``device_type``; ``note`` says why
    ``auto`` chose float32 for a method that is CUDA's bf16 default otherwise (``None`` if nothing to say).

    ``auto`` is bf16 on CUDA except for the methods in :data:`FULL_PRECISION`, and none elsewhere."""
    if requested not in AMP_CHOICES:
        raise ValueError(f"amp must be auto, none, bf16 or fp16, got {requested!r}")
    reason = FULL_PRECISION.get(optimizer)
    if requested == "auto":
        if device_type != "cuda":
            return "none", None
        if reason is None:
            return "bf16", None
        return "none", f"amp auto: {optimizer} trains in float32 (TF32 off): {reason}; --amp bf16 forces it"
    if requested in ("bf16", "fp16") and reason is not None:
        warnings.warn(f"--amp {requested} with {optimizer}: {reason}", stacklevel=2)
    return requested, None
