"""The frozen-backbone feature cache: computed once, reused, keyed, crash-safe."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from maae.backbone import BUNDLED_BACKBONE, backbone_fingerprint, build_backbone
from maae.data import list_samples
from maae.features import CACHE_DTYPE, MANIFEST, cache_key, compute_features, load_or_compute


@pytest.fixture(scope="module")
def backbone():
    return build_backbone(BUNDLED_BACKBONE, "bundled")


def _load(backbone, samples, cache_dir, size=64):
    return load_or_compute(backbone, samples, size, backbone_fingerprint=backbone_fingerprint(BUNDLED_BACKBONE,
                           "bundled"), cache_dir=cache_dir, batch_size=8, device=torch.device("cpu"))


def test_cache_matches_direct_computation_in_half_precision(backbone, tiny_data: Path, tmp_path: Path):
    samples = list_samples(tiny_data, "grass", "test")
    cached = _load(backbone, samples, tmp_path)
    direct = compute_features(backbone, samples, 64, batch_size=8, device=torch.device("cpu"))
    assert [s.dtype for s in cached.stages] == [np.dtype(CACHE_DTYPE)] * 4
    assert all(isinstance(s, np.memmap) for s in cached.stages)
    for got, want in zip(cached.stages, direct, strict=True):
        assert got.shape == want.shape
        np.testing.assert_allclose(got.astype(np.float32), want, rtol=1e-2, atol=1e-2)


def test_second_load_reuses_the_entry(backbone, tiny_data: Path, tmp_path: Path):
    samples = list_samples(tiny_data, "grass", "train")
    _load(backbone, samples, tmp_path)
    entries = [p for p in tmp_path.iterdir() if p.is_dir()]
    assert len(entries) == 1
    stamp = (entries[0] / MANIFEST).stat().st_mtime_ns
    _load(backbone, samples, tmp_path)
    assert (entries[0] / MANIFEST).stat().st_mtime_ns == stamp
    assert [p for p in tmp_path.iterdir() if p.is_dir()] == entries


def test_key_changes_with_image_size_backbone_and_files(tiny_data: Path, tmp_path: Path):
    samples = list_samples(tiny_data, "hex_nut", "train")
    base = cache_key(samples, "bundled:x", 64)
    assert cache_key(samples, "bundled:x", 128) != base
    assert cache_key(samples, "hub:y", 64) != base
    assert cache_key(samples[:-1], "bundled:x", 64) != base
    copy = tmp_path / "copy"
    copy.mkdir()
    image = samples[0].image_path
    target = copy / image.name
    target.write_bytes(image.read_bytes())
    moved = [type(samples[0])(target, None, "hex_nut", "train", "good")] + samples[1:]
    key_before = cache_key(moved, "bundled:x", 64)
    later = time.time() + 5
    os.utime(target, (later, later))
    assert cache_key(moved, "bundled:x", 64) != key_before


def test_a_crash_leaves_no_complete_entry(backbone, tiny_data: Path, tmp_path: Path, monkeypatch):
    import maae.features as features

    samples = list_samples(tiny_data, "brick", "test")

    def exploding_save(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(features.np, "save", exploding_save)
    with pytest.raises(OSError):
        _load(backbone, samples, tmp_path)
    monkeypatch.undo()
    assert not any((p / MANIFEST).exists() for p in tmp_path.iterdir() if p.is_dir())
    assert not [p for p in tmp_path.iterdir() if p.is_dir()]  # staging folder removed
    assert len(_load(backbone, samples, tmp_path)) == len(samples)


def test_atomic_writes_leave_ordinary_permissions(tmp_path: Path):
    from maae.io import write_text_atomic

    target = tmp_path / "shared.csv"
    write_text_atomic(target, "a,b\n")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
