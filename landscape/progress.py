"""Progress bars (rich, on stderr) for long computations; silent when disabled, on non-main ranks, or
when stderr is not a terminal."""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from landscape.distributed import is_main

Advance = Callable[..., None]
"""``advance(n=1, **fields)``: move the bar ``n`` steps; ``fields`` (e.g. ``status="res 1e-3"``) show after it."""


@contextlib.contextmanager
def progress_bar(description: str, total: int | None, enabled: bool = True) -> Iterator[Advance]:
    """``with progress_bar("Lanczos", 100) as advance: advance()``; a no-op when not ``enabled``."""
    if not (enabled and is_main()):
        yield lambda n=1, **fields: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    console = Console(stderr=True)
    if not console.is_terminal:  # a log file gets no bar (and no stray blank line)
        yield lambda n=1, **fields: None
        return
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("{task.fields[status]}"), console=console, transient=True) as bar:
        task = bar.add_task(description, total=total, status="")

        def advance(n: int = 1, **fields: Any) -> None:
            status = " ".join(f"{k}={v}" for k, v in fields.items())
            bar.update(task, advance=n, status=status)

        yield advance
