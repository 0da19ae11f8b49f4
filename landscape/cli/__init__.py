"""The ``landscape`` command. Each subcommand is a module here with
``add_parser(subparsers)`` and ``run(args) -> int``; :data:`COMMANDS` lists them.

User errors (a bad checkpoint, an unknown name, a wrong value) print one line
``landscape: error: ...`` and exit with status 2; a diverged training run exits 3.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

COMMANDS = ["demo", "train", "info", "analyze", "plot1d", "plot2d", "plot_training", "compare", "shift", "study"]


class UserError(Exception):
    """An error caused by the user's input; reported in one line."""


def build_parser() -> argparse.ArgumentParser:
    from landscape import __version__

    parser = argparse.ArgumentParser(
        prog="landscape",
        description="Train with the sharpness-aware optimizer family and measure the geometry of the minima.")
    parser.add_argument("--version", action="version", version=f"landscape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"landscape.cli.{name}").add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from landscape.checkpoint import CheckpointError

    try:
        from optimizers.trainer import TrainingDiverged
    except ImportError:  # pragma: no cover
        TrainingDiverged = RuntimeError  # type: ignore[misc,assignment]
    parser = build_parser()
    args = parser.parse_args(argv)
    from landscape.distributed import process_group

    try:
        with process_group():
            return int(args.func(args) or 0)
    except TrainingDiverged as e:
        print(f"landscape: diverged: {e}", file=sys.stderr)
        return 3
    except (UserError, CheckpointError, ValueError, KeyError, FileNotFoundError, IsADirectoryError,
            PermissionError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"landscape: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("landscape: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
