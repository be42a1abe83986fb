"""Merging the backbone's four stages into one feature map on the token grid.

The token grid is the grid of one backbone stage, ``token_stage`` (an index into the stages): the deepest
one (stride 16, the paper's), or stage 3 (stride 8, twice the tokens per side). Two merges, selected by
``use_ffm``:

* :class:`FeatureFusionModule` (paper 2.1): the lowest stage is down-sampled by a 3x3 stride-2 convolution
  that keeps its channel count, concatenated with the next stage, and the result becomes the new low level;
  repeated until the token stage. Stages deeper than the token stage (only with a stride-8 grid) are brought
  up to it bilinearly and concatenated.
* :class:`BilinearMerge`, the ablation baseline (UniAD's merge): every stage is bilinearly resized to the
  token grid and the stages are concatenated.

Both end in a per-channel standardisation without learnable scale (:class:`ChannelStandardisation`, a
:class:`torch.nn.BatchNorm2d` with ``affine=False``). That is how a *trainable* FFM cannot collapse the very
target it produces: whatever the convolutions learn, every output channel has unit variance over the batch,
so a constant output (zero loss) is unreachable. The auto encoder's target is additionally detached (see
:mod:`maae.model.torch_model`), so the reconstruction loss never pulls the target towards the reconstruction.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

DOWNSAMPLE_KERNEL = 3
DOWNSAMPLE_STRIDE = 2
MERGE_KINDS = ("ffm", "bilinear")


class ChannelStandardisation(nn.BatchNorm2d):
    """Per-channel standardisation without learnable scale (``BatchNorm2d(affine=False)``, same state).

    While exported to ONNX it applies the running statistics as plain arithmetic: the ONNX exporter refuses
    ``batch_norm`` on a tensor whose channel count it cannot infer, which is what the concatenation of
    bilinearly resized stages is in a traced graph. Everywhere else it is ``BatchNorm2d`` itself.
    """

    def __init__(self, channels: int) -> None:
        super().__init__(channels, affine=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.training or not torch.onnx.is_in_onnx_export():
            return super().forward(features)
        mean = self.running_mean.view(1, -1, 1, 1)
        scale = torch.rsqrt(self.running_var.view(1, -1, 1, 1) + self.eps)
        return (features - mean) * scale


class FeatureFusionModule(nn.Module):
    """Iterative strided-convolution fusion of stages with strides 2, 4, 8, 16 (paper Fig. 3a).

    ``token_stage`` (default: the last) is the stage whose grid the output has; the down-sampling chain stops
    there and deeper stages are bilinearly up-sampled to it.
    """

    def __init__(self, stage_channels: Sequence[int], token_stage: int | None = None) -> None:
        super().__init__()
        self.stage_channels = tuple(stage_channels)
        self.token_stage = _token_stage(self.stage_channels, token_stage)
        downsamplers = []
        low_channels = self.stage_channels[0]
        for next_channels in self.stage_channels[1:self.token_stage + 1]:
            downsamplers.append(_channel_preserving_downsampler(low_channels))
            low_channels += next_channels
        self.downsamplers = nn.ModuleList(downsamplers)
        self.out_channels = sum(self.stage_channels)
        self.norm = ChannelStandardisation(self.out_channels)

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        low = stages[0]
        for downsample, high in zip(self.downsamplers, stages[1:self.token_stage + 1], strict=True):
            low = downsample(low)
            if low.shape[-2:] != high.shape[-2:]:
                # Odd sizes (e.g. 7 -> 4 vs 3) only happen off the multiple-of-16 grid; align to the deeper stage.
                low = F.interpolate(low, size=high.shape[-2:], mode="bilinear", align_corners=False)
            low = torch.cat([low, high], dim=1)
        deeper = stages[self.token_stage + 1:]
        if deeper:
            low = torch.cat([low, *_resize_all(deeper, low.shape[-2:])], dim=1)
        return self.norm(low)


class BilinearMerge(nn.Module):
    """UniAD's merge: resize every stage to the token stage's grid, then concatenate (ablation baseline)."""

    def __init__(self, stage_channels: Sequence[int], token_stage: int | None = None) -> None:
        super().__init__()
        self.token_stage = _token_stage(tuple(stage_channels), token_stage)
        self.out_channels = sum(stage_channels)
        self.norm = ChannelStandardisation(self.out_channels)

    def forward(self, stages: Sequence[torch.Tensor]) -> torch.Tensor:
        return self.norm(torch.cat(_resize_all(stages, stages[self.token_stage].shape[-2:]), dim=1))


def build_merge(
    kind: str, stage_channels: Sequence[int], token_stage: int | None = None,
) -> FeatureFusionModule | BilinearMerge:
    """The stage merge named by ``kind``: ``ffm`` (paper 2.1) or ``bilinear`` (UniAD's, the ablation)."""
    if kind == "ffm":
        return FeatureFusionModule(stage_channels, token_stage)
    if kind == "bilinear":
        return BilinearMerge(stage_channels, token_stage)
    raise ValueError(f"unknown merge {kind!r}; expected one of {MERGE_KINDS}")


def _token_stage(stage_channels: tuple[int, ...], token_stage: int | None) -> int:
    last = len(stage_channels) - 1
    if token_stage is None:
        return last
    if not 0 <= token_stage <= last:
        raise ValueError(f"token_stage {token_stage} is not a stage index (0..{last})")
    return token_stage


def _resize_all(stages: Sequence[torch.Tensor], size: torch.Size) -> list[torch.Tensor]:
    """Every stage bilinearly resized to ``size`` (stages already there are passed through untouched)."""
    return [
        stage if stage.shape[-2:] == size
        else F.interpolate(stage, size=size, mode="bilinear", align_corners=False)
        for stage in stages
    ]


def _channel_preserving_downsampler(channels: int) -> nn.Conv2d:
    """A 3x3 stride-2 convolution with ``channels`` in and out.

    Initialised as a per-channel 3x3 average, so training starts from an anti-aliased down-sampling of each
    channel on its own (a sensible fusion) rather than from a random mixing of channels.
    """
    conv = nn.Conv2d(
        channels, channels, kernel_size=DOWNSAMPLE_KERNEL, stride=DOWNSAMPLE_STRIDE,
        padding=DOWNSAMPLE_KERNEL // 2, bias=True,
    )
    with torch.no_grad():
        conv.weight.zero_()
        taps = DOWNSAMPLE_KERNEL * DOWNSAMPLE_KERNEL
        for channel in range(channels):
            conv.weight[channel, channel].fill_(1.0 / taps)
        conv.bias.zero_()
    return conv
