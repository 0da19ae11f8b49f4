"""The front door: the README's examples run as written; top-level names never collide with subpackages."""
from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import pytest

import landscape

ROOT = Path(__file__).resolve().parents[1]


def readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Your own model, loss and data", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.+?)\n```", section, flags=re.S)


@pytest.mark.filterwarnings("ignore")
@pytest.mark.parametrize("index", range(2))
def test_readme_examples_run(index, capsys):
    examples = readme_examples()
    assert len(examples) == 2
    if "transformers" in examples[index]:
        pytest.importorskip("transformers")
    exec(compile(examples[index], f"README example {index}", "exec"), {})
    printed = capsys.readouterr().out
    assert re.search(r"\d\.\d", printed), printed  # a number came out


def test_front_door_names_are_functions_not_subpackages():
    modules = {m.name for m in pkgutil.iter_modules(landscape.__path__)}
    assert not modules & set(landscape._API)
    importlib.import_module("landscape.objective")  # importing a subpackage must not shadow a front-door name
    for name in landscape._API:
        assert callable(getattr(landscape, name)) and not isinstance(getattr(landscape, name), type(landscape))
    assert landscape.Objective is importlib.import_module("landscape.objective").Objective
