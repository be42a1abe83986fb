"""Training-time feature noise: the paper's adaptive noise generator (ANG) and UniAD's feature jitter.

Noise is what keeps a feature auto encoder from learning the identity: it is added to the input features
in training only, while the reconstruction target stays clean.
"""

from __future__ import annotations

import torch
from torch import nn


class AdaptiveNoiseGenerator(nn.Module):
    """ANG (paper 2.2): ``eps' = A * W (.) eps`` with a learnable ``W`` of size tokens x channels.

    ``W`` is trained adversarially: it *maximises* the reconstruction loss (weight ``lambda_ang``) under a
    penalty that keeps it from running away (weight ``lambda_re``). The sign flip lives in
    :meth:`adversarial_gradient`, which the training step applies after one shared backward pass.

    Two choices the paper leaves open, made explicit here:

    * ``W`` enters normalised to unit root-mean-square, ``W_hat = W / rms(W)``, so ``A`` (noise_intensity)
      alone sets the overall noise level, in units of the standardised features' spread, and the adversary
      decides *where* (which tokens and channels) the noise goes - the paper's stated purpose of ANG.
      Without it, the paper's raw ``||W||_2`` term has a per-entry gradient of order 1/sqrt(N C) against the
      adversarial term's 1/(N C) (``L_e`` is a mean over N C elements), and W - with it all noise - decayed
      to zero within a few dozen epochs of the quick preset (measured: |W| fell linearly from 110 to 29 in
      34 epochs).
    * The penalty is ``R(W) = mean((W_hat - 1)^2)``: the L2 distance of the normalised weights from uniform
      noise, per element like ``L_e``. It is zero for the uniform start and grows with the deviation, so the
      adversary and the penalty meet at a finite, stable re-weighting.
    """

    def __init__(self, num_tokens: int, channels: int, noise_intensity: float, init_value: float) -> None:
        super().__init__()
        self.noise_intensity = noise_intensity
        self.weight = nn.Parameter(torch.full((num_tokens, channels), float(init_value)))

    def normalised_weight(self) -> torch.Tensor:
        """``W / rms(W)``: the per-token, per-channel noise scale (root-mean-square 1)."""
        rms = self.weight.pow(2).mean().sqrt().clamp_min(torch.finfo(self.weight.dtype).tiny)
        return self.weight / rms

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` is B x N x C; noise is added in training mode only."""
        if not self.training or self.noise_intensity == 0:
            return tokens
        eps = torch.randn_like(tokens)
        return tokens + self.noise_intensity * self.normalised_weight() * eps

    def regulariser(self) -> torch.Tensor:
        """``R(W) = mean((W_hat - 1)^2)``: how far the noise layout has moved from uniform."""
        return (self.normalised_weight() - 1).pow(2).mean()

    def adversarial_gradient(self, lambda_ang: float, lambda_re: float) -> None:
        """Turn ``weight.grad`` (dL_e/dW) into the gradient of ``L_ANG = -lambda_ang L_e + lambda_re R(W)``."""
        if self.weight.grad is None:
            return
        with torch.enable_grad():
            (penalty_grad,) = torch.autograd.grad(self.regulariser(), self.weight)
        self.weight.grad.mul_(-lambda_ang).add_(penalty_grad, alpha=lambda_re)


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
