"""--threads on every command: its default (OMP_NUM_THREADS, else 1), and the caller's setting restored."""
from __future__ import annotations

import pytest
import torch

from landscape.cli import build_parser, default_threads, main


def test_every_command_takes_threads():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, p in sub.choices.items():
        assert any("--threads" in a.option_strings for a in p._actions), name


def test_default_threads(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    assert default_threads(None) == 1 and default_threads(3) == 3 and default_threads(0) is None
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert default_threads(None) == 2
    monkeypatch.setenv("OMP_NUM_THREADS", "lots")
    assert default_threads(None) == 1
    with pytest.raises(ValueError, match="--threads must be >= 0"):
        default_threads(-1)


def test_threads_are_set_for_the_command_and_restored(tmp_path, monkeypatch):
    import landscape.cli.info as info

    seen = []
    monkeypatch.setattr(info, "run", lambda args: seen.append(torch.get_num_threads()) or 0)  # read by add_parser
    before = torch.get_num_threads()
    assert main(["info", str(tmp_path / "x.pt"), "--threads", "1"]) == 0
    assert seen == [1] and torch.get_num_threads() == before
