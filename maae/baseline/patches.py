"""Patch descriptors from cached backbone stages: local averaging, one common grid, concatenation."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
import torch.nn.functional as F

from maae.baseline.config import BaselineConfig
from maae.features import StageFeatures


def patch_descriptors(stages: Sequence[torch.Tensor], config: BaselineConfig) -> torch.Tensor:
    """B x C x h x w descriptors from all backbone stages of a batch (only ``config.stages`` are used).

    Each chosen stage is averaged over a ``pool_size`` square (stride 1; border patches average only the
    pixels that exist, so the image border does not darken them), resized to ``grid_stage``'s grid, and the
    results are concatenated along channels.
    """
    grid = stages[config.grid_stage].shape[-2:]
    parts = []
    for index in config.stages:
        stage = stages[index].float()
        if config.pool_size > 1:
            stage = F.avg_pool2d(stage, config.pool_size, stride=1, padding=config.pool_size // 2,
                                 count_include_pad=False)
        if stage.shape[-2:] != grid:
            shrinking = stage.shape[-1] > grid[-1]
            stage = F.interpolate(stage, size=tuple(grid), mode="bilinear", align_corners=False,
                                  antialias=shrinking)
        parts.append(stage)
    return torch.cat(parts, dim=1)


def flatten_patches(descriptors: torch.Tensor) -> torch.Tensor:
    """B x C x h x w -> (B*h*w) x C, patches of one image contiguous, row-major within the image."""
    return descriptors.permute(0, 2, 3, 1).reshape(-1, descriptors.shape[1])


def iter_descriptors(
    features: StageFeatures, config: BaselineConfig, *, batch_size: int, device: torch.device,
) -> Iterator[torch.Tensor]:
    """Descriptors of ``features`` batch by batch, on ``device`` (the cache's memory maps are read lazily)."""
    for start in range(0, len(features), batch_size):
        stages = [stage.to(device) for stage in features.batch(slice(start, start + batch_size))]
        yield patch_descriptors(stages, config)
