"""The MAAE network as a pure torch module (no training glue).

Data flow for one batch of frozen backbone stages::

    stages --merge (FFM or bilinear)--> X (B x C x h x w, standardised per channel)
    X --tokens--> noise (training only) --> project to hidden width --> blocks, a residual every M
      --> project back to C --> Y (reconstruction of X)

The reconstruction target is ``X`` detached: the merge is trained only through the auto encoder's input,
never by pulling its own output towards the reconstruction (see :mod:`maae.model.ffm` for the rest of the
anti-collapse argument).
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
    """Mixed-attention auto encoder over merged frozen-backbone features."""

    def __init__(self, config: MAAEConfig, stage_channels: Sequence[int], grid: tuple[int, int]) -> None:
        super().__init__()
        self.config = config
        self.stage_channels = tuple(stage_channels)
        self.grid = grid
        self.merge = build_merge(stage_channels, config.use_ffm)
        channels = self.merge.out_channels
        num_tokens = grid[0] * grid[1]
        self.feature_channels = channels
        self.noise = build_noise(
            config.effective_noise, num_tokens, channels,
            noise_intensity=config.noise_intensity, ang_init=config.ang_init,
            jitter_scale=config.jitter_scale, jitter_prob=config.jitter_prob,
        )
        self.input_proj = nn.Linear(channels, config.hidden_dim)
        self.position_embed = nn.Parameter(torch.zeros(1, num_tokens, config.hidden_dim))
        nn.init.trunc_normal_(self.position_embed, std=POSITION_EMBED_STD)
        self.groups = nn.ModuleList(
            ResidualGroup([
                build_block(config.attention, config.hidden_dim, config.num_heads, grid, config.dilation)
                for _ in range(size)
            ])
            for size in residual_group_sizes(config.depth, config.residual_every)
        )
        self.output_norm = nn.LayerNorm(config.hidden_dim)
        self.output_proj = nn.Linear(config.hidden_dim, channels)

    @property
    def adaptive_noise(self) -> AdaptiveNoiseGenerator | None:
        """The ANG module when the config uses one (its W gets the adversarial update)."""
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


def build_model(config: MAAEConfig, stage_channels: Sequence[int], image_size: int | None = None) -> MAAEModel:
    """An MAAE for a backbone with ``stage_channels`` at ``image_size`` (default: the config's)."""
    size = image_size or config.image_size
    deepest_stride = 2 ** len(stage_channels)
    grid = (size // deepest_stride, size // deepest_stride)
    return MAAEModel(config, stage_channels, grid)
