"""From reconstruction error to anomaly maps and image scores (paper Eqs. 4 and 5)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from maae.config import IMAGE_SCORES, MAAEConfig
from maae.model.loss import token_distance

# A Gaussian kernel reaches 4 sigma on each side before its tail is negligible.
GAUSSIAN_TRUNCATE = 4.0


class AnomalyMapGenerator(nn.Module):
    """``S_l = smooth(upsample(d(Y, X)))`` at image resolution, with ``d`` the per-token distance of the
    training loss (``distance``: L2 for ``mse``, ``1 - cosine`` for ``cosine``)."""

    def __init__(self, image_size: int, sigma: float, distance: str = "mse") -> None:
        super().__init__()
        self.image_size = image_size
        self.sigma = sigma
        self.distance = distance
        if sigma > 0:
            radius = max(1, math.ceil(GAUSSIAN_TRUNCATE * sigma))
            offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
            kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
            self.register_buffer("kernel", kernel / kernel.sum(), persistent=False)
        else:
            self.register_buffer("kernel", torch.ones(1), persistent=False)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """B x C x h x w pair -> B x image_size x image_size anomaly maps."""
        distance = token_distance(reconstruction, target, self.distance)
        maps = F.interpolate(distance, size=(self.image_size, self.image_size), mode="bilinear",
                             align_corners=False)
        if self.sigma > 0:
            maps = self._smooth(maps)
        return maps[:, 0]

    def _smooth(self, maps: torch.Tensor) -> torch.Tensor:
        radius = self.kernel.numel() // 2
        horizontal = self.kernel.view(1, 1, 1, -1)
        vertical = self.kernel.view(1, 1, -1, 1)
        maps = F.conv2d(F.pad(maps, (radius, radius, 0, 0), mode="reflect"), horizontal)
        return F.conv2d(F.pad(maps, (0, 0, radius, radius), mode="reflect"), vertical)


def build_anomaly_map_generator(config: MAAEConfig) -> AnomalyMapGenerator:
    """The map generator of a run: its image size, smoothing, and the distance of its training loss."""
    return AnomalyMapGenerator(config.image_size, config.anomaly_map_sigma, distance=config.loss)


def image_scores(maps: torch.Tensor, method: str = "max", topk_fraction: float = 0.01) -> torch.Tensor:
    """One score per B x H x W map: its maximum (``max``, paper Eq. 5), or the mean of its highest
    ``topk_fraction`` of pixels, at least one (``topk_mean``; Dinomaly uses the top 1%)."""
    flat = maps.flatten(1)
    if method == "max":
        return flat.amax(dim=1)
    if method == "topk_mean":
        count = max(1, math.ceil(topk_fraction * flat.shape[1]))
        return flat.topk(count, dim=1).values.mean(dim=1)
    raise ValueError(f"unknown image score {method!r}; expected one of {IMAGE_SCORES}")
