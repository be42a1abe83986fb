"""Tests of maae.backbone with the real bundled ImageNet weights (no mocks, no network).

The classification tests are what proves the bundled weights are real and correctly mapped onto timm's
layers: a random network, or a mapping that swapped two tensors, would not name the cat in scikit-image's photo.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
import safetensors.torch
import skimage.data
import timm
import torch
import torch.nn.functional as F

from maae.backbone import (
    BUNDLED_BACKBONE,
    FEATURE_STAGES,
    FrozenBackbone,
    backbone_fingerprint,
    build_backbone,
    build_classifier,
)
from maae.errors import BackboneError

SEED = 0
EGYPTIAN_CAT = 285  # ImageNet class of skimage.data.chelsea()
ESPRESSO = 967  # ImageNet class of skimage.data.coffee()
LITE0_CHANNELS = (16, 24, 40, 112)
EFFICIENTNET_STRIDES = (2, 4, 8, 16)
# A hub lookup that fails fast takes well under a second; the hub client's retries would take ~45 s.
FAST_FAILURE_S = 10.0


@pytest.fixture(scope="module")
def classifier() -> torch.nn.Module:
    return build_classifier()


@pytest.fixture(scope="module")
def backbone() -> FrozenBackbone:
    return build_backbone(BUNDLED_BACKBONE)


def _photo_batch(image: np.ndarray, model: torch.nn.Module) -> torch.Tensor:
    """The whole photograph resized to the model's pretrained input size and normalised with its mean/std."""
    config = model.pretrained_cfg
    height, width = config["input_size"][1:]
    pixels = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255.0
    resized = F.interpolate(pixels, size=(height, width), mode=config["interpolation"], antialias=True)
    mean = torch.tensor(config["mean"]).view(1, -1, 1, 1)
    std = torch.tensor(config["std"]).view(1, -1, 1, 1)
    return (resized.clamp(0.0, 1.0) - mean) / std


def _predicted_class(model: torch.nn.Module, image: np.ndarray) -> int:
    with torch.no_grad():
        return int(model.eval()(_photo_batch(image, model)).argmax(dim=1).item())


def _random_images(size: int, count: int = 2) -> torch.Tensor:
    return torch.rand(count, 3, size, size, generator=torch.Generator().manual_seed(SEED))


@pytest.mark.parametrize(("photo", "expected_class"), [("chelsea", EGYPTIAN_CAT), ("coffee", ESPRESSO)])
def test_bundled_weights_classify_real_photographs(classifier, photo, expected_class):
    assert _predicted_class(classifier, getattr(skimage.data, photo)()) == expected_class


def test_random_weights_do_not_classify_the_cat():
    torch.manual_seed(SEED)
    untrained = timm.create_model(BUNDLED_BACKBONE, pretrained=False)
    assert _predicted_class(untrained, skimage.data.chelsea()) != EGYPTIAN_CAT


def test_backbone_carries_the_classifier_weights(backbone, classifier):
    classifier_tensors = classifier.state_dict()
    for key, tensor in backbone.features.state_dict().items():
        assert torch.equal(tensor, classifier_tensors[key]), key


@pytest.mark.parametrize("size", [128, 256])
def test_feature_shapes_channels_and_strides(backbone, size):
    assert backbone.name == BUNDLED_BACKBONE
    assert backbone.channels == LITE0_CHANNELS
    assert backbone.strides == EFFICIENTNET_STRIDES
    features = backbone(_random_images(size))
    assert len(features) == len(FEATURE_STAGES)
    for feature, channels, stride in zip(features, LITE0_CHANNELS, EFFICIENTNET_STRIDES, strict=True):
        assert tuple(feature.shape) == (2, channels, size // stride, size // stride)
        assert torch.isfinite(feature).all()


def test_backbone_is_frozen_and_stays_in_eval_mode(backbone):
    assert not any(parameter.requires_grad for parameter in backbone.parameters())
    statistics = {key: value.clone() for key, value in backbone.state_dict().items() if "running" in key}
    images = _random_images(64).requires_grad_(True)
    returned = backbone.train()
    assert returned is backbone
    assert not any(module.training for module in backbone.modules())
    features = backbone(images)
    assert not any(feature.requires_grad for feature in features)
    for key, value in statistics.items():
        assert torch.equal(backbone.state_dict()[key], value), key


def test_backbone_rejects_images_it_cannot_normalise(backbone):
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        backbone(torch.zeros(1, 3, 64, 64, dtype=torch.uint8))
    with pytest.raises(ValueError, match="B x 3 x H x W"):
        backbone(torch.zeros(1, 1, 64, 64))


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_local_checkpoint_round_trip(tmp_path, backbone, classifier, suffix):
    path = tmp_path / f"lite0{suffix}"
    if suffix == ".safetensors":
        safetensors.torch.save_file(classifier.state_dict(), str(path))
    else:
        torch.save(classifier.state_dict(), path)
    loaded = build_backbone(BUNDLED_BACKBONE, str(path))
    images = _random_images(128)
    for expected, actual in zip(backbone(images), loaded(images), strict=True):
        assert torch.equal(expected, actual)


def test_checkpoint_wrapped_in_a_training_dict_is_unwrapped(tmp_path, classifier):
    path = tmp_path / "wrapped.pth"
    torch.save({"state_dict": classifier.state_dict(), "epoch": 3}, path)
    assert build_backbone(BUNDLED_BACKBONE, str(path)).channels == LITE0_CHANNELS


def test_corrupt_checkpoint_raises_backbone_error(tmp_path):
    path = tmp_path / "corrupt.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(BackboneError, match="corrupt.pth"):
        build_backbone(BUNDLED_BACKBONE, str(path))


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "module.pth"
    torch.save(timm.create_model(BUNDLED_BACKBONE, pretrained=False), path)
    with pytest.raises(BackboneError, match="module.pth"):
        build_backbone(BUNDLED_BACKBONE, str(path))


def test_checkpoint_of_another_architecture_raises_backbone_error(tmp_path):
    path = tmp_path / "resnet18.pth"
    torch.save(timm.create_model("resnet18", pretrained=False).state_dict(), path)
    with pytest.raises(BackboneError, match="resnet18.pth") as caught:
        build_backbone(BUNDLED_BACKBONE, str(path))
    assert "missing" in str(caught.value) and "\n" not in str(caught.value)


def test_checkpoint_missing_one_tensor_raises_backbone_error(tmp_path, classifier):
    state_dict = dict(classifier.state_dict())
    del state_dict["conv_stem.weight"]
    path = tmp_path / "partial.pth"
    torch.save(state_dict, path)
    with pytest.raises(BackboneError, match="1 missing .*conv_stem.weight"):
        build_backbone(BUNDLED_BACKBONE, str(path))


def test_missing_checkpoint_file_raises_backbone_error(tmp_path):
    with pytest.raises(BackboneError, match="no-such.pth"):
        build_backbone(BUNDLED_BACKBONE, str(tmp_path / "no-such.pth"))


def test_architecture_with_flattened_feature_keys_loads_from_a_checkpoint(tmp_path):
    """timm's generic feature wrapper renames ``stages.0`` to ``stages_0``; the weights must still arrive."""
    torch.manual_seed(SEED)
    classifier = timm.create_model("convnext_atto", pretrained=False).eval()
    path = tmp_path / "convnext_atto.pth"
    torch.save(classifier.state_dict(), path)
    loaded = build_backbone("convnext_atto", str(path))
    images = _random_images(64)
    normalised = (images - loaded.pixel_mean) / loaded.pixel_std
    with torch.no_grad():
        expected = classifier.forward_intermediates(normalised, indices=len(FEATURE_STAGES), intermediates_only=True)
    for want, got in zip(expected, loaded(images), strict=True):
        torch.testing.assert_close(got, want)


def test_bundled_weights_refuse_another_model():
    with pytest.raises(BackboneError, match="bundled"):
        build_backbone("efficientnet_b4", "bundled")


def test_unknown_model_name_lists_close_matches():
    with pytest.raises(BackboneError, match="efficientnet_b8"):
        build_backbone("efficientnet_b9")


def test_hub_offline_fails_fast_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    started = time.monotonic()
    with pytest.raises(BackboneError) as caught:
        build_backbone("efficientnet_b4", "hub")
    message = str(caught.value)
    assert time.monotonic() - started < FAST_FAILURE_S
    assert "\n" not in message
    assert "hub weights could not be had" in message and "bundled" in message and "path" in message


def test_hub_weights_load_from_the_cache_when_offline(tmp_path, monkeypatch, backbone, classifier):
    """A hub cache laid out as huggingface_hub writes it serves ``weights="hub"`` with no network."""
    hub_id = timm.models.get_pretrained_cfg(BUNDLED_BACKBONE).hf_hub_id
    commit = "0" * 40
    repo_dir = tmp_path / f"models--{hub_id.replace('/', '--')}"
    snapshot = repo_dir / "snapshots" / commit
    snapshot.mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    safetensors.torch.save_file(classifier.state_dict(), str(snapshot / "model.safetensors"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    from_hub = build_backbone(BUNDLED_BACKBONE, "hub")
    images = _random_images(64)
    for expected, actual in zip(backbone(images), from_hub(images), strict=True):
        assert torch.equal(expected, actual)


def test_fingerprint_is_stable_and_tells_sources_apart(tmp_path, classifier):
    bundled = backbone_fingerprint(BUNDLED_BACKBONE, "bundled")
    assert bundled == backbone_fingerprint(BUNDLED_BACKBONE, "bundled")
    assert bundled == backbone_fingerprint(BUNDLED_BACKBONE, "auto")
    hub = backbone_fingerprint(BUNDLED_BACKBONE, "hub")
    assert hub.startswith("hub:") and hub != bundled
    assert backbone_fingerprint("efficientnet_b4", "auto").startswith("hub:efficientnet_b4")

    first, copy, other = tmp_path / "a.pth", tmp_path / "b.pth", tmp_path / "c.pth"
    torch.save(classifier.state_dict(), first)
    copy.write_bytes(first.read_bytes())
    torch.manual_seed(SEED)
    torch.save(timm.create_model(BUNDLED_BACKBONE, pretrained=False).state_dict(), other)
    from_file = backbone_fingerprint(BUNDLED_BACKBONE, str(first))
    assert from_file == backbone_fingerprint(BUNDLED_BACKBONE, str(copy))  # content, not path
    assert from_file not in (bundled, hub)
    assert from_file != backbone_fingerprint(BUNDLED_BACKBONE, str(other))


def test_fingerprint_rejects_what_build_backbone_rejects(tmp_path):
    with pytest.raises(BackboneError):
        backbone_fingerprint("efficientnet_b4", "bundled")
    with pytest.raises(BackboneError):
        backbone_fingerprint(BUNDLED_BACKBONE, str(Path(tmp_path) / "missing.pth"))
