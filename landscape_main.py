"""Entry of the ``landscape`` console script, outside the package so that it can explain, in one line, a
folder named ``landscape`` that shadows the installed package (one in the current directory or on
``PYTHONPATH`` comes first on the import path)."""
from __future__ import annotations

import os
import sys
from types import ModuleType


def main() -> int:
    import landscape

    folder = shadowing_folder(landscape)
    if folder is not None:
        print(f"landscape: error: the folder {folder} shadows the installed landscape package (it comes first on "
              "the import path, from the current directory or PYTHONPATH); rename it or run from another directory",
              file=sys.stderr)
        return 2
    from landscape.cli import main as landscape_main

    return landscape_main()


def shadowing_folder(module: ModuleType) -> str | None:
    """The folder ``import landscape`` found if it is not this package (a namespace folder, or a package
    without ``landscape/cli``), else None."""
    file = getattr(module, "__file__", None)
    if file and os.path.isfile(os.path.join(os.path.dirname(file), "cli", "__init__.py")):
        return None
    folders = [os.path.dirname(file)] if file else list(getattr(module, "__path__", None) or [])
    return folders[0] if folders else "landscape"


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
