"""torch.compile in the default suite: two SAM steps through a compiled model give the eager steps' weights.

The backend is ``aot_eager``: Dynamo's graph capture and guards and AOTAutograd's forward/backward graphs, which
is where a two-pass step can go wrong (the weights change between the passes), without inductor's C++ code
generation (about 4x the time here: 16 s against 4.6 s on 2 busy cores). The default inductor backend, as
``TrainConfig(compile=True)`` uses it, is compared to eager over the whole family in the slow tests
(test_optimizers_engineering.py, test_family_contract.py)."""
from __future__ import annotations

import pytest
import torch

from optimizers import build_optimizer
from tests.fixtures import tiny_mlp
from tests.optimizer_helpers import LR, MOMENTUM, closure_for

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script:DeprecationWarning")


def sam_steps(compiled: bool, x: torch.Tensor, y: torch.Tensor, steps: int = 2) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = tiny_mlp()
    forward = torch.compile(model, backend="aot_eager") if compiled else model
    opt = build_optimizer("sam", model.parameters(), base_kwargs={"lr": LR, "momentum": MOMENTUM}, rho=0.3)
    closure = closure_for(forward, x, y)
    for _ in range(steps):
        opt.step(closure)
    return [p.detach().clone() for p in model.parameters()]


def test_compiled_sam_steps_match_eager():
    torch._dynamo.reset()
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(16, 5, generator=g), torch.randint(3, (16,), generator=g)
    eager, compiled = sam_steps(False, x, y), sam_steps(True, x, y)
    start = [p.detach() for p in (torch.manual_seed(0), tiny_mlp())[1].parameters()]
    assert all(float((a - b).abs().max()) > 1e-3 for a, b in zip(eager, start))  # the steps moved every tensor
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
