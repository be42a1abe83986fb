"""Which reader reads a data folder: chosen from the folder's contents, or named (``--data-format``).

Detection looks for each format's index file, most specific first: ``split_csv/1cls.csv`` is VisA,
``realiad_jsons/`` is Real-IAD, anything else is read in the MVTec-AD layout. A named format must match the
folder: ``--data-format visa`` on a folder without ``split_csv/1cls.csv`` is a one-line error naming it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from maae.data import mvtec, realiad, visa
from maae.data.common import SPLITS, Sample, check_root
from maae.data.images import check_mask_size, header_size
from maae.errors import DataError

_READERS: dict[str, ModuleType] = {reader.FORMAT: reader for reader in (mvtec, visa, realiad)}
DATA_FORMATS: tuple[str, ...] = tuple(_READERS)
# In detection order: the first whose index file is in the folder reads it; MVTec-AD is the fallback layout.
_DETECTED: tuple[ModuleType, ...] = (visa, realiad)
AUTO = "auto"


def detect_data_format(root: Path) -> str:
    """The format of the data folder ``root`` (see the module docstring)."""
    root = check_root(root)
    for reader in _DETECTED:
        if reader.looks_like(root):
            return reader.FORMAT
    return mvtec.FORMAT


def resolve_data_format(root: Path, requested: str | None = None) -> str:
    """``requested`` checked against the folder's contents, or the detected format when it is None/``auto``."""
    detected = detect_data_format(root)
    if requested in (None, AUTO):
        return detected
    if requested not in _READERS:
        raise DataError(f"--data-format: unknown format {requested!r}; expected one of "
                        f"{', '.join((AUTO, *DATA_FORMATS))}")
    if requested != detected:
        wanted, found = _READERS[requested], _READERS[detected]
        if requested == mvtec.FORMAT:
            raise DataError(f"{root}: --data-format {requested}, but the folder holds {found.INDEX} "
                            f"(the {found.LAYOUT}; use --data-format {detected} or auto)")
        raise DataError(f"{root}: --data-format {requested} expects the {wanted.LAYOUT}, but "
                        f"{wanted.INDEX} is not there")
    return requested


def _reader(root: Path, data_format: str | None) -> ModuleType:
    return _READERS[resolve_data_format(root, data_format)]


def discover_categories(root: Path, data_format: str | None = None) -> list[str]:
    """The categories of the data folder, sorted."""
    return _reader(root, data_format).discover_categories(root)


def resolve_categories(root: Path, requested: Sequence[str] | None, data_format: str | None = None) -> list[str]:
    """The requested categories in the order given (duplicates dropped), or all when ``requested`` is empty."""
    available = discover_categories(root, data_format)
    if not requested:
        return available
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise DataError(f"{root}: unknown categories {', '.join(unknown)}; available: {', '.join(available)}")
    return list(dict.fromkeys(requested))


def list_samples(root: Path, category: str, split: str, data_format: str | None = None) -> list[Sample]:
    """The samples of one split (``train`` or ``test``) of one category, masks paired and checked."""
    return _reader(root, data_format).list_samples(root, category, split)


def validate_dataset(root: Path, categories: Sequence[str] | None = None,
                     data_format: str | None = None) -> list[str]:
    """Check a whole data set: layout, pairing, every file readable, every mask the size of its image.

    Returns the (resolved) categories. Reads every file once, so on MVTec-AD it takes seconds, not minutes.
    """
    resolved = resolve_categories(root, categories, data_format)
    for category in resolved:
        for split in SPLITS:
            for sample in list_samples(root, category, split, data_format):
                image_size = header_size(sample.image_path)
                if sample.mask_path is not None:
                    check_mask_size(sample.image_path, image_size, sample.mask_path, header_size(sample.mask_path))
    return resolved


__all__ = [
    "AUTO",
    "DATA_FORMATS",
    "detect_data_format",
    "discover_categories",
    "list_samples",
    "resolve_categories",
    "resolve_data_format",
    "validate_dataset",
]
