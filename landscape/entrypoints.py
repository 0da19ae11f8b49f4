"""Resolve ``pkg.module:attr`` entry points for user models and datasets; check factory arguments."""
from __future__ import annotations

import importlib
import inspect
import os
import sys
from typing import Any, Callable


def search_current_directory() -> None:
    """Put the current directory first on ``sys.path``, as ``python -m`` does (the ``landscape`` console
    script does not), so that ``--model mymodels:factory`` finds ``./mymodels.py`` without ``PYTHONPATH``.
    Modules already imported (``landscape`` itself) are not looked up again."""
    cwd = os.getcwd()
    if not any(p in ("", ".", cwd) for p in sys.path):
        sys.path.insert(0, cwd)


def load_entry_point(spec: str) -> Any:
    """Import ``pkg.module`` (searching the current directory first) and return its attribute ``attr``
    (dots allowed)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"entry point must look like 'pkg.module:factory', got {spec!r}")
    search_current_directory()
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"entry point {spec!r}: cannot import {module_name!r} ({e}; searched the current "
                         f"directory {os.getcwd()} and the installed packages)") from e
    except SyntaxError as e:
        raise ValueError(f"entry point {spec!r}: {e.filename}:{e.lineno}: syntax error ({e.msg})") from e
    for part in attr.split("."):
        try:
            obj = getattr(obj, part)
        except AttributeError as e:
            raise ValueError(f"entry point {spec!r}: {module_name!r} has no attribute {attr!r}") from e
    if not callable(obj):
        raise TypeError(f"entry point {spec!r} is not callable")
    return obj


def check_kwargs(what: str, factory: Callable[..., Any], kwargs: dict[str, Any], flag: str) -> None:
    """Unknown or missing keyword arguments of a built-in ``factory`` as a one-line ``ValueError``."""
    params = inspect.signature(factory).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return
    unknown = sorted(set(kwargs) - set(params))
    if unknown:
        raise ValueError(f"{what} has no argument {', '.join(unknown)}; it takes {', '.join(params)}")
    missing = [k for k, p in params.items() if p.default is p.empty and k not in kwargs]
    if missing:
        raise ValueError(f"{what} needs {', '.join(missing)} ({flag} {missing[0]}=...)")
