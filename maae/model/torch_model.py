"""The MAAE network as a pure torch module (no training glue).

Data flow for one batch of frozen backbone stages::

    stages --merge (FFM or bilinear)--> X (B x C x h x w, standardised per channel)
    X --tokens--> noise (training only) --> project to hidden width --> blocks, a residual every M
      --> project back to C --> Y (reconstruction of X)

The reconstruction target is ``X`` detached: the merge is trained only through the auto encoder's input,
never by pulling its own output towards the reconstruction (see :mod:`maae.model.ffm` for the rest of the
anti-collapse argument).

The model takes the numbers it needs as explicit arguments (like timm's layers); :func:`build_model` is the
one place that maps a :class:`~maae.config.MAAEConfig` to them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from maae.config import MAAEConfig
from maae.model.attention import build_block
from maae.model.ffm import build_merge
from maae.model.noise import AdaptiveNoiseGenerator, build_noise

POSITION_EMBED_STD = 0.02
# Backbone stage i (0-based) of a timm features_only model has stride 2 ** (i + 1).
FIRST_STAGE_STRIDE = 2


@dataclass
class ReconstructionOutput:
    """What one forward pass yields: the reconstruction and its (detached) target, both B x C x h x w."""

    reconstruction: torch.Tensor
    target: torch.Tensor


class ResidualGroup(nn.Module):
    """``residual_every`` consecutive blocks wrapped by one residual connection (paper 2.3)."""

    def __init__(self, blocks: Sequence[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        for block in self.blocks:
            out = block(out)
        return x + out


def residual_group_sizes(depth: int, residual_every: int) -> list[int]:
    """Block counts per residual group: groups of M, the last one possibly shorter."""
    sizes = [residual_every] * (depth // residual_every)
    if depth % residual_every:
        sizes.append(depth % residual_every)
    return sizes


class MAAEModel(nn.Module):
    """Mixed-attention auto encoder over merged frozen-backbone features.

    Args:
        stage_channels: channels of the backbone stages (strides 2, 4, 8, 16).
        grid: the token grid (rows, columns): the grid of stage ``token_stage`` at the training image size.
        token_stage: index of the stage whose grid the tokens sit on (default: the last, stride 16).
        merge: ``ffm`` (paper 2.1) or ``bilinear`` (UniAD's merge).
        hidden_dim, num_heads, depth, residual_every, dilation, attention: the auto encoder (paper 2.3):
            ``depth`` blocks of kind ``attention`` (``mixed`` or ``spatial``), a residual every
            ``residual_every`` blocks, a dilated 3x3 convolution of rate ``dilation`` in mixed blocks.
        noise: the training-time noise (see :func:`maae.model.noise.build_noise`), with its parameters
            ``noise_intensity`` and ``ang_init`` (ANG variants), ``jitter_scale`` and ``jitter_prob``
            (``jitter``), ``dropout_rate`` (``dropout``).
    """

    def __init__(
        self, stage_channels: Sequence[int], grid: tuple[int, int], *, token_stage: int | None = None,
        merge: str, hidden_dim: int, num_heads: int, depth: int, residual_every: int, dilation: int,
        attention: str, noise: str, noise_intensity: float, ang_init: float, jitter_scale: float,
        jitter_prob: float, dropout_rate: float,
    ) -> None:
        super().__init__()
        self.stage_channels = tuple(stage_channels)
        self.grid = tuple(grid)
        self.merge = build_merge(merge, stage_channels, token_stage)
        channels = self.merge.out_channels
        num_tokens = grid[0] * grid[1]
        self.feature_channels = channels
        self.noise = build_noise(
            noise, num_tokens, channels, noise_intensity=noise_intensity, ang_init=ang_init,
            jitter_scale=jitter_scale, jitter_prob=jitter_prob, dropout_rate=dropout_rate,
        )
        self.input_proj = nn.Linear(channels, hidden_dim)
        self.position_embed = nn.Parameter(torch.zeros(1, num_tokens, hidden_dim))
        nn.init.trunc_normal_(self.position_embed, std=POSITION_EMBED_STD)
        self.groups = nn.ModuleList(
            ResidualGroup([build_block(attention, hidden_dim, num_heads, self.grid, dilation) for _ in range(size)])
            for size in residual_group_sizes(depth, residual_every)
        )
        self.output_norm = nn.LayerNorm(hidden_dim)
        self.output_proj = nn.Linear(hidden_dim, channels)

    @property
    def adaptive_noise(self) -> AdaptiveNoiseGenerator | None:
        """The ANG module when the model uses one (any variant; a trainable W gets the adversarial update)."""
        return self.noise if isinstance(self.noise, AdaptiveNoiseGenerator) else None

    def merge_stages(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        """Merge the four backbone stages into B x C x h x w (the reconstruction target, before detaching)."""
        return self.merge(stages)

    def reconstruct(self, tokens: torch.Tensor) -> torch.Tensor:
        """Auto-encode B x N x C tokens (noise added in training mode only)."""
        hidden = self.input_proj(self.noise(tokens)) + self.position_embed
        for group in self.groups:
            hidden = group(hidden)
        return self.output_proj(self.output_norm(hidden))

    def forward(self, stages: Sequence[torch.Tensor]) -> ReconstructionOutput:
        merged = self.merge_stages(stages)
        batch, channels, height, width = merged.shape
        if (height, width) != self.grid:
            raise ValueError(f"feature grid {height}x{width} does not match the model's {self.grid}")
        tokens = merged.flatten(2).transpose(1, 2)
        reconstructed = self.reconstruct(tokens)
        reconstruction = reconstructed.transpose(1, 2).reshape(batch, channels, height, width)
        return ReconstructionOutput(reconstruction=reconstruction, target=merged.detach())


def token_stage_index(token_stride: int, num_stages: int) -> int:
    """The index of the backbone stage with stride ``token_stride`` (stage i has stride 2 ** (i + 1))."""
    index = token_stride.bit_length() - FIRST_STAGE_STRIDE.bit_length()
    if FIRST_STAGE_STRIDE << index != token_stride or not 0 <= index < num_stages:
        raise ValueError(f"no backbone stage of stride {token_stride} among {num_stages} stages")
    return index


def build_model(config: MAAEConfig, stage_channels: Sequence[int], image_size: int | None = None) -> MAAEModel:
    """An MAAE for a backbone with ``stage_channels`` at ``image_size`` (default: the config's), its token grid
    at the config's ``token_stride``: the one place where the run config becomes model arguments."""
    size = image_size or config.image_size
    token_stage = token_stage_index(config.token_stride, len(stage_channels))
    grid = (size // config.token_stride, size // config.token_stride)
    return MAAEModel(
        stage_channels, grid, token_stage=token_stage, merge="ffm" if config.use_ffm else "bilinear",
        hidden_dim=config.hidden_dim, num_heads=config.num_heads, depth=config.depth,
        residual_every=config.residual_every, dilation=config.dilation, attention=config.attention,
        noise=config.effective_noise, noise_intensity=config.noise_intensity, ang_init=config.ang_init,
        jitter_scale=config.jitter_scale, jitter_prob=config.jitter_prob, dropout_rate=config.dropout_rate,
    )
