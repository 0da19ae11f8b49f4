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


def _tiny():
    import torch
    import torch.nn as nn

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    return model, nn.CrossEntropyLoss(), (torch.randn(64, 5), torch.randint(0, 3, (64,)))


def test_measure_keywords_reach_the_measure_not_the_objective():
    """``seed`` (every measure) and ``batch_size`` (m-sharpness) are the measure's own keywords; the objective's
    stream seed is ``data_seed``."""
    from landscape.curvature.trace import hutchinson
    from landscape.sharpness.worst_case import worst_case_sharpness

    model, loss, data = _tiny()
    traces = [landscape.hessian_trace(model, loss, data, method="hutchinson", max_samples=8, rtol=None, seed=s).trace
              for s in range(3)]
    assert len(set(traces)) == 3
    obj = landscape.Objective(model, data, loss=loss)
    assert traces[1] == hutchinson(obj.hessian, max_samples=8, rtol=None, seed=1).trace
    assert landscape.hessian_trace(obj, method="hutchinson", max_samples=8, rtol=None, seed=1).trace == traces[1]
    densities = [landscape.spectral_density(model, loss, data, num_runs=1, num_steps=5, seed=s).density
                 for s in range(2)]
    assert (densities[0] != densities[1]).any()
    average = [landscape.sharpness_of(model, loss, data, rho=0.1, kind="average", samples=2, seed=s).sharpness
               for s in range(2)]
    assert average[0] != average[1]
    m_sharp = landscape.sharpness_of(model, loss, data, rho=0.1, steps=3, batch_size=8)
    assert m_sharp.sharpness == worst_case_sharpness(obj, 0.1, steps=3, batch_size=8).sharpness
    assert m_sharp.sharpness != landscape.sharpness_of(model, loss, data, rho=0.1, steps=3).sharpness
    small = landscape.hessian_eigenvalues(model, loss, data, k=2, batch_size=8, data_seed=3, seed=2)
    assert small.eigenvalues[0] == pytest.approx(landscape.hessian_eigenvalues(obj, k=2).eigenvalues[0], rel=1e-4)
    with pytest.raises(ValueError, match="already fixes .* dtype"):
        landscape.hessian_eigenvalues(obj, k=2, dtype=None)
