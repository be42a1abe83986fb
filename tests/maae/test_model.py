"""Unit tests of the MAAE network: shapes, gradients, switches, ANG, attention, residual spacing."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from torch import nn

from maae.config import MAAEConfig
from maae.engine import NonFiniteLossError, build_optimizers, train_step
from maae.model import AnomalyMapGenerator, MAAEModel, build_model
from maae.model.attention import (
    ChannelSelfAttention,
    DilatedConv,
    MixedAttentionBlock,
    SpatialAttentionBlock,
    SpatialSelfAttention,
)
from maae.model.ffm import BilinearMerge, FeatureFusionModule
from maae.model.noise import AdaptiveNoiseGenerator, FeatureJitter
from maae.model.torch_model import ResidualGroup, residual_group_sizes

STAGE_CHANNELS = (4, 6, 8, 10)
IMAGE = 64  # stride-16 grid of 4x4


def tiny_config(**changes) -> MAAEConfig:
    base = dict(hidden_dim=16, num_heads=2, depth=2, residual_every=1, dilation=1, image_size=IMAGE,
                batch_size=4, lr=1e-3, epochs=1, seed=0)
    base.update(changes)
    return MAAEConfig(**base)


def stages(batch: int = 4, seed: int = 0) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return [torch.randn(batch, c, IMAGE // 2 ** (i + 1), IMAGE // 2 ** (i + 1), generator=generator)
            for i, c in enumerate(STAGE_CHANNELS)]


def test_ffm_shapes_and_gradients():
    ffm = FeatureFusionModule(STAGE_CHANNELS)
    inputs = [s.requires_grad_() for s in stages()]
    out = ffm(inputs)
    assert out.shape == (4, sum(STAGE_CHANNELS), IMAGE // 16, IMAGE // 16)
    out.square().mean().backward()
    assert all(s.grad is not None and s.grad.abs().sum() > 0 for s in inputs)
    assert all(conv.weight.grad is not None for conv in ffm.downsamplers)
    # every down-sampler keeps its channel count: low level grows by each next stage
    assert [c.in_channels for c in ffm.downsamplers] == [4, 10, 18]
    assert all(c.in_channels == c.out_channels and c.stride == (2, 2) and c.kernel_size == (3, 3)
               for c in ffm.downsamplers)


def test_bilinear_merge_is_the_uniad_baseline():
    merge = BilinearMerge(STAGE_CHANNELS)
    assert not any(p.requires_grad for p in merge.parameters())
    out = merge(stages())
    assert out.shape == (4, sum(STAGE_CHANNELS), 4, 4)


def test_ang_noise_only_in_training():
    ang = AdaptiveNoiseGenerator(num_tokens=16, channels=8, noise_intensity=0.5, init_value=1.0)
    tokens = torch.randn(2, 16, 8)
    ang.eval()
    assert torch.equal(ang(tokens), tokens)
    ang.train()
    noisy = ang(tokens)
    assert not torch.equal(noisy, tokens)
    assert (noisy - tokens).std().item() == pytest.approx(0.5, rel=0.25)


def test_ang_zero_intensity_adds_nothing():
    ang = AdaptiveNoiseGenerator(num_tokens=4, channels=3, noise_intensity=0.0, init_value=1.0).train()
    tokens = torch.randn(2, 4, 3)
    assert torch.equal(ang(tokens), tokens)


def _loss_with_fixed_noise(model, batch, seed: int) -> float:
    torch.manual_seed(seed)
    model.train()
    out = model(batch)
    return float(torch.nn.functional.mse_loss(out.reconstruction, out.target).detach())


def test_ang_weight_moves_towards_larger_reconstruction_loss():
    config = tiny_config(lambda_ang=1.0, lambda_re=0.0, noise_intensity=1.0, lr=0.05)
    model = build_model(config, STAGE_CHANNELS)
    optimizers = build_optimizers(model, config)
    batch = stages()
    # Freeze the auto encoder so only W changes: its step must increase L_e on the same noise draw.
    for group in optimizers.model.param_groups:
        group["lr"] = 0.0
    before = _loss_with_fixed_noise(model, batch, seed=123)
    w_before = model.adaptive_noise.weight.detach().clone()
    torch.manual_seed(123)
    train_step(model, optimizers, batch, config)
    after = _loss_with_fixed_noise(model, batch, seed=123)
    assert not torch.equal(w_before, model.adaptive_noise.weight.detach())
    assert after > before


def test_ang_penalty_pulls_noise_layout_back_to_uniform():
    config = tiny_config(lambda_ang=0.0, lambda_re=1.0, lr=0.05)
    model = build_model(config, STAGE_CHANNELS)
    optimizers = build_optimizers(model, config)
    ang = model.adaptive_noise
    assert ang.regulariser().item() == pytest.approx(0.0)  # uniform start
    with torch.no_grad():
        ang.weight.mul_(torch.linspace(0.2, 3.0, ang.weight.numel()).reshape(ang.weight.shape))
    penalty_before = ang.regulariser().item()
    for _ in range(5):
        metrics = train_step(model, optimizers, stages(), config)
    assert metrics["noise_penalty"] < penalty_before


def test_ang_noise_level_is_set_by_intensity_not_by_w_scale():
    ang = AdaptiveNoiseGenerator(num_tokens=16, channels=8, noise_intensity=0.5, init_value=7.0).train()
    tokens = torch.zeros(64, 16, 8)
    assert ang(tokens).pow(2).mean().sqrt().item() == pytest.approx(0.5, rel=0.05)


def test_ang_weight_not_in_autoencoder_optimiser():
    config = tiny_config()
    model = build_model(config, STAGE_CHANNELS)
    optimizers = build_optimizers(model, config)
    w = model.adaptive_noise.weight
    assert all(p is not w for g in optimizers.model.param_groups for p in g["params"])
    assert [p for g in optimizers.noise.param_groups for p in g["params"]] == [w]


def test_jitter_noise_scales_with_token_norm_and_only_in_training():
    jitter = FeatureJitter(scale=20.0, prob=1.0)
    tokens = torch.ones(1, 1000, 10) * 3.0
    jitter.eval()
    assert torch.equal(jitter(tokens), tokens)
    jitter.train()
    noise = jitter(tokens) - tokens
    expected_std = (3.0 * math.sqrt(10) / 10) * 20.0
    assert noise.std().item() == pytest.approx(expected_std, rel=0.1)


def test_spatial_attention_shapes_and_token_permutation_equivariance():
    attn = SpatialSelfAttention(dim=8, num_heads=2)
    x = torch.randn(2, 16, 8)
    perm = torch.randperm(16)
    assert torch.allclose(attn(x)[:, perm], attn(x[:, perm]), atol=1e-5)


def test_channel_attention_attends_over_channels():
    torch.manual_seed(0)
    attn = ChannelSelfAttention(num_tokens=16, num_heads=2)
    x = torch.randn(2, 16, 8)
    assert attn(x).shape == x.shape
    # Channels are its tokens: the attention matrix is C x C ...
    assert attn.attention_matrix(x).shape == (2, 2, 8, 8)
    # ... and permuting channels permutes its output channels the same way (it would not if the transpose
    # were dropped: then channel order would be a fixed linear input dimension).
    perm = torch.randperm(8)
    assert torch.allclose(attn(x)[..., perm], attn(x[..., perm]), atol=1e-5)
    # whereas it is not equivariant to a permutation of spatial tokens (the token axis is its feature axis)
    token_perm = torch.randperm(16)
    assert not torch.allclose(attn(x)[:, token_perm], attn(x[:, token_perm]), atol=1e-3)


def test_channel_attention_falls_back_to_one_head_when_tokens_not_divisible():
    attn = ChannelSelfAttention(num_tokens=9, num_heads=2)
    assert attn.num_heads == 1
    assert attn(torch.randn(1, 9, 4)).shape == (1, 9, 4)


@pytest.mark.parametrize("dilation", [1, 2, 3])
def test_dilation_sets_the_receptive_field(dilation):
    grid = (9, 9)
    conv = DilatedConv(dim=1, dilation=dilation, grid=grid)
    nn.init.constant_(conv.conv.weight, 1.0)
    x = torch.zeros(1, 81, 1, requires_grad=True)
    out = conv(x)
    centre = 4 * 9 + 4
    out[0, centre, 0].backward()
    touched = {divmod(i, 9) for i in torch.nonzero(x.grad[0, :, 0]).flatten().tolist()}
    expected = {(4 + dy * dilation, 4 + dx * dilation) for dy in (-1, 0, 1) for dx in (-1, 0, 1)}
    assert touched == expected


def test_mixed_block_shapes_and_gradients():
    block = MixedAttentionBlock(dim=8, num_heads=2, grid=(4, 4), dilation=2)
    x = torch.randn(2, 16, 8, requires_grad=True)
    y = block(x)
    assert y.shape == x.shape
    y.sum().backward()
    assert x.grad is not None
    for name, p in block.named_parameters():
        assert p.grad is not None, name


@pytest.mark.parametrize("depth,every,sizes", [(18, 3, [3] * 6), (7, 3, [3, 3, 1]), (4, 4, [4]), (3, 1, [1, 1, 1])])
def test_residual_spacing_follows_m(depth, every, sizes):
    assert residual_group_sizes(depth, every) == sizes
    model = build_model(tiny_config(depth=depth, residual_every=every), STAGE_CHANNELS)
    assert [len(g.blocks) for g in model.groups] == sizes
    assert all(isinstance(g, ResidualGroup) for g in model.groups)


def test_residual_group_adds_its_input():
    group = ResidualGroup([nn.Linear(4, 4), nn.Linear(4, 4)])
    for block in group.blocks:
        nn.init.zeros_(block.weight)
        nn.init.zeros_(block.bias)
    x = torch.randn(3, 4)
    assert torch.equal(group(x), x)


def test_switches_build_the_baselines_they_name():
    full = build_model(tiny_config(), STAGE_CHANNELS)
    assert isinstance(full.merge, FeatureFusionModule)
    assert isinstance(full.noise, AdaptiveNoiseGenerator)
    assert all(isinstance(b, MixedAttentionBlock) for g in full.groups for b in g.blocks)

    baseline = build_model(tiny_config(use_ang=False, use_ffm=False, attention="spatial"), STAGE_CHANNELS)
    assert isinstance(baseline.merge, BilinearMerge)
    assert isinstance(baseline.noise, nn.Identity) and baseline.adaptive_noise is None
    assert all(isinstance(b, SpatialAttentionBlock) for g in baseline.groups for b in g.blocks)

    jitter = build_model(tiny_config(noise="jitter"), STAGE_CHANNELS)
    assert isinstance(jitter.noise, FeatureJitter)
    assert isinstance(build_model(tiny_config(noise="none"), STAGE_CHANNELS).noise, nn.Identity)


def test_model_takes_explicit_arguments_not_the_run_config():
    """Like timm's layers, the model gets the numbers it needs; build_model is the one config -> arguments map."""
    assert "config" not in inspect.signature(MAAEModel).parameters
    torch.manual_seed(0)
    direct = MAAEModel(STAGE_CHANNELS, (4, 4), merge="bilinear", hidden_dim=16, num_heads=2, depth=3,
                       residual_every=2, dilation=1, attention="spatial", noise="jitter", noise_intensity=1.0,
                       ang_init=1.0, jitter_scale=20.0, jitter_prob=1.0, dropout_rate=0.2)
    torch.manual_seed(0)
    built = build_model(tiny_config(use_ffm=False, depth=3, residual_every=2, attention="spatial", noise="jitter"),
                        STAGE_CHANNELS)
    assert not hasattr(direct, "config")
    direct_state, built_state = direct.state_dict(), built.state_dict()
    assert direct_state.keys() == built_state.keys()
    assert all(torch.equal(direct_state[name], built_state[name]) for name in direct_state)


# The state-dict names of the default model (ANG, FFM, mixed blocks) at depth 1, as checkpoints written before
# the model took explicit arguments hold them: renaming a module would make those checkpoints unloadable.
CHECKPOINT_NAMES = [
    "position_embed", "merge.downsamplers.0.weight", "merge.downsamplers.0.bias", "merge.downsamplers.1.weight",
    "merge.downsamplers.1.bias", "merge.downsamplers.2.weight", "merge.downsamplers.2.bias",
    "merge.norm.running_mean", "merge.norm.running_var", "merge.norm.num_batches_tracked", "noise.weight",
    "input_proj.weight", "input_proj.bias", "groups.0.blocks.0.norm.weight", "groups.0.blocks.0.norm.bias",
    "groups.0.blocks.0.spatial.qkv.weight", "groups.0.blocks.0.spatial.qkv.bias",
    "groups.0.blocks.0.spatial.proj.weight", "groups.0.blocks.0.spatial.proj.bias",
    "groups.0.blocks.0.channel.qkv.weight", "groups.0.blocks.0.channel.qkv.bias",
    "groups.0.blocks.0.channel.proj.weight", "groups.0.blocks.0.channel.proj.bias",
    "groups.0.blocks.0.dilated_conv.conv.weight", "groups.0.blocks.0.dilated_conv.conv.bias",
    "output_norm.weight", "output_norm.bias", "output_proj.weight", "output_proj.bias",
]


def test_state_dict_names_stay_those_of_existing_checkpoints():
    model = build_model(tiny_config(depth=1, residual_every=1), STAGE_CHANNELS)
    assert list(model.state_dict()) == CHECKPOINT_NAMES


def test_full_model_forward_backward_every_parameter_gets_gradient():
    config = tiny_config(depth=3, residual_every=2, dilation=2)
    model = build_model(config, STAGE_CHANNELS)
    out = model(stages())
    assert out.reconstruction.shape == out.target.shape == (4, sum(STAGE_CHANNELS), 4, 4)
    assert not out.target.requires_grad  # the target is detached: loss never pulls it
    torch.nn.functional.mse_loss(out.reconstruction, out.target).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert missing == []


def test_trainable_ffm_keeps_target_variance_over_training():
    """The anti-collapse choice: a trained FFM's output keeps unit per-channel variance (no constant target)."""
    torch.manual_seed(0)
    config = tiny_config(lr=1e-2, depth=2, residual_every=1)
    model = build_model(config, STAGE_CHANNELS)
    optimizers = build_optimizers(model, config)
    data = [stages(batch=8, seed=s) for s in range(4)]
    first_losses, last_losses = [], []
    for epoch in range(40):
        for batch in data:
            loss = train_step(model, optimizers, batch, config)["loss"]
            (first_losses if epoch == 0 else last_losses).append(loss)
    assert max(conv.weight.grad.abs().max().item() for conv in model.merge.downsamplers) > 0  # FFM trained
    model.train()
    target = model(data[0]).target
    per_channel_var = target.transpose(0, 1).flatten(1).var(dim=1)
    assert per_channel_var.min().item() > 0.5
    assert target.var().item() == pytest.approx(1.0, abs=0.2)
    model.eval()
    eval_var = model(data[0]).target.var().item()
    assert eval_var > 0.3  # running statistics keep the evaluated target spread out too


def test_train_step_rejects_non_finite_loss():
    config = tiny_config()
    model = build_model(config, STAGE_CHANNELS)
    optimizers = build_optimizers(model, config)
    bad = stages()
    bad[0][0, 0, 0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError):
        train_step(model, optimizers, bad, config)


def test_anomaly_map_generator_upsamples_and_smooths():
    recon = torch.zeros(1, 3, 4, 4)
    target = torch.zeros(1, 3, 4, 4)
    target[0, :, 1, 2] = 2.0
    raw = AnomalyMapGenerator(image_size=32, sigma=0)(recon, target)
    smooth = AnomalyMapGenerator(image_size=32, sigma=2)(recon, target)
    assert raw.shape == smooth.shape == (1, 32, 32)
    peak = divmod(int(raw[0].argmax()), 32)
    assert 8 <= peak[0] <= 15 and 16 <= peak[1] <= 23  # token (1, 2) of a 4x4 grid covers rows 8-15, cols 16-23
    assert smooth.max() < raw.max() and smooth.sum() == pytest.approx(raw.sum().item(), rel=0.05)


class _StagesToMerge(nn.Module):
    """A merge taking the four stages as separate inputs, as a traced graph sees them."""

    def __init__(self, merge: nn.Module) -> None:
        super().__init__()
        self.merge = merge

    def forward(self, s1: torch.Tensor, s2: torch.Tensor, s3: torch.Tensor, s4: torch.Tensor) -> torch.Tensor:
        return self.merge([s1, s2, s3, s4])


@pytest.mark.parametrize("merge_class", [BilinearMerge, FeatureFusionModule])
def test_both_merges_export_to_onnx_with_their_running_statistics(merge_class: type) -> None:
    """The ONNX exporter refused batch_norm after the bilinear merge's concatenation (channels unknown in the
    trace); the standardisation exports as arithmetic and computes what PyTorch computes in eval mode."""
    import io

    import numpy as np
    import onnxruntime

    torch.manual_seed(0)
    merge = merge_class(STAGE_CHANNELS)
    for seed in range(3):  # running statistics away from their initial 0 / 1
        merge(stages(seed=seed))
    graph = _StagesToMerge(merge).eval()
    inputs = stages(batch=2, seed=7)
    names = [f"s{i}" for i in range(1, 5)]
    buffer = io.BytesIO()
    with torch.no_grad():
        torch.onnx.export(graph, tuple(inputs), buffer, dynamo=False, input_names=names, output_names=["merged"],
                          dynamic_axes={name: {0: "batch"} for name in [*names, "merged"]}, opset_version=17)
        expected = graph(*inputs).numpy()
    session = onnxruntime.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    (exported,) = session.run(None, {name: t.numpy() for name, t in zip(names, inputs, strict=True)})
    assert not np.allclose(merge.norm.running_var.numpy(), 1.0)
    np.testing.assert_allclose(exported, expected, rtol=1e-4, atol=1e-5)
