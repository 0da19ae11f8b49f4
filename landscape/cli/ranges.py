"""The accepted range of every numeric command-line option, checked once, as the command line is parsed.

:func:`constrain` wraps the ``type`` of each numeric option of a parser: the value must be finite
(no ``nan``/``inf``; ``--sharpness-p inf`` is text, not a number) and lie in :data:`RANGES` under the
option's dest name; an integer option not listed there must be >= 0. A value outside gives argparse's
one-line error naming the flag, the value and the accepted range, before any work starts. The
``landscape analyze`` options are constrained where they are declared
(:func:`landscape.analysis.add_arguments`), so study files get the same checks as the command line.
"""
from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any, Callable


@dataclass(frozen=True)
class Range:
    """``lo <= v`` (``lo < v`` if ``lo_open``) and ``v <= hi`` (``v < hi`` if ``hi_open``); ``off``: 0 is
    accepted too (it means "none"/"skip")."""

    lo: float | None = None
    lo_open: bool = False
    hi: float | None = None
    hi_open: bool = False
    off: bool = False

    def __contains__(self, v: float) -> bool:
        if self.off and v == 0:
            return True
        if self.lo is not None and (v <= self.lo if self.lo_open else v < self.lo):
            return False
        return self.hi is None or (v < self.hi if self.hi_open else v <= self.hi)

    def text(self) -> str:
        if self.lo is not None and self.hi is not None:
            out = f"in {'(' if self.lo_open else '['}{_num(self.lo)}, {_num(self.hi)}{')' if self.hi_open else ']'}"
        elif self.lo is not None:
            out = f"{'>' if self.lo_open else '>='} {_num(self.lo)}"
        elif self.hi is not None:
            out = f"{'<' if self.hi_open else '<='} {_num(self.hi)}"
        else:
            out = "finite"
        return f"0 or {out}" if self.off else out


def _num(v: float) -> str:
    return "2**32" if v == 2**32 else f"{v:g}"


POSITIVE = Range(0.0, lo_open=True)
NONNEGATIVE = Range(0)
AT_LEAST_ONE = Range(1)
FRACTION = Range(0.0, hi=1.0)
SEED = Range(0, hi=2**32, hi_open=True)

RANGES: dict[str, Range] = {
    # counts that must be at least one
    **{k: AT_LEAST_ONE for k in (
        "batch_size", "subset", "workers", "epochs", "max_iter", "density_runs", "density_steps",
        "grad_batch_size", "sharpness_batch_size", "sharpness_max_batches", "gnr_steps", "gap_steps", "extrema_steps",
        "pac_bayes_samples", "pac_bayes_iterations", "per_unit", "levels", "trace_rank")},
    # grid points: a curve or a surface needs two along each axis (0: none, where the help says so)
    "xpoints": Range(2), "ypoints": Range(2), "interp_points": Range(2),
    "curve_points": Range(2, off=True), "landscape_points": Range(2, off=True),
    "landscape_curve_points": Range(2, off=True),
    "seed": SEED,
    # positive reals
    **{k: POSITIVE for k in (
        "tol", "eig_tol", "density_sigma", "extrema_step", "finetune_lr", "sharpness_step_size", "gnr_step_size",
        "landscape_range", "pac_bayes_tol", "pac_bayes_eps")},
    **{k: NONNEGATIVE for k in ("trace_rtol", "sharpness_eta", "adaptive_eta", "corruption_eta")},
    "threads": NONNEGATIVE,  # 0: torch's default (one per core); demo and study check their own (>= 1)
    "finetune_momentum": Range(0.0, hi=1.0, hi_open=True),
    "min_train_acc": FRACTION,
    "pac_bayes_deviation": Range(0.0, lo_open=True, hi=1.0),
}
"""Ranges by dest name; an int option not listed: >= 0; a float option not listed: any finite value."""

PAIRS = ("xrange", "yrange", "interp_range", "range")
"""Options of two numbers ``LO HI`` that must satisfy ``LO < HI``."""


def check_value(value: Any, dest: str, integer: bool) -> str | None:
    """Why ``value`` (a number, or a list of numbers from a comma-separated option) is not accepted for option
    ``dest``, or None. Text (``"inf"`` of a norm) is not checked here."""
    values = value if isinstance(value, (list, tuple)) else [value]
    rng = RANGES.get(dest, NONNEGATIVE if integer else None)
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if not math.isfinite(v):
            return "must be a finite number" + (f" {rng.text()}" if rng is not None else "")
        if rng is not None and v not in rng:
            return f"must be {'an integer ' if integer else ''}{rng.text()}"
    return None


def checked(convert: Callable[[str], Any], dest: str) -> Callable[[str], Any]:
    """``convert`` followed by :func:`check_value`, failing with an ``ArgumentTypeError`` (argparse's one-line
    ``argument --flag: ...``)."""
    integer = convert is int

    def parse(text: str) -> Any:
        value = convert(text)
        why = check_value(value, dest, integer)
        if why is not None:
            raise argparse.ArgumentTypeError(f"{why}, got {text!r}")
        return value

    parse.__name__ = getattr(convert, "__name__", "value")  # argparse's "invalid int value: 'x'"
    parse.checked = True  # type: ignore[attr-defined]
    return parse


def constrain(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Wrap the type of every numeric option of ``parser`` (not of its sub-commands) with :func:`checked`."""
    for action in parser._actions:
        t = action.type
        if t is None or getattr(t, "checked", False) or isinstance(t, type) and t not in (int, float):
            continue  # text, paths, or already checked
        if t is str:
            continue
        action.type = checked(t, action.dest)
    return parser


def check_pairs(args: argparse.Namespace) -> str | None:
    """Why a ``LO HI`` option (:data:`PAIRS`) of ``args`` is not ordered, or None."""
    for dest in PAIRS:
        pair = getattr(args, dest, None)
        if isinstance(pair, (list, tuple)) and len(pair) == 2 and not pair[0] < pair[1]:
            return f"argument --{dest.replace('_', '-')}: LO must be below HI, got {pair[0]:g} {pair[1]:g}"
    return None
