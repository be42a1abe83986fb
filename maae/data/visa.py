"""Reader for VisA in its original layout (as published by amazon-science/spot-diff).

::

    <root>/split_csv/1cls.csv                     object,split,label,image,mask (the one-class protocol)
    <root>/<object>/Data/Images/Normal/<id>.JPG
    <root>/<object>/Data/Images/Anomaly/<id>.JPG
    <root>/<object>/Data/Masks/Anomaly/<id>.png   (0 = normal, any non-zero value = defect)
    <root>/<object>/image_anno.csv                image,label,mask (optional: names the defect kinds)

``1cls.csv`` gives every image its split (``train`` or ``test``) and label (``normal`` or ``anomaly``); paths
in it are relative to ``<root>``, and ``mask`` is empty for normal images. A category is an ``object`` with
at least one training image. Defect kinds come from ``<object>/image_anno.csv`` when it is there (its label
column, e.g. ``chunk of wax missing`` -> ``chunk_of_wax_missing``), else every anomaly is ``anomaly``.

Every listed file must exist, and every anomaly must have a mask: otherwise a one-line
:class:`~maae.errors.DataError` names the file and the CSV line.
"""

from __future__ import annotations

import csv
from pathlib import Path

from maae.data.common import GOOD, Sample, check_root, check_split, defect_name, sort_samples
from maae.errors import DataError

FORMAT = "visa"
LAYOUT = "VisA layout (split_csv/1cls.csv)"
# What detection looks for, as error messages name it.
INDEX = "split_csv/1cls.csv"
SPLIT_FILE = Path("split_csv") / "1cls.csv"
SPLIT_COLUMNS = ("object", "split", "label", "image", "mask")
ANNOTATION_FILE = "image_anno.csv"
ANNOTATION_COLUMNS = ("image", "label")
NORMAL_LABEL = "normal"
ANOMALY_LABEL = "anomaly"
UNNAMED_DEFECT = "anomaly"


def looks_like(root: Path) -> bool:
    """Whether ``root`` holds VisA's split file ``split_csv/1cls.csv``."""
    return (Path(root) / SPLIT_FILE).is_file()


def _read_csv(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """The rows of a CSV with a header naming at least ``columns``, each with its line number."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            missing = [name for name in columns if name not in (reader.fieldnames or [])]
            if missing:
                raise DataError(f"{path}: header lacks the column(s) {', '.join(missing)} "
                                f"(expected {','.join(columns)})")
            return [(reader.line_num, {key: (value or "").strip() for key, value in row.items() if key})
                    for row in reader]
    except FileNotFoundError as error:
        raise DataError(f"{path}: missing (expected VisA's split file with columns "
                        f"{','.join(SPLIT_COLUMNS)})") from error
    except (UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: not a readable CSV file ({error})") from error


def _split_rows(root: Path) -> list[tuple[int, dict[str, str]]]:
    return _read_csv(check_root(root, LAYOUT) / SPLIT_FILE, SPLIT_COLUMNS)


def discover_categories(root: Path) -> list[str]:
    """The objects of ``1cls.csv`` that have at least one training image, sorted."""
    rows = _split_rows(root)
    categories = sorted({row["object"] for _, row in rows if row["split"] == "train" and row["object"]})
    if not categories:
        raise DataError(f"{Path(root) / SPLIT_FILE}: no object with a training image (expected rows "
                        "'<object>,train,normal,<image>,')")
    return categories


def _defect_names(root: Path, category: str) -> dict[str, str] | None:
    """Image path (as written in the CSVs) -> defect kind, from ``<object>/image_anno.csv``; None without it."""
    path = root / category / ANNOTATION_FILE
    if not path.is_file():
        return None
    return {row["image"]: row["label"] for _, row in _read_csv(path, ANNOTATION_COLUMNS)}


def _listed_file(root: Path, relative: str, where: str, what: str) -> Path:
    path = root / relative
    if not path.is_file():
        raise DataError(f"{path}: {what} listed in {where} does not exist")
    return path


def list_samples(root: Path, category: str, split: str) -> list[Sample]:
    """The samples of one split of one object, sorted by defect kind then path; files and masks checked."""
    check_split(split)
    root = Path(root)
    split_file = root / SPLIT_FILE
    rows = [(line, row) for line, row in _split_rows(root) if row["object"] == category]
    if not rows:
        raise DataError(f"{split_file}: no rows for object {category!r}")
    names = _defect_names(root, category)
    samples: list[Sample] = []
    seen: dict[str, int] = {}
    for line, row in rows:
        where = f"{split_file}:{line}"
        if row["split"] not in ("train", "test"):
            raise DataError(f"{where}: split {row['split']!r}; expected train or test")
        if row["label"] not in (NORMAL_LABEL, ANOMALY_LABEL):
            raise DataError(f"{where}: label {row['label']!r}; expected {NORMAL_LABEL} or {ANOMALY_LABEL}")
        if not row["image"]:
            raise DataError(f"{where}: empty image column (expected a path relative to {root})")
        if row["image"] in seen:
            raise DataError(f"{where}: image {row['image']} is listed twice (first on line {seen[row['image']]})")
        seen[row["image"]] = line
        if row["split"] != split:
            continue
        image = _listed_file(root, row["image"], where, "image")
        if row["label"] == NORMAL_LABEL:
            if row["mask"]:
                raise DataError(f"{where}: normal image {row['image']} has a mask {row['mask']} "
                                "(expected an empty mask column)")
            samples.append(Sample(image, None, category, split, GOOD))
            continue
        if not row["mask"]:
            raise DataError(f"{image}: labelled {ANOMALY_LABEL} in {where} but has no mask (expected a path "
                            f"under {category}/Data/Masks/Anomaly/ in the mask column)")
        mask = _listed_file(root, row["mask"], where, "mask")
        samples.append(Sample(image, mask, category, split, _defect(names, row["image"], root, category)))
    if not samples:
        what = "training images" if split == "train" else "test images"
        raise DataError(f"{split_file}: no {what} for object {category!r} (expected rows "
                        f"'{category},{split},...')")
    return sort_samples(samples)


def _defect(names: dict[str, str] | None, image: str, root: Path, category: str) -> str:
    if names is None:
        return UNNAMED_DEFECT
    if image not in names:
        raise DataError(f"{root / category / ANNOTATION_FILE}: no row for the anomaly {image} "
                        "(expected one row per image)")
    return defect_name(names[image])
