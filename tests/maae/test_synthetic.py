"""Tests of the embedded data set generator (maae.synthetic), read back through maae.data."""

from __future__ import annotations

import hashlib
import json
import socket
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import maae.synthetic as synthetic
from maae.data import AnomalyDataset, list_samples, validate_dataset
from maae.errors import ConfigError, DataError
from maae.synthetic import (
    CATEGORIES,
    CATEGORY_NAMES,
    EMBEDDED_IMAGE_SIZE,
    EMBEDDED_VERSION,
    MIN_DEFECT_AREA,
    VISIBLE_CHANGE,
    PhotoLibrary,
    embedded_data_root,
    generate_dataset,
    render_sample,
)

SMALL = {"train_per_category": 3, "test_good": 2, "test_per_defect": 2, "image_size": 128}
TEXTURES = ("brick", "grass", "gravel")
OBJECTS = ("hex_nut", "capsule", "bottle_cap")


def file_hashes(root: Path) -> dict[str, str]:
    return {str(path.relative_to(root)): hashlib.sha256(path.read_bytes()).hexdigest()
            for path in sorted(root.rglob("*.png"))}


@pytest.fixture(scope="module")
def small_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("embedded") / "small"
    assert generate_dataset(root, seed=3, **SMALL) == list(CATEGORY_NAMES)
    return root


@pytest.fixture(scope="module")
def cached_default_set(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The default-size set, made through the cache (about 10 s on 2 cores): (cache base, data root)."""
    base = tmp_path_factory.mktemp("cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(synthetic.DATA_CACHE_ENV, str(base))
        root = embedded_data_root(seed=0)
    return base, root


def test_categories_mix_textures_and_objects_with_three_defects_each() -> None:
    assert set(TEXTURES + OBJECTS) == set(CATEGORY_NAMES)
    assert len(CATEGORY_NAMES) >= 6
    for spec in CATEGORIES:
        assert len(spec.defects) >= 3 and "good" not in spec.defects


def test_layout_counts_and_masks(small_set: Path) -> None:
    for spec in CATEGORIES:
        folder = small_set / spec.name
        assert len(list((folder / "train" / "good").glob("*.png"))) == SMALL["train_per_category"]
        assert len(list((folder / "test" / "good").glob("*.png"))) == SMALL["test_good"]
        assert sorted(p.name for p in (folder / "test").iterdir()) == sorted(["good", *spec.defects])
        for defect in spec.defects:
            images = sorted((folder / "test" / defect).glob("*.png"))
            assert len(images) == SMALL["test_per_defect"]
            for image_path in images:
                image = Image.open(image_path)
                assert image.mode == "RGB" and image.size == (SMALL["image_size"],) * 2
                mask = np.asarray(Image.open(folder / "ground_truth" / defect / f"{image_path.stem}_mask.png"))
                assert mask.shape == (SMALL["image_size"],) * 2 and mask.dtype == np.uint8
                assert set(np.unique(mask)) == {0, 255}
    metadata = json.loads((small_set / synthetic.METADATA_FILE).read_text())
    assert metadata["version"] == EMBEDDED_VERSION and metadata["seed"] == 3


def test_data_reader_round_trip(small_set: Path) -> None:
    assert validate_dataset(small_set) == list(CATEGORY_NAMES)
    samples = list_samples(small_set, "capsule", "test")
    assert len(samples) == SMALL["test_good"] + 3 * SMALL["test_per_defect"]
    dataset = AnomalyDataset(samples, 64, list(CATEGORY_NAMES))
    for index in range(len(dataset)):
        item = dataset[index]
        assert item["category_index"] == CATEGORY_NAMES.index("capsule")
        assert (float(item["mask"].sum()) > 0) == (item["label"] == 1)


def test_saved_files_are_the_rendering_and_mask_is_exactly_the_changed_pixels(small_set: Path) -> None:
    for spec in CATEGORIES:
        for defect in spec.defects:
            for index in range(SMALL["test_per_defect"]):
                sample = render_sample(spec.name, defect, seed=3, index=index, image_size=SMALL["image_size"])
                saved = np.asarray(Image.open(small_set / spec.name / "test" / defect / f"{index:03d}.png"))
                mask = np.asarray(Image.open(small_set / spec.name / "ground_truth" / defect
                                             / f"{index:03d}_mask.png")) > 0
                assert np.array_equal(saved, sample.image) and np.array_equal(mask, sample.mask)
                changed = (sample.image != sample.clean).any(axis=-1)
                assert np.array_equal(changed, mask), (spec.name, defect, index)
                difference = np.abs(sample.image.astype(int) - sample.clean.astype(int)).max(axis=-1) / 255
                # Subtle is not invisible: most defect pixels change by a clear margin on some channel.
                assert (difference[mask] >= VISIBLE_CHANGE).mean() >= 0.7, (spec.name, defect, index)
                assert mask.mean() >= MIN_DEFECT_AREA


def test_good_images_of_the_same_index_differ_only_when_they_should() -> None:
    good = render_sample("brick", "good", seed=0, index=1, split="train", image_size=64)
    assert np.array_equal(good.image, good.clean) and not good.mask.any()
    assert not np.array_equal(good.image, render_sample("brick", "good", seed=0, index=1, split="test",
                                                        image_size=64).image)


def test_defect_free_rendering_matches_the_good_scene() -> None:
    """Outside its mask, a defective image is its defect-free rendering (defects never move the object)."""
    sample = render_sample("hex_nut", "missing_chip", seed=1, index=4, image_size=128)
    assert sample.mask.any()
    assert np.array_equal(sample.image[~sample.mask], sample.clean[~sample.mask])


@pytest.mark.parametrize("category", OBJECTS)
def test_objects_vary_in_lighting_position_and_pose(category: str) -> None:
    """Normal images differ in brightness and colour cast (Fig. 2 of the paper) and in where the object is."""
    images = np.stack([render_sample(category, "good", seed=0, index=i, split="train", image_size=96).image
                       for i in range(8)]).astype(np.float32) / 255
    brightness = images.mean(axis=(1, 2, 3))
    assert brightness.max() - brightness.min() > 0.03
    colour_balance = images.mean(axis=(1, 2)) / images.mean(axis=(1, 2, 3))[:, None]
    assert np.ptp(colour_balance, axis=0).max() > 0.05
    centroids = [np.argwhere(np.abs(image - np.median(image, axis=(0, 1))).max(-1) > 0.2).mean(0)
                 for image in images]
    assert np.ptp(np.array(centroids), axis=0).max() > 3


def test_texture_normals_vary() -> None:
    images = [render_sample(name, "good", seed=0, index=i, split="train", image_size=64).image
              for name in TEXTURES for i in range(2)]
    for first, second in zip(images[::2], images[1::2], strict=True):
        assert np.abs(first.astype(int) - second.astype(int)).mean() > 10


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    counts = {"train_per_category": 2, "test_good": 1, "test_per_defect": 1, "image_size": 64}
    generate_dataset(tmp_path / "a", seed=5, **counts)
    generate_dataset(tmp_path / "b", seed=5, **counts)
    generate_dataset(tmp_path / "c", seed=6, **counts)
    first, again, other = (file_hashes(tmp_path / name) for name in "abc")
    assert first == again and len(first) == 6 * (2 + 1 + 3 * 2)
    assert first.keys() == other.keys()
    differing = [name for name in first if first[name] != other[name]]
    assert len(differing) >= 0.9 * len(first)


def test_photos_load_without_network(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    photos = PhotoLibrary()
    assert set(photos.photos) == set(TEXTURES)
    for photo in photos.photos.values():
        assert photo.shape == (512, 512) and photo.min() >= 0.0 and photo.max() <= 1.0 and photo.std() > 0.1


def test_generate_refuses_non_empty_folder_and_bad_counts(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("keep me")
    with pytest.raises(DataError, match="not empty"):
        generate_dataset(tmp_path, **SMALL)
    with pytest.raises(ConfigError, match="test_per_defect"):
        generate_dataset(tmp_path / "new", test_per_defect=0)
    with pytest.raises(ConfigError, match="image_size"):
        generate_dataset(tmp_path / "new", image_size=16)
    with pytest.raises(ConfigError, match="unknown"):
        render_sample("brick", "dent")


def test_default_set_sizes_small_defects_and_validity(cached_default_set: tuple[Path, Path]) -> None:
    _, root = cached_default_set
    assert validate_dataset(root) == list(CATEGORY_NAMES)
    areas = []
    for name in CATEGORY_NAMES:
        train = list_samples(root, name, "train")
        test = list_samples(root, name, "test")
        assert len(train) >= 60 and len(test) >= 30
        assert sum(s.label for s in test) == 18 and len(test) - sum(s.label for s in test) == 12
        assert Image.open(train[0].image_path).size == (EMBEDDED_IMAGE_SIZE, EMBEDDED_IMAGE_SIZE)
        areas += [float((np.asarray(Image.open(s.mask_path)) > 0).mean()) for s in test if s.label]
    areas = np.array(areas)
    assert areas.min() >= MIN_DEFECT_AREA
    assert (areas < 0.01).mean() > 0.3  # many small defects (under 1 % of the image) ...
    assert (areas > 0.01).mean() > 0.2  # ... and some loud ones


def test_embedded_root_is_cached_and_reused(cached_default_set: tuple[Path, Path],
                                            monkeypatch: pytest.MonkeyPatch) -> None:
    base, root = cached_default_set
    assert root == base / f"embedded-{EMBEDDED_VERSION}-seed0"
    assert not list(base.glob(".*tmp-*"))
    before = file_hashes(root)
    stamp = (root / synthetic.METADATA_FILE).stat().st_mtime_ns

    def must_not_run(*args: object, **kwargs: object) -> list[str]:
        raise AssertionError("the cached set was generated again")

    monkeypatch.setenv(synthetic.DATA_CACHE_ENV, str(base))
    monkeypatch.setattr(synthetic, "generate_dataset", must_not_run)
    assert embedded_data_root(seed=0) == root
    assert (root / synthetic.METADATA_FILE).stat().st_mtime_ns == stamp and file_hashes(root) == before


def test_embedded_root_failure_leaves_no_partial_set(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A generation that dies half way leaves neither the final folder nor its staging folder behind."""
    stale = tmp_path / f".embedded-{EMBEDDED_VERSION}-seed9.tmp-old"
    stale.mkdir()  # as left by a process killed mid-generation

    def dies_half_way(out_dir: Path, seed: int = 0, **kwargs: object) -> list[str]:
        (Path(out_dir) / "brick").mkdir()
        raise KeyboardInterrupt

    monkeypatch.setenv(synthetic.DATA_CACHE_ENV, str(tmp_path))
    monkeypatch.setattr(synthetic, "generate_dataset", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        embedded_data_root(seed=9)
    assert not (tmp_path / f"embedded-{EMBEDDED_VERSION}-seed9").exists()
    assert not list(tmp_path.glob(".*tmp-*"))
