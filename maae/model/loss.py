"""The reconstruction loss L_e (paper Eq. 3) and the per-token distance the anomaly map reads.

Two distances, selected by ``loss``:

* ``mse``: the paper's mean squared error against the clean features; its anomaly map is the per-token L2
  distance (Eq. 4).
* ``cosine``: ``1 - cos(y, x)`` per token over channels, as Dinomaly and ViTAD reconstruct; it ignores
  each token's length and compares only directions. The anomaly map then uses the same per-token distance.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maae.config import LOSS_KINDS

# Guards the cosine against a zero-length token (F.cosine_similarity's own default).
COSINE_EPS = 1e-8


def token_distance(reconstruction: torch.Tensor, target: torch.Tensor, kind: str) -> torch.Tensor:
    """B x C x h x w pair -> B x 1 x h x w distance per token: L2 (``mse``) or ``1 - cosine`` (``cosine``)."""
    if kind == "mse":
        return (reconstruction - target).pow(2).sum(dim=1, keepdim=True).sqrt()
    if kind == "cosine":
        return 1 - F.cosine_similarity(reconstruction, target, dim=1, eps=COSINE_EPS).unsqueeze(1)
    raise ValueError(f"unknown loss {kind!r}; expected one of {LOSS_KINDS}")


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """L_e between the reconstruction and the (detached, noise-free) merged features, both B x C x h x w:
    their MSE (``mse``), or the mean over tokens of ``1 - cosine`` (``cosine``)."""
    if kind == "mse":
        return F.mse_loss(reconstruction, target)
    return token_distance(reconstruction, target, kind).mean()
