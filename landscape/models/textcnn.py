"""Convolutional sentence classifier of Kim (2014), randomly initialised embeddings (CNN-rand)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from landscape.models import register_model
from landscape.models.common import as_shape, check_dropout, check_positive


@register_model("textcnn")
class TextCNN(nn.Module):
    """Embedding -> parallel ``Conv1d`` (one per kernel size, ``num_filters`` each) -> ReLU
    -> max over time -> concat -> Dropout -> Linear.

    Input ``(N, seq_len)`` int64 token ids, ``input_shape = [seq_len]`` with
    ``seq_len >= max(kernel_sizes)``. Embeddings start uniform in [-0.25, 0.25]
    as in the paper's CNN-rand, convolutions He-normal.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        vocab_size: int,
        embed_dim: int = 128,
        kernel_sizes: Sequence[int] = (3, 4, 5),
        num_filters: int = 100,
        dropout: float = 0.5,
    ) -> None:
        super().__init__()
        (seq_len,) = as_shape(input_shape, (1,), "textcnn")
        kernels = {f"kernel_sizes[{i}]": k for i, k in enumerate(kernel_sizes)}
        check_positive("textcnn", num_outputs=num_outputs, vocab_size=vocab_size, embed_dim=embed_dim,
                       num_filters=num_filters, **kernels)
        if not kernel_sizes:
            raise ValueError("textcnn: kernel_sizes must not be empty")
        if seq_len < max(kernel_sizes):
            raise ValueError(f"textcnn: seq_len {seq_len} < largest kernel size {max(kernel_sizes)}")
        dropout = check_dropout("textcnn", dropout)
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.convs = nn.ModuleList(nn.Conv1d(embed_dim, num_filters, int(k)) for k in kernel_sizes)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(num_filters * len(kernel_sizes), num_outputs)
        nn.init.uniform_(self.embedding.weight, -0.25, 0.25)
        for conv in self.convs:
            nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        nn.init.zeros_(self.fc.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.embedding(x).transpose(1, 2)  # (N, embed_dim, T)
        pooled = [F.relu(conv(emb)).amax(dim=-1) for conv in self.convs]
        return self.fc(self.dropout(torch.cat(pooled, dim=1)))
