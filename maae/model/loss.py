"""The reconstruction loss L_e (paper Eq. 3): mean squared error against the clean features."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def reconstruction_loss(reconstruction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """MSE between the reconstruction and the (detached, noise-free) merged features."""
    return F.mse_loss(reconstruction, target)
