"""Tests of the MVTec-AD layout reader and of image loading (maae.data) on tiny folders built in tmp_path.

The VisA and Real-IAD readers are tested in tests/maae/test_readers.py."""

from __future__ import annotations

import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from maae.data import (
    IMAGE_EXTENSIONS,
    AnomalyDataset,
    ImageConversionWarning,
    Sample,
    discover_categories,
    list_samples,
    load_image,
    load_mask,
    resolve_categories,
    validate_dataset,
)
from maae.errors import DataError

SIDE = 8


def write_image(path: Path, side: int = SIDE, mode: str = "RGB", value: int = 128) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(path.name.encode()))
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    pixels = rng.integers(0, 256, (side, side, channels), dtype=np.uint8)
    pixels[..., 0] = value
    Image.fromarray(pixels.squeeze(-1) if channels == 1 else pixels, mode).save(path)
    return path


def write_mask(path: Path, side: int = SIDE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((side, side), dtype=np.uint8)
    mask[: side // 2, : side // 2] = 255
    Image.fromarray(mask).save(path)
    return path


def make_category(root: Path, name: str = "widget", defects: tuple[str, ...] = ("scratch",),
                  train: int = 3, good: int = 2, per_defect: int = 2) -> Path:
    """An MVTec-layout category with tiny PNGs; defective images get ``<stem>_mask.png`` masks."""
    folder = root / name
    for index in range(train):
        write_image(folder / "train" / "good" / f"{index:03d}.png")
    for index in range(good):
        write_image(folder / "test" / "good" / f"{index:03d}.png")
    for defect in defects:
        for index in range(per_defect):
            write_image(folder / "test" / defect / f"{index:03d}.png")
            write_mask(folder / "ground_truth" / defect / f"{index:03d}_mask.png")
    return folder


def assert_one_line_error(error: pytest.ExceptionInfo[DataError], *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# ---------------------------------------------------------------------------------------------- layout


def test_discover_categories_sorted_and_only_with_train_images(tmp_path: Path) -> None:
    make_category(tmp_path, "zipper")
    make_category(tmp_path, "bottle")
    (tmp_path / "empty" / "train" / "good").mkdir(parents=True)  # no images: not a category
    (tmp_path / "notes").mkdir()
    (tmp_path / "readme.txt").write_text("not a category")
    assert discover_categories(tmp_path) == ["bottle", "zipper"]


def test_resolve_categories_keeps_requested_order_and_rejects_unknown(tmp_path: Path) -> None:
    for name in ("bottle", "cable", "zipper"):
        make_category(tmp_path, name)
    assert resolve_categories(tmp_path, None) == ["bottle", "cable", "zipper"]
    assert resolve_categories(tmp_path, []) == ["bottle", "cable", "zipper"]
    assert resolve_categories(tmp_path, ["zipper", "bottle", "zipper"]) == ["zipper", "bottle"]
    with pytest.raises(DataError) as error:
        resolve_categories(tmp_path, ["bottle", "toothbrush"])
    assert_one_line_error(error, "toothbrush", "available: bottle, cable, zipper")


def test_list_samples_pairs_masks_and_sorts(tmp_path: Path) -> None:
    make_category(tmp_path, defects=("crack", "scratch"), train=3, good=2, per_defect=2)
    train = list_samples(tmp_path, "widget", "train")
    assert [s.image_path.name for s in train] == ["000.png", "001.png", "002.png"]
    assert all(s.split == "train" and s.defect == "good" and s.label == 0 and s.mask_path is None for s in train)
    test = list_samples(tmp_path, "widget", "test")
    assert [(s.defect, s.image_path.name) for s in test] == [
        ("crack", "000.png"), ("crack", "001.png"), ("good", "000.png"), ("good", "001.png"),
        ("scratch", "000.png"), ("scratch", "001.png"),
    ]
    for sample in test:
        assert sample.category == "widget" and sample.split == "test"
        if sample.defect == "good":
            assert sample.mask_path is None and sample.label == 0
        else:
            assert sample.label == 1
            assert sample.mask_path == tmp_path / "widget" / "ground_truth" / sample.defect / (
                sample.image_path.stem + "_mask.png")


def test_extensions_are_case_insensitive_and_other_files_ignored(tmp_path: Path) -> None:
    folder = make_category(tmp_path, train=1)
    write_image(folder / "train" / "good" / "b.JPG")
    write_image(folder / "train" / "good" / "c.Bmp")
    write_image(folder / "train" / "good" / "d.tiff")
    (folder / "train" / "good" / "Thumbs.db").write_text("x")
    (folder / "train" / "good" / ".hidden.png").write_text("x")
    names = [s.image_path.name for s in list_samples(tmp_path, "widget", "train")]
    assert names == ["000.png", "b.JPG", "c.Bmp", "d.tiff"]
    assert {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"} == set(IMAGE_EXTENSIONS)


def test_btad_style_masks_without_suffix_and_suffix_preferred(tmp_path: Path) -> None:
    folder = tmp_path / "01"
    write_image(folder / "train" / "good" / "0000.bmp")
    write_image(folder / "test" / "ko" / "0000.bmp")
    write_image(folder / "test" / "ko" / "0001.bmp")
    write_mask(folder / "ground_truth" / "ko" / "0000.png")  # BTAD: same stem, no _mask
    write_mask(folder / "ground_truth" / "ko" / "0001.bmp")
    write_mask(folder / "ground_truth" / "ko" / "0001_mask.png")  # both present: _mask wins
    samples = list_samples(tmp_path, "01", "test")
    assert [s.mask_path.name for s in samples] == ["0000.png", "0001_mask.png"]
    assert validate_dataset(tmp_path) == ["01"]


def test_validate_dataset_accepts_good_layout(tmp_path: Path) -> None:
    make_category(tmp_path, "a")
    make_category(tmp_path, "b", defects=("x", "y"))
    assert validate_dataset(tmp_path) == ["a", "b"]
    assert validate_dataset(tmp_path, ["b"]) == ["b"]


# ------------------------------------------------------------------------------------------ bad input


def test_missing_root(tmp_path: Path) -> None:
    with pytest.raises(DataError) as error:
        discover_categories(tmp_path / "nowhere")
    assert_one_line_error(error, str(tmp_path / "nowhere"), "does not exist")


def test_root_is_a_file(tmp_path: Path) -> None:
    path = tmp_path / "data.zip"
    path.write_bytes(b"PK")
    with pytest.raises(DataError) as error:
        validate_dataset(path)
    assert_one_line_error(error, str(path), "not a directory")


def test_no_category_with_training_images(tmp_path: Path) -> None:
    (tmp_path / "widget" / "train" / "good").mkdir(parents=True)
    write_image(tmp_path / "widget" / "test" / "good" / "000.png")
    with pytest.raises(DataError) as error:
        discover_categories(tmp_path)
    assert_one_line_error(error, str(tmp_path), "train/good")


def test_mask_without_image(tmp_path: Path) -> None:
    folder = make_category(tmp_path, per_defect=1)
    orphan = write_mask(folder / "ground_truth" / "scratch" / "007_mask.png")
    with pytest.raises(DataError) as error:
        list_samples(tmp_path, "widget", "test")
    assert_one_line_error(error, str(orphan), "mask without an image", "'007'")


def test_masks_of_a_defect_with_no_test_folder(tmp_path: Path) -> None:
    folder = make_category(tmp_path)
    orphan = write_mask(folder / "ground_truth" / "dent" / "000_mask.png")
    with pytest.raises(DataError) as error:
        validate_dataset(tmp_path)
    assert_one_line_error(error, str(orphan), "mask without an image", "test/dent")


def test_defective_image_without_mask(tmp_path: Path) -> None:
    folder = make_category(tmp_path, per_defect=1)
    lonely = write_image(folder / "test" / "scratch" / "001.png")
    with pytest.raises(DataError) as error:
        list_samples(tmp_path, "widget", "test")
    assert_one_line_error(error, str(lonely), "without a mask", "001_mask.png")


@pytest.mark.parametrize("content", [b"", b"this is not a png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_corrupt_image(tmp_path: Path, content: bytes) -> None:
    folder = make_category(tmp_path)
    broken = folder / "train" / "good" / "001.png"
    broken.write_bytes(content)
    with pytest.raises(DataError) as error:
        validate_dataset(tmp_path)
    assert_one_line_error(error, str(broken), "unreadable or corrupt")
    with pytest.raises(DataError) as error:
        load_image(broken, 4)
    assert_one_line_error(error, str(broken), "unreadable or corrupt")


def test_truncated_png_is_corrupt(tmp_path: Path) -> None:
    folder = make_category(tmp_path)
    image = folder / "test" / "good" / "000.png"
    write_image(image, side=64)
    image.write_bytes(image.read_bytes()[:-40])
    with pytest.raises(DataError) as error:
        validate_dataset(tmp_path)
    assert_one_line_error(error, str(image), "unreadable or corrupt")


def test_mask_size_differs_from_image(tmp_path: Path) -> None:
    folder = make_category(tmp_path, per_defect=1)
    mask = write_mask(folder / "ground_truth" / "scratch" / "000_mask.png", side=SIDE * 2)
    with pytest.raises(DataError) as error:
        validate_dataset(tmp_path)
    assert_one_line_error(error, str(mask), "16x16", "8x8")
    dataset = AnomalyDataset(list_samples(tmp_path, "widget", "test"), 4, ["widget"])
    defective = next(i for i, s in enumerate(dataset.samples) if s.label == 1)
    with pytest.raises(DataError) as error:
        dataset[defective]
    assert_one_line_error(error, str(mask), "expected equal sizes")


@pytest.mark.parametrize("with_folder", [True, False])
def test_empty_test_split(tmp_path: Path, with_folder: bool) -> None:
    write_image(tmp_path / "widget" / "train" / "good" / "000.png")
    if with_folder:
        (tmp_path / "widget" / "test" / "good").mkdir(parents=True)
    with pytest.raises(DataError) as error:
        validate_dataset(tmp_path)
    assert_one_line_error(error, str(tmp_path / "widget" / "test"), "empty test split")


def test_two_masks_with_one_stem_are_ambiguous(tmp_path: Path) -> None:
    folder = make_category(tmp_path, per_defect=1)
    write_mask(folder / "ground_truth" / "scratch" / "000_mask.bmp")
    with pytest.raises(DataError) as error:
        list_samples(tmp_path, "widget", "test")
    assert_one_line_error(error, "000_mask", "share the stem")


# ------------------------------------------------------------------------------------- pixels, tensors


def test_load_image_expands_grey_and_resizes(tmp_path: Path) -> None:
    grey = write_image(tmp_path / "grey.png", side=16, mode="L", value=200)
    with pytest.warns(ImageConversionWarning, match=r"grey\.png: grey image \(L\) converted to RGB$"):
        pixels = load_image(grey, 8)
    assert pixels.shape == (8, 8, 3) and pixels.dtype == np.float32
    assert np.array_equal(pixels[..., 0], pixels[..., 1]) and np.array_equal(pixels[..., 1], pixels[..., 2])
    rgba = write_image(tmp_path / "rgba.png", side=8, mode="RGBA", value=255)
    with pytest.warns(ImageConversionWarning, match="rgba.png: RGBA image converted to RGB"):
        pixels = load_image(rgba, 8)
    assert pixels.shape == (8, 8, 3)
    assert np.allclose(pixels[..., 0], 1.0)
    assert pixels.min() >= 0.0 and pixels.max() <= 1.0


def test_load_image_reads_sixteen_bit_grey(tmp_path: Path) -> None:
    path = tmp_path / "deep.png"
    Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)).save(path)
    with pytest.warns(ImageConversionWarning, match="16-bit grey image converted to RGB"):
        assert np.allclose(load_image(path, 4), 1.0)


def test_tiny_and_odd_images_are_said_once_per_image(tmp_path: Path) -> None:
    folder = make_category(tmp_path, train=0, good=0, per_defect=0)
    plain = write_image(folder / "train" / "good" / "plain.png", side=16)
    tiny = write_image(folder / "train" / "good" / "tiny.png", side=4)
    grey_tiny = write_image(folder / "train" / "good" / "grey_tiny.png", side=4, mode="L")
    dataset = AnomalyDataset(list_samples(tmp_path, "widget", "train"), 16, ["widget"])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # count every warning raised, not what Python's filter would show
        for _ in range(3):  # three epochs
            for index in range(len(dataset)):
                assert dataset[index]["image"].shape == (3, 16, 16)
    messages = sorted(str(w.message) for w in caught if issubclass(w.category, ImageConversionWarning))
    assert messages == [
        f"{grey_tiny}: grey image (L) converted to RGB; 4x4 enlarged to the model's 16x16",
        f"{tiny}: 4x4 enlarged to the model's 16x16",
    ]
    assert all("\n" not in message for message in messages)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a plain RGB image at least the model's size is not mentioned
        load_image(plain, 16)
        load_image(plain, 8)


def test_load_image_resize_is_antialiased(tmp_path: Path) -> None:
    stripes = np.zeros((64, 64), dtype=np.uint8)
    stripes[:, ::2] = 255  # one-pixel stripes: a plain subsample would give all 0 or all 255
    path = tmp_path / "stripes.png"
    Image.fromarray(np.stack([stripes] * 3, axis=-1)).save(path)
    assert np.allclose(load_image(path, 16), 0.5, atol=0.05)


def test_load_mask_binary_from_various_encodings(tmp_path: Path) -> None:
    assert np.array_equal(load_mask(None, 5), np.zeros((5, 5), np.uint8))
    values = np.zeros((8, 8), dtype=np.uint8)
    values[2:6, 2:6] = 1  # VisA-style 0/1 mask
    Image.fromarray(values).save(tmp_path / "ones.png")
    mask = load_mask(tmp_path / "ones.png", 8)
    assert mask.dtype == np.uint8 and set(np.unique(mask)) == {0, 1} and mask.sum() == 16
    colour = np.zeros((8, 8, 3), dtype=np.uint8)
    colour[:4, :, 0] = 1  # red only: a grey conversion would round it to 0
    Image.fromarray(colour).save(tmp_path / "red.png")
    assert load_mask(tmp_path / "red.png", 8).sum() == 32
    resized = load_mask(write_mask(tmp_path / "half.png", side=8), 32)
    assert resized.shape == (32, 32) and set(np.unique(resized)) == {0, 1} and resized.sum() == 16 * 16


def test_anomaly_dataset_items(tmp_path: Path) -> None:
    make_category(tmp_path, "a", per_defect=1)
    make_category(tmp_path, "b", per_defect=1)
    samples = list_samples(tmp_path, "a", "test") + list_samples(tmp_path, "b", "test")
    dataset = AnomalyDataset(samples, 6, ["b", "a"])
    assert len(dataset) == len(samples) == 6
    for index in range(len(dataset)):
        item = dataset[index]
        sample = dataset.samples[index]
        assert item["image"].shape == (3, 6, 6) and item["image"].dtype == torch.float32
        assert float(item["image"].min()) >= 0.0 and float(item["image"].max()) <= 1.0
        assert item["mask"].shape == (1, 6, 6) and item["mask"].dtype == torch.float32
        assert set(torch.unique(item["mask"]).tolist()) <= {0.0, 1.0}
        assert item["label"] == sample.label and item["index"] == index
        assert item["category_index"] == ["b", "a"].index(sample.category)
        assert (float(item["mask"].sum()) > 0) == (sample.label == 1)
    with pytest.raises(ValueError, match="not in categories"):
        AnomalyDataset(samples, 6, ["a"])


def test_sample_label() -> None:
    assert Sample(Path("x.png"), None, "c", "test", "good").label == 0
    assert Sample(Path("x.png"), Path("m.png"), "c", "test", "crack").label == 1
