"""``vit-t[-p{P}][-d{L}]``: a tiny Vision Transformer (ViT-T, as in Harun et al. 2024), trainable
from scratch.

A ``P``x``P`` stride-``P`` conv cuts the image into patches and embeds each in 192 dims; a
learned class token goes first and learned position embeddings are added; ``L`` (default 12)
pre-norm transformer blocks follow (LayerNorm → 3-head self-attention → residual, LayerNorm →
MLP 192→768→192 with GELU → residual), then a final LayerNorm and a linear head on the class
token. Default patch size 4: 28/32 px inputs become 7x7 / 8x8 patches (49 / 64 tokens plus
the class token). Height and width must be multiples of ``P``.

Probe sets: ``blocks`` = each transformer block's output, a ``(B, 1 + patches, 192)`` token
sequence with the class token first (the capture averages the patch tokens, class token
excluded, because the model has a ``class_token``). There is no ``conv`` set.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ShapeError
from .base import ZooModel

WIDTH = 192
HEADS = 3
MLP_RATIO = 4
DEFAULT_PATCH = 4
DEFAULT_DEPTH = 12


class SelfAttention(nn.Module):
    """Multi-head self-attention over a ``(B, T, D)`` sequence with one fused q/k/v projection."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, width = x.shape
        qkv = self.qkv(x).view(batch, tokens, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        return self.proj(attended.transpose(1, 2).reshape(batch, tokens, width))


class TransformerBlock(nn.Module):
    """A pre-norm transformer block: ``x + attn(ln(x))``, then ``x + mlp(ln(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, mlp_ratio * width), nn.GELU(), nn.Linear(mlp_ratio * width, width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(ZooModel):
    """ViT-T: patch embedding, class token, position embeddings, ``depth`` blocks, class-token head."""

    def __init__(self, spec: str, num_classes: int, input_shape: tuple[int, ...], patch: int = DEFAULT_PATCH,
                 depth: int = DEFAULT_DEPTH, width: int = WIDTH, heads: int = HEADS,
                 mlp_ratio: int = MLP_RATIO) -> None:
        super().__init__()
        self.spec, self.num_classes, self.input_shape = spec, num_classes, tuple(input_shape)
        channels, height, width_px = input_shape
        if height % patch or width_px % patch:
            raise ShapeError(f"{spec!r} cuts images into {patch}x{patch} patches but the data is "
                             f"{height}x{width_px} px; resize with a [size=S] data modifier (S a multiple of "
                             f"{patch}) or pick a patch size that divides it (-pP)")
        patches = (height // patch) * (width_px // patch)
        self.patch_embed = nn.Conv2d(channels, width, patch, stride=patch)
        self.class_token = nn.Parameter(torch.zeros(1, 1, width))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + patches, width))
        self.blocks = nn.Sequential(*(TransformerBlock(width, heads, mlp_ratio) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, num_classes)
        self.probe_sets = {"blocks": [f"blocks.{i}" for i in range(depth)], "conv": []}
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.trunc_normal_(self.class_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The embedded input sequence ``(B, 1 + patches, width)``, class token first."""
        patches = self.patch_embed(x).flatten(2).transpose(1, 2)
        cls = self.class_token.expand(x.shape[0], -1, -1)
        return torch.cat([cls, patches], dim=1) + self.pos_embed

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.tokens(x)))[:, 0])
