"""Checks the subcommands run on their inputs before any work: non-finite weights, output paths."""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def add_nonfinite_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-nonfinite", action="store_true",
                   help="measure a checkpoint even if a weight is NaN or infinite (refused by default)")


def check_weights(ckpt: Any, args: argparse.Namespace) -> None:
    """A one-line error naming the tensor if ``ckpt`` holds a NaN or infinite weight, unless
    ``--allow-nonfinite``."""
    from landscape.checkpoint import check_finite

    if not getattr(args, "allow_nonfinite", False):
        check_finite(ckpt)


def check_out_dir(path: Path, flag: str) -> None:
    """``path`` is a folder or can be made one (no file in the way, at it or above it)."""
    for p in (path, *path.parents):
        if p.exists():
            if not p.is_dir():
                raise ValueError(f"{flag} {path}: {p} is a file, not a folder")
            return


def is_stdout(path: Any) -> bool:
    """``-`` as an output path: standard output (the Unix convention)."""
    return path is not None and str(path) == "-"
