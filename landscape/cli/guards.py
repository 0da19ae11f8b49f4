"""Checks of a command's inputs before any work: non-finite weights, output paths, the device."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_nonfinite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="measure a checkpoint even if a weight is NaN or infinite (refused by default)")


def second_checkpoint(obj: Any, path: Any, args: argparse.Namespace) -> tuple[Any, dict[str, Any]]:
    """:func:`~landscape.landscapes.directions.checkpoint_vector` of another checkpoint, read as the first one is
    (``--strip-prefix``, then :func:`check_weights`)."""
    from landscape.checkpoint import load_checkpoint
    from landscape.landscapes.directions import checkpoint_vector

    ckpt = load_checkpoint(path, allow_state_dict=True, strip_prefix=getattr(args, "strip_prefix", None))
    check_weights(ckpt, args)
    return checkpoint_vector(obj, ckpt)


def check_weights(ckpt: Any, args: argparse.Namespace) -> None:
    """A one-line error naming the tensor if ``ckpt`` holds a NaN or infinite weight, unless
    ``--allow-nonfinite``."""
    from landscape.checkpoint import check_finite

    if not getattr(args, "allow_nonfinite", False):
        check_finite(ckpt)


def check_out_dir(path: Path, flag: str, given: Any = None) -> None:
    """``path`` is a folder or can be made one (no file in the way, at it or above it); ``given``: the value
    of ``flag`` to show [default: ``path``]."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{flag} {given if given is not None else path}: {p} is a file, not a folder")
            return


def check_out_file(path: Any, flag: str) -> None:
    """``path`` can be written as a file: it is not a folder and no file stands where a folder of it must be."""
    if path is None or is_stdout(path):
        return
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder; name a file")
    check_out_dir(path.parent, flag, path)


def check_device(text: str | None, flag: str = "--device") -> None:
    """``text`` names a device torch knows and this machine has (``auto`` always does)."""
    import torch

    if text is None or text == "auto":
        return
    try:
        device = torch.device(text)
    except (RuntimeError, ValueError):
        raise ValueError(f"{flag} {text!r} is not a device; use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda":
        n = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if n == 0:
            raise ValueError(f"{flag} {text}: no CUDA GPU is available here; use auto or cpu")
        if device.index is not None and device.index >= n:
            raise ValueError(f"{flag} {text}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}")
    elif device.type == "mps":
        mps = getattr(torch.backends, "mps", None)
        if mps is None or not mps.is_available():
            raise ValueError(f"{flag} {text}: MPS is not available here; use auto or cpu")
    elif device.type != "cpu":
        raise ValueError(f"{flag} {text}: only cpu, cuda and mps devices are supported")


def check_outputs(args: argparse.Namespace) -> None:
    """Before any work: ``--device`` exists here and every output path of the command can be written."""
    check_device(getattr(args, "device", None))
    for dest, flag in (("json", "--json"), ("html", "--html")):
        value = getattr(args, dest, None)
        if value is not None and not isinstance(value, bool):
            check_out_file(value, flag)
    if getattr(args, "out_dir", None) is not None:
        check_out_dir(Path(args.out_dir), "--out-dir")
    out = getattr(args, "out", None)
    if out is not None:
        if args.command == "study":
            check_out_dir(Path(out), "--out")
        elif args.command == "train":
            check_out_file(out, "--out")
        else:  # a stem: STEM.npz, STEM.png, ...
            check_out_dir(Path(out).parent, "--out", out)


def is_stdout(path: Any) -> bool:
    """``-`` as an output path: standard output (the Unix convention)."""
    return path is not None and str(path) == "-"
