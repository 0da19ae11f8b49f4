"""The benchmark matrix's workloads: one model per family, each at a small and a larger size, briefly trained.

    from benchmarks.workloads import WORKLOADS, load
    w = load("cnn", "small")      # w.model (eval mode), w.x, w.y, w.criterion, w.batch_size, w.loader()

Families: an MLP, a CNN, a ResNet with BatchNorm (on 8x8 digits, scikit-learn's bundled set), an LSTM language
model, a tiny ViT (digits upsampled to 3x16x16) and a third-party model: a HuggingFace ``transformers`` GPT-2
from a tiny config (next-token loss on synthetic token sequences). Every model takes one input tensor and
returns logits; ``criterion(logits, y)`` (an ``nn.CrossEntropyLoss``) is the mean cross-entropy over every
prediction (the sequence models flatten time), so PyHessian and the other anchors can take the same workload as
ours. The GPT-2 is wrapped
(``input_ids -> logits``) for the anchors; ``w.native`` holds the HuggingFace model itself, for runs that feed
it dict batches and its own loss.

Each model is trained for ``steps`` Adam steps (seeded, the same on every run) so it sits away from
initialization, then put in eval mode. Nothing is downloaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import torch
import torch.nn as nn
from torch.utils.data import DataLoader, TensorDataset

from landscape.models.cnn import CNN
from landscape.models.lstm_lm import LSTMLanguageModel
from landscape.models.mlp import MLP
from landscape.models.resnet import CifarResNet
from landscape.models.vit import ViT

FAMILIES = ("mlp", "cnn", "resnet-bn", "lstm", "vit", "hf-gpt2")
SIZES = ("small", "large")


class SequenceCrossEntropy(nn.CrossEntropyLoss):
    """Mean cross-entropy over every prediction: ``(N, C)`` against ``(N,)``, or ``(N, T, C)`` against ``(N, T)``.
    An ``nn.CrossEntropyLoss`` (``reduction="mean"``), so every anchor takes it as it is."""

    def forward(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return super().forward(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


@dataclass
class Workload:
    name: str
    family: str
    size: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    batch_size: int
    criterion: nn.Module = field(default_factory=SequenceCrossEntropy)
    native: Any = None
    meta: dict = field(default_factory=dict)

    @property
    def num_params(self) -> int:
        return sum(p.numel() for p in self.model.parameters() if p.requires_grad)

    def loader(self) -> DataLoader:
        """The same data as ``(x, y)`` micro-batches of ``batch_size``, in order (what the anchors take)."""
        return DataLoader(TensorDataset(self.x, self.y), batch_size=self.batch_size, shuffle=False)

    def describe(self) -> dict:
        return {"name": self.name, "family": self.family, "size": self.size, "params": self.num_params,
                "samples": len(self.x), "batch_size": self.batch_size, **self.meta}


@lru_cache(maxsize=None)
def _digits() -> tuple[torch.Tensor, torch.Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    x = torch.tensor(d.data, dtype=torch.float32).reshape(-1, 1, 8, 8) / 16.0
    return (x - 0.3) / 0.4, torch.tensor(d.target, dtype=torch.long)


def _images(n: int, shape: str) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = _digits()
    x, y = x[:n], y[:n]
    if shape == "flat":
        return x.reshape(len(x), -1), y
    if shape == "rgb16":
        return nn.functional.interpolate(x, size=16, mode="bilinear", align_corners=False).expand(-1, 3, -1, -1) \
            .contiguous(), y
    return x, y


def _tokens(n: int, seq: int, vocab: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequences of a noisy order-2 process (learnable, not memorized): ``t_i = (t_{i-1} + t_{i-2}) mod V`` with
    probability 0.8, else uniform; inputs are ``t[:-1]``, targets ``t[1:]``."""
    g = torch.Generator().manual_seed(seed)
    t = torch.zeros(n, seq + 1, dtype=torch.long)
    t[:, :2] = torch.randint(vocab, (n, 2), generator=g)
    for i in range(2, seq + 1):
        follow = torch.rand(n, generator=g) < 0.8
        t[:, i] = torch.where(follow, (t[:, i - 1] + t[:, i - 2]) % vocab, torch.randint(vocab, (n,), generator=g))
    return t[:, :-1].contiguous(), t[:, 1:].contiguous()


class LogitsOf(nn.Module):
    """``input_ids -> logits`` of a HuggingFace causal LM (the anchors feed one tensor)."""

    def __init__(self, hf: nn.Module) -> None:
        super().__init__()
        self.hf = hf

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.hf(input_ids=ids).logits


class Reshape(nn.Module):
    def __init__(self, *shape: int) -> None:
        super().__init__()
        self.shape = shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(len(x), *self.shape)


def _gpt2(layers: int, dims: int, vocab: int, seq: int) -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    cfg = GPT2Config(n_layer=layers, n_embd=dims, n_head=2, vocab_size=vocab, n_positions=seq, bos_token_id=0,
                     eos_token_id=0, attn_implementation="eager", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return GPT2LMHeadModel(cfg)


def _build(family: str, size: str) -> tuple[nn.Module, torch.Tensor, torch.Tensor, int, dict]:
    large = size == "large"
    if family == "mlp":
        x, y = _images(1024 if large else 512, "flat")
        return MLP(input_shape=[64], num_outputs=10, hidden=[256, 256] if large else [32, 32]), x, y, 256, {}
    if family == "cnn":
        x, y = _images(1024 if large else 512, "img")
        return (CNN(input_shape=[1, 8, 8], num_outputs=10, channels=[16, 32] if large else [4, 8],
                    hidden=64 if large else 16), x, y, 256, {})
    if family == "resnet-bn":
        x, y = _images(512 if large else 256, "img")
        widths, blocks = ((8, 16, 32), (2, 2, 2)) if large else ((4, 8), (1, 1))
        return CifarResNet([1, 8, 8], 10, widths, blocks, "A", "resnet"), x, y, 128, {}
    if family == "lstm":
        vocab, seq = (64, 24) if large else (32, 12)
        x, y = _tokens(256 if large else 128, seq, vocab)
        model = LSTMLanguageModel(input_shape=[seq], num_outputs=vocab, vocab_size=vocab,
                                  embed_dim=48 if large else 16, hidden=48 if large else 16,
                                  num_layers=2 if large else 1, dropout=0.0)
        return model, x, y, 64, {"vocab": vocab, "seq": seq}
    if family == "vit":
        x, y = _images(512 if large else 256, "rgb16")
        return (ViT(input_shape=[3, 16, 16], num_outputs=10, patch_size=4, dim=64 if large else 16,
                    depth=4 if large else 1, heads=4 if large else 2, mlp_dim=128 if large else 32), x, y, 128, {})
    if family == "hf-gpt2":
        vocab, seq = (64, 24) if large else (32, 12)
        x, y = _tokens(256 if large else 128, seq, vocab, seed=1)
        hf = _gpt2(4 if large else 1, 64 if large else 16, vocab, seq)
        return LogitsOf(hf), x, y, 64, {"vocab": vocab, "seq": seq, "library": "transformers"}
    raise KeyError(f"unknown family {family!r}; known: {', '.join(FAMILIES)}")


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, seed: int) -> None:
    g, criterion = torch.Generator().manual_seed(seed), SequenceCrossEntropy()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        idx = torch.randint(len(x), (min(64, len(x)),), generator=g)
        opt.zero_grad()
        criterion(model(x[idx]), y[idx]).backward()
        opt.step()
    model.eval()


def load(family: str, size: str = "small", steps: int = 150, seed: int = 0) -> Workload:
    """The ``family`` workload at ``size``, trained ``steps`` Adam steps (deterministic for a given seed)."""
    if size not in SIZES:
        raise KeyError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    torch.manual_seed(seed)
    model, x, y, batch_size, meta = _build(family, size)
    _train(model, x, y, steps, seed)
    for p in model.parameters():
        p.requires_grad_(True)
    native = model.hf if isinstance(model, LogitsOf) else None
    return Workload(f"{family}/{size}", family, size, model, x, y, batch_size, native=native, meta=meta)


WORKLOADS = [(f, s) for f in FAMILIES for s in SIZES]


def parse(spec: str | None) -> list[tuple[str, str]]:
    """``"mlp,cnn/large"`` -> [("mlp", "small"), ("mlp", "large"), ("cnn", "large")]; None or "all" -> every one."""
    if spec in (None, "", "all"):
        return list(WORKLOADS)
    out = []
    for item in spec.split(","):
        fam, _, size = item.strip().partition("/")
        if fam not in FAMILIES:
            raise KeyError(f"unknown family {fam!r}; known: {', '.join(FAMILIES)}")
        out += [(fam, s) for s in ([size] if size else SIZES)]
    return out
