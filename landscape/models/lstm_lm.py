"""Word-level LSTM language model (Zaremba et al. 2014 / Merity et al. 2018 style, small)."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from landscape.models import register_model
from landscape.models.common import as_shape, check_dropout, check_positive
from landscape.objective.double_backward import unrolled_recurrent

LSTM_IMPLS = ("unrolled", "fused")


def unrolled_lstm(lstm: nn.LSTM, x: torch.Tensor) -> torch.Tensor:
    """``lstm(x)[0]`` of a unidirectional, batch-first ``nn.LSTM`` from zero initial state, stepped with plain
    ops (:func:`~landscape.objective.double_backward.unrolled_recurrent`): the same maths and inter-layer
    dropout, but every op has double-backward and forward-mode AD formulas on every device, unlike the fused
    oneDNN (CPU) and cuDNN (GPU) kernels."""
    zeros = x.new_zeros(lstm.num_layers, len(x), lstm.hidden_size)
    params = [getattr(lstm, name) for name in lstm._flat_weights_names]
    return unrolled_recurrent("lstm", x, (zeros, zeros), params, lstm.bias, lstm.num_layers, lstm.dropout,
                              lstm.training, False, True)[0]


@register_model("lstm_lm")
class LSTMLanguageModel(nn.Module):
    """Embedding -> Dropout -> ``nn.LSTM(num_layers)`` (dropout between layers) -> Dropout -> Linear.

    Input ``(N, T)`` int64 token ids (``input_shape = [T]``), output
    ``(N, T, vocab_size)`` next-token logits. Every forward starts from a zero
    hidden state, so the loss is a function of the parameters alone.
    ``tie_weights`` shares the embedding and decoder matrices (needs
    ``hidden == embed_dim``). ``impl="unrolled"`` (default) steps through time
    with plain ops, so Hessian-vector products work by double backward and by
    forward-over-reverse on CPU and GPU; ``impl="fused"`` calls ``nn.LSTM``
    (faster cuDNN on GPU; cuDNN has no double backward, and oneDNN on CPU has
    no forward-mode AD). Both hold the same parameters, so their state dicts
    are interchangeable. Init: embedding and decoder U(-0.1, 0.1), decoder bias 0,
    LSTM PyTorch default.
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        vocab_size: int,
        embed_dim: int = 200,
        hidden: int = 200,
        num_layers: int = 2,
        dropout: float = 0.2,
        tie_weights: bool = False,
        impl: str = "unrolled",
    ) -> None:
        super().__init__()
        as_shape(input_shape, (1,), "lstm_lm")
        check_positive("lstm_lm", vocab_size=vocab_size, embed_dim=embed_dim, hidden=hidden,
                       num_layers=num_layers)
        if num_outputs != vocab_size:
            raise ValueError(f"lstm_lm: num_outputs ({num_outputs}) must equal vocab_size ({vocab_size})")
        if tie_weights and hidden != embed_dim:
            raise ValueError(f"lstm_lm: tie_weights needs hidden == embed_dim, got {hidden} and {embed_dim}")
        if impl not in LSTM_IMPLS:
            raise ValueError(f"lstm_lm: impl must be one of {LSTM_IMPLS}, got {impl!r}")
        dropout = check_dropout("lstm_lm", dropout)
        self.impl = impl
        self.embedding = nn.Embedding(vocab_size, embed_dim)
        self.dropout = nn.Dropout(dropout)
        self.lstm = nn.LSTM(embed_dim, hidden, num_layers, batch_first=True,
                            dropout=dropout if num_layers > 1 else 0.0)
        self.decoder = nn.Linear(hidden, vocab_size)
        nn.init.uniform_(self.embedding.weight, -0.1, 0.1)
        nn.init.uniform_(self.decoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)
        if tie_weights:
            self.decoder.weight = self.embedding.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        emb = self.dropout(self.embedding(x))
        out = unrolled_lstm(self.lstm, emb) if self.impl == "unrolled" else self.lstm(emb)[0]
        return self.decoder(self.dropout(out))
