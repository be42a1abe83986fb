"""What every data-set reader shares: the :class:`Sample` it returns, and small checks of files and folders."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from maae.errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "test")
GOOD = "good"
# What a data set's own words for a defect kind become in a Sample: lower case, runs of other characters "_".
_DEFECT_NAME_JUNK = re.compile(r"[^a-z0-9]+")


@dataclass(frozen=True)
class Sample:
    """One image of a data set, with its mask (``None`` for good images) and where it belongs."""

    image_path: Path
    mask_path: Path | None
    category: str
    split: str  # "train" or "test"
    defect: str  # "good" or the name of the defect kind

    @property
    def label(self) -> int:
        """0 for a good image, 1 for a defective one."""
        return 0 if self.defect == GOOD else 1


def is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder`` (sorted by name); none when it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if is_image_file(path))


def subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def check_root(root: Path, layout: str = "MVTec-AD, VisA or Real-IAD layout") -> Path:
    """``root`` as a Path, or a one-line DataError when it is missing or not a folder."""
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder does not exist (expected a folder in {layout})")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a folder in {layout})")
    return root


def check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")


def defect_name(words: str) -> str:
    """A data set's description of a defect kind as a name fit for file names (``"melt, scratch"`` ->
    ``"melt_scratch"``); an empty description is ``"anomaly"``."""
    name = _DEFECT_NAME_JUNK.sub("_", words.strip().lower()).strip("_")
    return name or "anomaly"


def sort_samples(samples: Sequence[Sample]) -> list[Sample]:
    """Samples in the order every reader lists them: by defect kind, then by file path."""
    return sorted(samples, key=lambda sample: (sample.defect, str(sample.image_path)))

