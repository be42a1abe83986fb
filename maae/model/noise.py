"""Training-time feature noise: the paper's adaptive noise generator (ANG) and its variants, UniAD's feature
jitter, and dropout (Dinomaly's noisy bottleneck).

Noise is what keeps a feature auto encoder from learning the identity: it is added to the input features
in training only, while the reconstruction target stays clean.
"""

from __future__ import annotations

import torch
from torch import nn

from maae.config import NOISE_KINDS


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
      to zero within a few dozen epochs of the sweep preset (measured: |W| fell linearly from 110 to 29 in
      34 epochs).
    * The penalty is ``R(W) = mean((W_hat - 1)^2)``: the L2 distance of the normalised weights from uniform
      noise, per element like ``L_e``. It is zero for the uniform start and grows with the deviation, so the
      adversary and the penalty meet at a finite, stable re-weighting.

    Two variants, for the ablation of these choices:

    * ``normalise=False`` is the formula as printed: ``eps' = A * W (.) eps`` with the raw ``W``, and the
      penalty ``R(W) = ||W||_2`` (Frobenius norm).
    * ``trainable=False`` freezes ``W`` at its uniform start: plain Gaussian noise of intensity ``A`` with no
      adversary, the control that tests whether the adversary matters.
    """

    def __init__(
        self, num_tokens: int, channels: int, noise_intensity: float, init_value: float, *,
        normalise: bool = True, trainable: bool = True,
    ) -> None:
        super().__init__()
        self.noise_intensity = noise_intensity
        self.normalise = normalise
        self.trainable = trainable
        self.weight = nn.Parameter(torch.full((num_tokens, channels), float(init_value)), requires_grad=trainable)

    def normalised_weight(self) -> torch.Tensor:
        """``W / rms(W)``: the per-token, per-channel noise scale (root-mean-square 1)."""
        rms = self.weight.pow(2).mean().sqrt().clamp_min(torch.finfo(self.weight.dtype).tiny)
        return self.weight / rms

    def noise_scale(self) -> torch.Tensor:
        """The factor that multiplies ``A * eps``: ``W_hat``, or the raw ``W`` when not normalising."""
        return self.normalised_weight() if self.normalise else self.weight

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens`` is B x N x C; noise is added in training mode only."""
        if not self.training or self.noise_intensity == 0:
            return tokens
        eps = torch.randn_like(tokens)
        return tokens + self.noise_intensity * self.noise_scale() * eps

    def regulariser(self) -> torch.Tensor:
        """``R(W)``: ``mean((W_hat - 1)^2)``, how far the noise layout has moved from uniform; or, when not
        normalising, the paper's ``||W||_2``."""
        if not self.normalise:
            return self.weight.norm()
        return (self.normalised_weight() - 1).pow(2).mean()

    def spread(self) -> torch.Tensor:
        """The standard deviation of ``W_hat`` over its entries: 0 for uniform noise, in every variant."""
        return self.normalised_weight().std(unbiased=False)

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


# kind -> (normalise W, train W) of the ANG variants.
_ANG_VARIANTS = {"ang": (True, True), "ang_literal": (False, True), "fixed": (True, False)}


def build_noise(
    kind: str, num_tokens: int, channels: int, *, noise_intensity: float, ang_init: float,
    jitter_scale: float, jitter_prob: float, dropout_rate: float,
) -> nn.Module:
    """The noise generator named by ``kind`` (one of :data:`NOISE_KINDS`).

    ``dropout`` zeroes input features with probability ``dropout_rate`` (and scales the rest by
    ``1 / (1 - dropout_rate)``), in training only: Dinomaly's noisy bottleneck, applied where the other
    generators add their noise, on the auto encoder's input projection.
    """
    if kind in _ANG_VARIANTS:
        normalise, trainable = _ANG_VARIANTS[kind]
        return AdaptiveNoiseGenerator(num_tokens, channels, noise_intensity, ang_init, normalise=normalise,
                                      trainable=trainable)
    if kind == "jitter":
        return FeatureJitter(jitter_scale, jitter_prob)
    if kind == "dropout":
        return nn.Dropout(dropout_rate)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown noise {kind!r}; expected one of {NOISE_KINDS}")
