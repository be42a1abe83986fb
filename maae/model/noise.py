"""Training-time feature noise: the paper's adaptive noise generator (ANG) and UniAD's feature jitter.

Noise is what keeps a feature auto encoder from learning the identity: it is added to the input features
in training only, while the reconstruction target stays clean.
"""

from __future__ import annotations

import torch
from torch import nn


class AdaptiveNoiseGenerator(nn.Module):
    """ANG (paper 2.2): ``eps' = A * W (.) eps`` with a learnable ``W`` of size tokens x channels.

    ``W`` is trained adversarially: it *maximises* the reconstruction loss (weight ``lambda_ang``) under an
    L2 penalty on its norm (weight ``lambda_re``). The sign flip lives in :meth:`adversarial_gradient`, which
    the training step applies after one shared backward pass.
    """

    def __init__(self, num_tokens: int, channels: int, noise_intensity: float, init_value: float) -> None:
        super().__init__()
        self.noise_intensity = noise_intensity
        self.weight = nn.Parameter(torch.full((num_tokens, channels), float(init_value)))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` is B x N x C; noise is added in training mode only."""
        if not self.training or self.noise_intensity == 0:
            return tokens
        eps = torch.randn_like(tokens)
        return tokens + self.noise_intensity * self.weight * eps

    def adversarial_gradient(self, lambda_ang: float, lambda_re: float) -> None:
        """Turn ``weight.grad`` (dL_e/dW) into the gradient of ``L_ANG = -lambda_ang L_e + lambda_re ||W||_2``."""
        if self.weight.grad is None:
            return
        norm = self.weight.detach().norm().clamp_min(torch.finfo(self.weight.dtype).tiny)
        self.weight.grad.mul_(-lambda_ang).add_(self.weight.detach() / norm, alpha=lambda_re)

    def regulariser(self) -> torch.Tensor:
        """``||W||_2`` (Frobenius norm), the term that keeps the noise from growing without bound."""
        return self.weight.norm()


class FeatureJitter(nn.Module):
    """UniAD's feature jitter: per token, Gaussian noise scaled by the token's norm over channels.

    The noise of a token is ``N(0, 1) * ||x|| / C * scale`` with probability ``prob`` per batch; no learnable
    part, so it is the natural non-adaptive competitor of ANG.
    """

    def __init__(self, scale: float, prob: float) -> None:
        super().__init__()
        self.scale = scale
        self.prob = prob

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.training or torch.rand(()).item() >= self.prob:
            return tokens
        channels = tokens.shape[-1]
        token_norms = tokens.norm(dim=-1, keepdim=True) / channels
        return tokens + torch.randn_like(tokens) * token_norms * self.scale


def build_noise(
    kind: str, num_tokens: int, channels: int, *, noise_intensity: float, ang_init: float,
    jitter_scale: float, jitter_prob: float,
) -> nn.Module:
    """The noise generator named by ``kind`` (``ang``, ``jitter`` or ``none``)."""
    if kind == "ang":
        return AdaptiveNoiseGenerator(num_tokens, channels, noise_intensity, ang_init)
    if kind == "jitter":
        return FeatureJitter(jitter_scale, jitter_prob)
    return nn.Identity()
