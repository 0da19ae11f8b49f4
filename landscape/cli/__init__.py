"""The ``landscape`` command. Each subcommand is a module here with
``add_parser(subparsers)`` and ``run(args) -> int``; :data:`COMMANDS` lists them.

User errors (a bad checkpoint, an unknown name, a wrong value) print one line
``landscape: error: ...`` and exit with status 2; a diverged training run exits 3.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import NoReturn, Sequence

COMMANDS = ["demo", "train", "info", "analyze", "plot1d", "plot2d", "plot_training", "compare", "shift", "study"]


class UserError(Exception):
    """An error caused by the user's input; reported in one line."""


class Parser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (argparse prints the whole usage first)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from landscape import __version__
    from landscape.cli.ranges import constrain

    parser = Parser(
        prog="landscape",
        description="Train with the sharpness-aware optimizer family and measure the geometry of the minima.")
    parser.add_argument("--version", action="version", version=f"landscape {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in COMMANDS:
        importlib.import_module(f"landscape.cli.{name}").add_parser(sub)
    for p in sub.choices.values():  # every command takes --threads (demo and study define their own)
        if not any("--threads" in a.option_strings for a in p._actions):
            p.add_argument("--threads", type=int, default=None, metavar="N",
                           help="torch CPU threads [default: $OMP_NUM_THREADS if set, else 1; 0: torch's default, "
                                "one per core]")
            p.set_defaults(set_threads=True)
        constrain(p)
    return parser


def default_threads(value: int | None) -> int | None:
    """Threads for ``--threads value``: ``value``; unset, ``$OMP_NUM_THREADS`` if it is set, else 1 (never
    oversubscribes a shared machine: on a busy 2-core machine two threads made analyze 30x slower than one);
    0: None (torch's default, one per core)."""
    import os

    if value is None:
        env = os.environ.get("OMP_NUM_THREADS", "")
        value = int(env) if env.isdigit() and int(env) > 0 else 1
    if value < 0:
        raise ValueError(f"--threads must be >= 0, got {value}")
    return value or None


def main(argv: Sequence[str] | None = None) -> int:
    from landscape.checkpoint import CheckpointError

    try:
        from optimizers.trainer import TrainingDiverged
    except ImportError:  # pragma: no cover
        TrainingDiverged = RuntimeError  # type: ignore[misc,assignment]
    from landscape.cli.ranges import check_pairs

    parser = build_parser()
    args = parser.parse_args(argv)
    unordered = check_pairs(args)
    if unordered:
        parser.exit(2, f"landscape {args.command}: error: {unordered}\n")
    import torch

    from landscape.distributed import process_group

    before = torch.get_num_threads()
    try:
        threads = default_threads(args.threads) if getattr(args, "set_threads", False) else None
        if threads is not None:
            torch.set_num_threads(threads)
        with process_group():
            from landscape.cli.guards import check_outputs

            check_outputs(args)
            return int(args.func(args) or 0)
    except TrainingDiverged as e:
        print(f"landscape: diverged: {e}", file=sys.stderr)
        return 3
    except (UserError, CheckpointError, ValueError, KeyError, FileNotFoundError, IsADirectoryError,
            NotADirectoryError, FileExistsError, PermissionError) as e:
        msg = e.args[0] if isinstance(e, KeyError) and e.args else str(e)
        print(f"landscape: error: {' '.join(str(msg).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("landscape: interrupted", file=sys.stderr)
        return 130
    finally:
        torch.set_num_threads(before)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
