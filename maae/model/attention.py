"""Attention blocks of the auto encoder.

:class:`MixedAttentionBlock` is the paper's Eq. 2, ``Y = DC(SA(X) + SA(X^T)^T)``: spatial self-attention
over the N tokens, plus channel self-attention whose "tokens" are the C channels (each a vector of length
N), summed and passed through a dilated 3x3 convolution on the token grid.
:class:`SpatialAttentionBlock` is the ablation baseline: plain spatial self-attention.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

DILATED_KERNEL = 3


class SpatialSelfAttention(nn.Module):
    """Multi-head self-attention over tokens: input and output B x N x C."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(batch, tokens, dim))


class ChannelSelfAttention(nn.Module):
    """Self-attention whose tokens are channels: ``SA(X^T)^T`` for X of shape B x N x C.

    The transposed input is C tokens of length N, so queries, keys and values are linear maps of length-N
    vectors and the attention matrix is C x C. Heads split the length-N vectors; when N is not divisible by
    the head count a single head is used.
    """

    def __init__(self, num_tokens: int, num_heads: int) -> None:
        super().__init__()
        self.num_heads = num_heads if num_tokens % num_heads == 0 else 1
        self.qkv = nn.Linear(num_tokens, 3 * num_tokens)
        self.proj = nn.Linear(num_tokens, num_tokens)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        transposed = x.transpose(1, 2)  # B x C x N: channels are the tokens
        batch, channels, length = transposed.shape
        qkv = self.qkv(transposed).reshape(batch, channels, 3, self.num_heads, length // self.num_heads)
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)  # B x heads x C x N/heads
        out = self.proj(out.transpose(1, 2).reshape(batch, channels, length))
        return out.transpose(1, 2)

    def attention_matrix(self, x: torch.Tensor) -> torch.Tensor:
        """The softmax attention weights, B x heads x C x C (for inspection and tests)."""
        transposed = x.transpose(1, 2)
        batch, channels, length = transposed.shape
        qkv = self.qkv(transposed).reshape(batch, channels, 3, self.num_heads, length // self.num_heads)
        q, k, _ = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        scale = q.shape[-1] ** -0.5
        return torch.softmax(q @ k.transpose(-2, -1) * scale, dim=-1)


class DilatedConv(nn.Module):
    """A 3x3 convolution with the given dilation on the token grid (aggregates mid-distance context)."""

    def __init__(self, dim: int, dilation: int, grid: tuple[int, int]) -> None:
        super().__init__()
        self.grid = grid
        self.conv = nn.Conv2d(
            dim, dim, kernel_size=DILATED_KERNEL, dilation=dilation,
            padding=dilation * (DILATED_KERNEL // 2),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, dim = x.shape
        height, width = self.grid
        as_map = x.transpose(1, 2).reshape(batch, dim, height, width)
        return self.conv(as_map).flatten(2).transpose(1, 2)


class MixedAttentionBlock(nn.Module):
    """``Y = DC(SA(LN(X)) + SA(LN(X)^T)^T)`` (paper Eq. 2, with a pre-norm)."""

    def __init__(self, dim: int, num_heads: int, grid: tuple[int, int], dilation: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.spatial = SpatialSelfAttention(dim, num_heads)
        self.channel = ChannelSelfAttention(grid[0] * grid[1], num_heads)
        self.dilated_conv = DilatedConv(dim, dilation, grid)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.norm(x)
        return self.dilated_conv(self.spatial(normed) + self.channel(normed))


class SpatialAttentionBlock(nn.Module):
    """Ablation baseline: plain spatial self-attention, ``Y = SA(LN(X))``."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim)
        self.spatial = SpatialSelfAttention(dim, num_heads)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spatial(self.norm(x))


def build_block(kind: str, dim: int, num_heads: int, grid: tuple[int, int], dilation: int) -> nn.Module:
    """The attention block named by ``attention`` (``mixed`` or ``spatial``)."""
    if kind == "mixed":
        return MixedAttentionBlock(dim, num_heads, grid, dilation)
    return SpatialAttentionBlock(dim, num_heads)
