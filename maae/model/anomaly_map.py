"""From reconstruction error to anomaly maps and image scores (paper Eqs. 4 and 5)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

# A Gaussian kernel reaches 4 sigma on each side before its tail is negligible.
GAUSSIAN_TRUNCATE = 4.0


class AnomalyMapGenerator(nn.Module):
    """``S_l = smooth(upsample(||Y - X||_2))`` at image resolution; the image score is ``max(S_l)``."""

    def __init__(self, image_size: int, sigma: float) -> None:
        super().__init__()
        self.image_size = image_size
        self.sigma = sigma
        if sigma > 0:
            radius = max(1, math.ceil(GAUSSIAN_TRUNCATE * sigma))
            offsets = torch.arange(-radius, radius + 1, dtype=torch.float32)
            kernel = torch.exp(-0.5 * (offsets / sigma) ** 2)
            self.register_buffer("kernel", kernel / kernel.sum(), persistent=False)
        else:
            self.register_buffer("kernel", torch.ones(1), persistent=False)

    def forward(self, reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """B x C x h x w pair -> B x image_size x image_size anomaly maps."""
        distance = (reconstruction - target).pow(2).sum(dim=1, keepdim=True).sqrt()
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


def image_scores(maps: torch.Tensor) -> torch.Tensor:
    """Image anomaly score = maximum of its anomaly map (paper Eq. 5)."""
    return maps.flatten(1).amax(dim=1)
