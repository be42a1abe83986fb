"""Reader for Real-IAD (CVPR 2024) in its published layout: images per resolution, JSON metadata per category.

::

    <root>/realiad_jsons/realiad_jsons/<category>.json       (as unpacked; <root>/realiad_jsons/<category>.json too)
    <root>/realiad_<res>/<category>/OK/S0001/<category>_0001_OK_C1_<time>.jpg
    <root>/realiad_<res>/<category>/NG/<class>/S0001/<...>_C1_<time>.jpg  and  <...>_C1_<time>.png (mask)

A category's JSON is ``{"meta": {"prefix": ..., "normal_class": "OK", ...}, "train": [...], "test": [...]}``;
each sample is ``{"category", "anomaly_class", "image_path", "mask_path"}`` with paths relative to
``realiad_<res>/<prefix>/`` (the prefix defaults to the category) and ``mask_path`` null for normal samples.
A sample whose ``anomaly_class`` is the ``normal_class`` is good; any other class is its defect kind.

``--data`` is either ``<root>`` (with exactly one ``realiad_<res>`` image folder) or one image folder
``<root>/realiad_<res>`` (to choose a resolution when several are unpacked). Every listed file must exist and
every anomalous sample must have a mask: otherwise a one-line :class:`~maae.errors.DataError` names the file
and the JSON entry.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from maae.data.common import GOOD, Sample, check_root, check_split, defect_name, sort_samples, subfolders
from maae.errors import DataError

FORMAT = "realiad"
LAYOUT = "Real-IAD layout (realiad_jsons/ beside realiad_<resolution>/)"
# What detection looks for, as error messages name it.
INDEX = "realiad_jsons/"
JSON_FOLDER = "realiad_jsons"
IMAGE_FOLDER_PREFIX = "realiad_"
META_KEY = "meta"
NORMAL_CLASS_KEY = "normal_class"
PREFIX_KEY = "prefix"
IMAGE_KEY = "image_path"
MASK_KEY = "mask_path"
CLASS_KEY = "anomaly_class"


def _is_image_folder(path: Path) -> bool:
    return path.is_dir() and path.name.startswith(IMAGE_FOLDER_PREFIX) and not path.name.startswith(JSON_FOLDER)


def looks_like(root: Path) -> bool:
    """Whether ``root`` holds ``realiad_jsons/``, or is a ``realiad_<res>`` folder beside one."""
    root = Path(root)
    return (root / JSON_FOLDER).is_dir() or (_is_image_folder(root) and (root.parent / JSON_FOLDER).is_dir())


def _folders(root: Path) -> tuple[Path, Path]:
    """(folder of the category JSONs, image folder ``realiad_<res>``) of a Real-IAD root."""
    root = check_root(root, LAYOUT)
    if _is_image_folder(root) and (root.parent / JSON_FOLDER).is_dir():
        base, images = root.parent, root
    else:
        base = root
        if not (base / JSON_FOLDER).is_dir():
            raise DataError(f"{root}: no {JSON_FOLDER}/ folder (expected the {LAYOUT})")
        candidates = [folder for folder in subfolders(base) if _is_image_folder(folder)]
        if not candidates:
            raise DataError(f"{root}: no image folder {IMAGE_FOLDER_PREFIX}<resolution>/ beside {JSON_FOLDER}/ "
                            f"(expected e.g. {IMAGE_FOLDER_PREFIX}256/<category>/OK/...)")
        if len(candidates) > 1:
            names = ", ".join(folder.name for folder in candidates)
            raise DataError(f"{root}: several image folders ({names}); choose one with --data "
                            f"{root / candidates[0].name}")
        images = candidates[0]
    nested = base / JSON_FOLDER / JSON_FOLDER
    return (nested if nested.is_dir() else base / JSON_FOLDER), images


def discover_categories(root: Path) -> list[str]:
    """The categories with a ``<category>.json``, sorted."""
    json_dir, _ = _folders(root)
    categories = sorted(path.stem for path in json_dir.glob("*.json") if not path.name.startswith("."))
    if not categories:
        raise DataError(f"{json_dir}: no <category>.json metadata file (expected the {LAYOUT})")
    return categories


def _read_metadata(path: Path) -> dict[str, Any]:
    try:
        metadata = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise DataError(f"{path}: category metadata does not exist") from error
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: not a readable JSON file ({error})") from error
    if not isinstance(metadata, dict) or not isinstance(metadata.get(META_KEY), dict):
        raise DataError(f"{path}: expected an object with a {META_KEY!r} object and 'train'/'test' lists")
    if not isinstance(metadata[META_KEY].get(NORMAL_CLASS_KEY), str):
        raise DataError(f"{path}: {META_KEY}.{NORMAL_CLASS_KEY} missing (expected e.g. \"OK\")")
    return metadata


def _text(entry: dict[str, Any], key: str, where: str, *, required: bool) -> str | None:
    value = entry.get(key)
    if value is None or value == "":
        if required:
            raise DataError(f"{where}: no {key!r} (expected a string)")
        return None
    if not isinstance(value, str):
        raise DataError(f"{where}: {key!r} is {value!r} (expected a string)")
    return value


def list_samples(root: Path, category: str, split: str) -> list[Sample]:
    """The samples of one split of one category, sorted by defect kind then path; files and masks checked."""
    check_split(split)
    json_dir, image_dir = _folders(root)
    path = json_dir / f"{category}.json"
    metadata = _read_metadata(path)
    entries = metadata.get(split)
    if not isinstance(entries, list) or not entries:
        raise DataError(f"{path}: no {split!r} samples (expected a non-empty list under {split!r})")
    normal_class = metadata[META_KEY][NORMAL_CLASS_KEY]
    prefix = str(metadata[META_KEY].get(PREFIX_KEY) or category).strip("/")
    folder = image_dir / prefix
    samples = []
    for index, entry in enumerate(entries):
        where = f"{path} {split}[{index}]"
        if not isinstance(entry, dict):
            raise DataError(f"{where}: expected an object with {IMAGE_KEY}, {CLASS_KEY} and {MASK_KEY}")
        image = folder / _text(entry, IMAGE_KEY, where, required=True)
        if not image.is_file():
            raise DataError(f"{image}: image listed in {where} does not exist")
        anomaly_class = _text(entry, CLASS_KEY, where, required=True)
        mask_text = _text(entry, MASK_KEY, where, required=False)
        if anomaly_class == normal_class:
            if mask_text is not None:
                raise DataError(f"{where}: normal sample {image.name} has a mask {mask_text} "
                                f"(expected {MASK_KEY} null)")
            samples.append(Sample(image, None, category, split, GOOD))
            continue
        if mask_text is None:
            raise DataError(f"{image}: anomaly class {anomaly_class!r} in {where} but no {MASK_KEY} "
                            "(expected the path of its mask)")
        mask = folder / mask_text
        if not mask.is_file():
            raise DataError(f"{mask}: mask listed in {where} does not exist")
        samples.append(Sample(image, mask, category, split, defect_name(anomaly_class)))
    return sort_samples(samples)
