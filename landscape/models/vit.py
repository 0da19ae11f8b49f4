"""Tiny Vision Transformer (Dosovitskiy et al. 2021) for small images."""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn

from landscape.models import register_model
from landscape.models.common import as_shape, check_dropout, check_positive


class SelfAttention(nn.Module):
    """Multi-head self-attention written as ``softmax(q k^T / sqrt(d)) v`` with plain ops.

    Deliberately not ``F.scaled_dot_product_attention`` / ``nn.MultiheadAttention``:
    their fused kernels (flash attention on CPU and GPU) implement neither
    double backward nor forward-mode AD, which Hessian-vector products need.
    """

    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, dim = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        attn = torch.softmax((q @ k.transpose(-2, -1)) * self.scale, dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(n, t, dim)
        return self.dropout(self.proj(out))


class TransformerBlock(nn.Module):
    """Pre-norm block: ``x + attn(ln(x))`` then ``x + mlp(ln(x))`` (GELU MLP)."""

    def __init__(self, dim: int, heads: int, mlp_dim: int, dropout: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, mlp_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(mlp_dim, dim),
            nn.Dropout(dropout),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


@register_model("vit")
class ViT(nn.Module):
    """Patch embedding (``patch_size`` x ``patch_size`` conv) + cls token + learnable position
    embedding -> ``depth`` pre-norm transformer blocks -> LayerNorm -> Linear on the cls token.

    ``input_shape`` is ``[C, H, W]`` with ``H`` and ``W`` divisible by ``patch_size``.
    ``dropout`` acts on the embeddings, attention output and MLP. Linear
    weights, cls token and position embedding are truncated-normal (std 0.02).
    """

    def __init__(
        self,
        *,
        input_shape: Sequence[int],
        num_outputs: int,
        patch_size: int = 4,
        dim: int = 64,
        depth: int = 6,
        heads: int = 4,
        mlp_dim: int = 128,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        channels, height, width = as_shape(input_shape, (3,), "vit")
        check_positive("vit", num_outputs=num_outputs, patch_size=patch_size, dim=dim, depth=depth,
                       heads=heads, mlp_dim=mlp_dim)
        if height % patch_size or width % patch_size:
            raise ValueError(f"vit: image {height}x{width} not divisible by patch_size {patch_size}")
        if dim % heads:
            raise ValueError(f"vit: dim {dim} not divisible by heads {heads}")
        dropout = check_dropout("vit", dropout)
        num_patches = (height // patch_size) * (width // patch_size)
        self.patch_embed = nn.Conv2d(channels, dim, patch_size, stride=patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, dim))
        self.dropout = nn.Dropout(dropout)
        self.blocks = nn.Sequential(*(TransformerBlock(dim, heads, mlp_dim, dropout) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_outputs)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.cls_token.expand(len(tokens), -1, -1)
        tokens = self.dropout(torch.cat([cls, tokens], dim=1) + self.pos_embed)
        return self.head(self.norm(self.blocks(tokens))[:, 0])
