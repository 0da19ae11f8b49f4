"""A HuggingFace ``transformers`` GPT-2 from a tiny config (nothing downloaded), dict batches and its own LM
loss: code nobody here wrote, for the tests of the general objective and the ``--model/--data/--loss`` flags."""
from __future__ import annotations

import torch
from torch.utils.data import DataLoader, IterableDataset

VOCAB, SEQ = 31, 8


def tiny_gpt2(seed: int = 0, layers: int = 2, dims: int = 16):
    """GPT-2 with 2 layers, 16 dims, 2 heads, a 31-token vocabulary (eager attention: double backward)."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=layers, n_embd=dims, n_head=2, vocab_size=VOCAB, n_positions=SEQ, bos_token_id=0,
                     eos_token_id=0, attn_implementation="eager")
    return GPT2LMHeadModel(cfg).eval()


def token_rows(n: int = 24, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, VOCAB, (n, SEQ), generator=torch.Generator().manual_seed(seed))


class TokenStream(IterableDataset):
    """Dict batches ``{input_ids, attention_mask, labels}`` of ``batch`` rows; the last batch shorter, and the
    padding of the last row masked out of the labels (-100) so batches count different numbers of tokens."""

    def __init__(self, n: int = 24, batch: int = 5, seed: int = 0) -> None:
        self.ids, self.batch = token_rows(n, seed), batch

    def __iter__(self):
        for i in range(0, len(self.ids), self.batch):
            ids = self.ids[i:i + self.batch]
            mask = torch.ones_like(ids)
            labels = ids.clone()
            if i + self.batch >= len(self.ids):  # mask the tail of the very last row
                mask[-1, SEQ // 2:] = 0
                labels[-1, SEQ // 2:] = -100
            yield {"input_ids": ids, "attention_mask": mask, "labels": labels}


def lm_loader(n: int = 24, batch: int = 5, seed: int = 0) -> DataLoader:
    """A DataLoader over :class:`TokenStream` (``batch_size=None``: the dataset yields whole batches)."""
    return DataLoader(TokenStream(n, batch, seed), batch_size=None)


def lm_loss(model, batch):
    """GPT-2's own loss (mean over the predicted, unmasked tokens) times their count."""
    out = model(**batch)
    count = (batch["labels"][:, 1:] != -100).sum()
    return out.loss * count, count


def lm_train_only(n: int = 24, batch: int = 5, seed: int = 0):
    """``--data`` factory: a bare DataLoader, i.e. a train split and no test split."""
    return lm_loader(n, batch, seed)


def lm_data(n: int = 24, batch: int = 5, seed: int = 0):
    """``--data`` factory: the train split as a DataLoader, the test split too."""
    return {"train": lm_loader(n, batch, seed), "test": lm_loader(n // 2, batch, seed + 1)}
