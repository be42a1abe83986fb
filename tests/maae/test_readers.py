"""The VisA and Real-IAD readers (maae.data.visa, maae.data.realiad) and the choice of reader, on small trees
written here in each data set's published layout: what they list, and their bad inputs in one line."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from maae.cli import main
from maae.data import (
    AnomalyDataset,
    detect_data_format,
    discover_categories,
    list_samples,
    resolve_categories,
    resolve_data_format,
    validate_dataset,
)
from maae.errors import DataError

WIDTH, HEIGHT = 40, 30  # VisA and Real-IAD images are not square
VISA_HEADER = "object,split,label,image,mask"


def write_image(path: Path, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(zlib.crc32(str(path.name).encode()))
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format="JPEG" if path.suffix.lower() == ".jpg" else "PNG")
    return path


def write_mask(path: Path, value: int = 1, size: tuple[int, int] = (WIDTH, HEIGHT)) -> Path:
    """A mask whose defect pixels hold ``value`` (VisA's masks use small values such as 1)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mask = np.zeros((size[1], size[0]), dtype=np.uint8)
    mask[5:15, 10:25] = value
    Image.fromarray(mask).save(path)
    return path


def one_line(error: pytest.ExceptionInfo[DataError], *fragments: str) -> None:
    message = str(error.value)
    assert "\n" not in message
    for fragment in fragments:
        assert fragment in message, (fragment, message)


# ------------------------------------------------------------------------------------------------ VisA ---

def make_visa(root: Path, objects: tuple[str, ...] = ("candle", "pcb1"), *, train: int = 3, good: int = 2,
              anomalies: int = 2, annotate: tuple[str, ...] = ("pcb1",)) -> Path:
    """VisA as published: split_csv/1cls.csv, <object>/Data/Images/{Normal,Anomaly}, Data/Masks/Anomaly, and
    <object>/image_anno.csv for the objects in ``annotate``."""
    rows = [VISA_HEADER]
    for name in objects:
        annotations = ["image,label,mask"]
        for index in range(train + good):
            image = f"{name}/Data/Images/Normal/{index:04d}.JPG"
            write_image(root / image)
            rows.append(f"{name},{'train' if index < train else 'test'},normal,{image},")
            annotations.append(f"{image},normal,")
        for index in range(anomalies):
            image = f"{name}/Data/Images/Anomaly/{index:03d}.JPG"
            mask = f"{name}/Data/Masks/Anomaly/{index:03d}.png"
            write_image(root / image)
            write_mask(root / mask)
            rows.append(f"{name},test,anomaly,{image},{mask}")
            annotations.append(f'{image},"{"bent lead" if index == 0 else "melt, scratch"}",{mask}')
        if name in annotate:
            (root / name / "image_anno.csv").write_text("\n".join(annotations) + "\n")
    (root / "split_csv").mkdir(parents=True, exist_ok=True)
    (root / "split_csv" / "1cls.csv").write_text("\n".join(rows) + "\n")
    return root


def edit_split_csv(root: Path, old: str, new: str) -> None:
    path = root / "split_csv" / "1cls.csv"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_visa_lists_splits_masks_and_defect_kinds(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    assert detect_data_format(root) == "visa"
    assert discover_categories(root) == ["candle", "pcb1"]
    train = list_samples(root, "candle", "train")
    assert [s.image_path.name for s in train] == ["0000.JPG", "0001.JPG", "0002.JPG"]
    assert all(s.defect == "good" and s.mask_path is None and s.split == "train" for s in train)
    test = list_samples(root, "pcb1", "test")
    assert [(s.defect, s.image_path.name) for s in test] == [
        ("bent_lead", "000.JPG"), ("good", "0003.JPG"), ("good", "0004.JPG"), ("melt_scratch", "001.JPG")]
    anomaly = test[0]
    assert anomaly.label == 1 and anomaly.mask_path == root / "pcb1/Data/Masks/Anomaly/000.png"
    # Without image_anno.csv every anomaly is of kind "anomaly".
    assert {s.defect for s in list_samples(root, "candle", "test")} == {"good", "anomaly"}
    assert validate_dataset(root) == ["candle", "pcb1"]
    item = AnomalyDataset(test, 16, ["pcb1"])[0]
    assert item["image"].shape == (3, 16, 16) and float(item["mask"].sum()) > 0  # 0/1 mask read as defect


def test_visa_listed_image_that_is_missing(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    missing = root / "candle/Data/Images/Anomaly/001.JPG"
    missing.unlink()
    with pytest.raises(DataError) as error:
        list_samples(root, "candle", "test")
    one_line(error, str(missing), "split_csv/1cls.csv:", "does not exist")


def test_visa_anomaly_without_a_mask(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    edit_split_csv(root, "candle/Data/Images/Anomaly/000.JPG,candle/Data/Masks/Anomaly/000.png",
                   "candle/Data/Images/Anomaly/000.JPG,")
    with pytest.raises(DataError) as error:
        list_samples(root, "candle", "test")
    one_line(error, str(root / "candle/Data/Images/Anomaly/000.JPG"), "no mask", "1cls.csv:")


def test_visa_listed_mask_that_is_missing(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    (root / "pcb1/Data/Masks/Anomaly/001.png").unlink()
    with pytest.raises(DataError) as error:
        validate_dataset(root)
    one_line(error, str(root / "pcb1/Data/Masks/Anomaly/001.png"), "mask listed in", "does not exist")


@pytest.mark.parametrize("old,new,needle", [
    (VISA_HEADER, "object,split,label,image", "header lacks the column(s) mask"),
    ("candle,train,normal", "candle,val,normal", "split 'val'"),
    ("pcb1,test,anomaly", "pcb1,test,defect", "label 'defect'"),
])
def test_visa_malformed_split_file(tmp_path: Path, old: str, new: str, needle: str) -> None:
    root = make_visa(tmp_path)
    edit_split_csv(root, old, new)
    with pytest.raises(DataError) as error:
        validate_dataset(root)
    one_line(error, "1cls.csv", needle)


def test_visa_anomaly_missing_from_its_annotation_file(tmp_path: Path) -> None:
    root = make_visa(tmp_path)
    annotations = root / "pcb1" / "image_anno.csv"
    annotations.write_text("\n".join(annotations.read_text().splitlines()[:-1]) + "\n")
    with pytest.raises(DataError) as error:
        list_samples(root, "pcb1", "test")
    one_line(error, str(annotations), "pcb1/Data/Images/Anomaly/001.JPG")


# -------------------------------------------------------------------------------------------- Real-IAD ---

def make_realiad(root: Path, categories: tuple[str, ...] = ("audiojack", "toy"), *, resolution: str = "256",
                 nested: bool = True, train: int = 3, good: int = 2, anomalies: int = 2) -> Path:
    """Real-IAD as published: realiad_jsons/realiad_jsons/<category>.json (``nested``; else
    realiad_jsons/<category>.json) and realiad_<resolution>/<category>/{OK,NG}/..."""
    json_dir = root / "realiad_jsons" / ("realiad_jsons" if nested else "")
    json_dir.mkdir(parents=True, exist_ok=True)
    for category in categories:
        folder = root / f"realiad_{resolution}" / category
        entries: dict[str, list[dict]] = {"train": [], "test": []}
        for index in range(train + good):
            relative = f"OK/S{index + 1:04d}/{category}_{index + 1:04d}_OK_C1_20230922093126.jpg"
            write_image(folder / relative)
            entries["train" if index < train else "test"].append(
                {"category": category, "anomaly_class": "OK", "image_path": relative, "mask_path": None})
        for index in range(anomalies):
            code = ("HS", "AK")[index % 2]
            stem = f"NG/{code}/S{index + 101:04d}/{category}_{index + 101:04d}_NG_{code}_C2_20230922093126"
            write_image(folder / f"{stem}.jpg")
            write_mask(folder / f"{stem}.png", value=255)
            entries["test"].append({"category": category, "anomaly_class": code, "image_path": f"{stem}.jpg",
                                    "mask_path": f"{stem}.png"})
        metadata = {"meta": {"prefix": category, "normal_class": "OK"}, **entries}
        (json_dir / f"{category}.json").write_text(json.dumps(metadata))
    return root


def edit_metadata(root: Path, category: str, edit: Callable[[dict], None]) -> Path:
    path = root / "realiad_jsons" / "realiad_jsons" / f"{category}.json"
    metadata = json.loads(path.read_text())
    edit(metadata)
    path.write_text(json.dumps(metadata))
    return path


@pytest.mark.parametrize("nested", [True, False])
def test_realiad_lists_splits_masks_and_classes(tmp_path: Path, nested: bool) -> None:
    root = make_realiad(tmp_path, nested=nested)
    assert detect_data_format(root) == "realiad"
    assert discover_categories(root) == ["audiojack", "toy"]
    train = list_samples(root, "toy", "train")
    assert len(train) == 3 and all(s.label == 0 and s.mask_path is None for s in train)
    assert train[0].image_path == root / "realiad_256/toy/OK/S0001/toy_0001_OK_C1_20230922093126.jpg"
    test = list_samples(root, "toy", "test")
    assert [s.defect for s in test] == ["ak", "good", "good", "hs"]
    assert all(s.mask_path is not None and s.mask_path.is_file() for s in test if s.label)
    assert validate_dataset(root, ["toy"]) == ["toy"]


def test_realiad_data_may_name_one_resolution(tmp_path: Path) -> None:
    make_realiad(tmp_path, resolution="256")
    make_realiad(tmp_path, resolution="512")
    with pytest.raises(DataError) as error:
        discover_categories(tmp_path)
    one_line(error, "several image folders", "realiad_256, realiad_512")
    chosen = tmp_path / "realiad_512"
    assert detect_data_format(chosen) == "realiad"
    assert list_samples(chosen, "audiojack", "train")[0].image_path.is_relative_to(chosen)


def test_realiad_listed_image_that_is_missing(tmp_path: Path) -> None:
    root = make_realiad(tmp_path)
    missing = next((root / "realiad_256" / "toy" / "NG" / "AK").rglob("*.jpg"))
    missing.unlink()
    with pytest.raises(DataError) as error:
        list_samples(root, "toy", "test")
    one_line(error, str(missing), "toy.json test[", "does not exist")


def test_realiad_anomaly_without_a_mask(tmp_path: Path) -> None:
    root = make_realiad(tmp_path)

    def drop_mask(metadata: dict) -> None:
        metadata["test"][-1]["mask_path"] = None

    edit_metadata(root, "toy", drop_mask)
    with pytest.raises(DataError) as error:
        list_samples(root, "toy", "test")
    one_line(error, "toy_0102_NG_AK_C2_20230922093126.jpg", "anomaly class 'AK'", "no mask_path")


def test_realiad_listed_mask_that_is_missing(tmp_path: Path) -> None:
    root = make_realiad(tmp_path)
    mask = next((root / "realiad_256" / "audiojack" / "NG" / "HS").rglob("*.png"))
    mask.unlink()
    with pytest.raises(DataError) as error:
        validate_dataset(root)
    one_line(error, str(mask), "mask listed in", "does not exist")


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not a readable JSON file"),
    (json.dumps({"train": [], "test": []}), "'meta'"),
    (json.dumps({"meta": {"prefix": "toy"}, "train": [], "test": []}), "normal_class missing"),
])
def test_realiad_malformed_metadata(tmp_path: Path, content: str, needle: str) -> None:
    root = make_realiad(tmp_path)
    path = root / "realiad_jsons" / "realiad_jsons" / "toy.json"
    path.write_text(content)
    with pytest.raises(DataError) as error:
        list_samples(root, "toy", "train")
    one_line(error, str(path), needle)


# ----------------------------------------------------------------------------------- choosing a reader ---

def test_named_format_must_match_the_folder(tmp_path: Path) -> None:
    visa = make_visa(tmp_path / "visa")
    realiad = make_realiad(tmp_path / "realiad")
    assert resolve_data_format(visa, "visa") == resolve_data_format(visa, "auto") == "visa"
    assert resolve_data_format(realiad, None) == "realiad"
    assert resolve_categories(visa, ["pcb1"], "visa") == ["pcb1"]
    with pytest.raises(DataError) as error:
        resolve_data_format(visa, "realiad")
    one_line(error, "--data-format realiad", "realiad_jsons/ is not there")
    with pytest.raises(DataError) as error:
        resolve_data_format(realiad, "mvtec")
    one_line(error, "--data-format mvtec", "realiad_jsons/", "--data-format realiad")
    with pytest.raises(DataError) as error:
        resolve_data_format(visa, "coco")
    one_line(error, "unknown format 'coco'", "mvtec, visa, realiad")


def test_train_reads_visa_through_the_command_line(tmp_path: Path, tiny_overrides: list[str], capsys) -> None:
    root = make_visa(tmp_path / "visa", train=4)
    out = tmp_path / "run"
    overrides = [arg for item in [*tiny_overrides, "epochs=1", "batch_size=2"] for arg in ("--set", item)]
    capsys.readouterr()
    assert main(["train", "--data", str(root), "--data-format", "mvtec", "--out", str(out), *overrides]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and "--data-format mvtec" in lines[0], lines
    assert main(["train", "--data", str(root), "--data-format", "visa", "--out", str(out), *overrides]) == 0
    per_category = pd.read_csv(out / "per_category.csv")
    assert per_category.category.tolist() == ["candle", "pcb1"]
    scores = pd.read_csv(out / "scores.csv")
    assert sorted(scores.defect.unique()) == ["anomaly", "bent_lead", "good", "melt_scratch"]
