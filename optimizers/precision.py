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

MAX_DEVIATION = 0.5  # the sharpness part must stay at least twice the rounding noise of the update
AMP_CHOICES = ("auto", "none", "bf16", "fp16")

# method: why reduced precision swamps its update. The bf16 (fp16) deviation is the median of 3 seeds of
# benchmarks/bench_amp.py (a BatchNorm CNN, CPU autocast) at the method's default hyper-parameters.
FULL_PRECISION: dict[str, str] = {
    "ga_sam": "its rho 1e-4 ascent leaves a sharpness part below bf16 rounding (deviation 0.69 bf16, 0.36 fp16)",
    "gnr": "its gradient-norm term H g drowns in bf16 rounding (deviation 1.5 bf16, 0.56 fp16 with the exact "
           "H g; 1.6 and 1.1 by forward, 1.5 and 0.85 by central differences)",
    "layer_sam": "its rho 1e-5 layer-wise perturbation is below bf16 rounding (deviation 2.7 bf16, 0.91 fp16)",
    "multistep_defense": "its rho 2e-5 ascent is below bf16 rounding (deviation 5.3 bf16, 1.7 fp16)",
}
# Under MAX_DEVIATION in bf16 at their defaults (sam, ae_sam, lets_sam, looksam 0.28; gsam 0.35; rst 0.32;
# asam, lets_asam 0.07; asam_ascent 0.08; esam 0.02), or no gradient difference at all (sgd, adamw). The
# deviation grows as the radius shrinks (about 1 / rho): at half its default rho sam passes MAX_DEVIATION.
REDUCED_PRECISION_OK: frozenset[str] = frozenset({
    "sgd", "adamw", "sam", "asam", "ae_sam", "asam_ascent", "esam", "gsam", "lets_sam", "lets_asam", "looksam",
    "rst"})


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
