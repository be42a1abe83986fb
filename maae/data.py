"""Reader for any data set in the MVTec-AD folder layout.

The layout (MVTec-AD, MPDD, BTAD, VisA once converted, and the embedded set of :mod:`maae.synthetic`)::

    <root>/<category>/train/good/<image>
    <root>/<category>/test/good/<image>
    <root>/<category>/test/<defect>/<image>
    <root>/<category>/ground_truth/<defect>/<stem>_mask.<ext>    (BTAD: <stem>.<ext>)

Listing pairs every defective test image with its mask and checks the pairing from the file names only, so it
is fast; :func:`validate_dataset` additionally opens every file and compares image and mask sizes. Every
problem is a :class:`~maae.errors.DataError` whose one line names the file or folder and what was expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from maae.errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
SPLITS = ("train", "test")
GOOD = "good"
MASK_SUFFIX = "_mask"
GROUND_TRUTH = "ground_truth"
# PIL modes that hold 16-bit grey values; they are scaled to 8 bits before the RGB conversion.
_SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N")
_SIXTEEN_BIT_TO_EIGHT = 257.0
_MAX_8BIT = 255.0
# PIL modes whose values a mask can be read from directly (one channel); others are converted to RGB first.
_SINGLE_CHANNEL_MODES = ("1", "L", "I", "F", *_SIXTEEN_BIT_MODES)
# What PIL raises on a file it cannot identify or decode.
_PIL_READ_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)


@dataclass(frozen=True)
class Sample:
    """One image of a data set, with its mask (``None`` for good images) and where it belongs."""

    image_path: Path
    mask_path: Path | None
    category: str
    split: str  # "train" or "test"
    defect: str  # "good" or the name of the defect folder

    @property
    def label(self) -> int:
        """0 for a good image, 1 for a defective one."""
        return 0 if self.defect == GOOD else 1


def _is_image_file(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def _image_files(folder: Path) -> list[Path]:
    """The image files directly inside ``folder`` (sorted by name); none when it is not a folder."""
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if _is_image_file(path))


def _subfolders(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(path for path in folder.iterdir() if path.is_dir() and not path.name.startswith("."))


def _by_stem(files: Sequence[Path], what: str) -> dict[str, Path]:
    """Map file stems to files; two files with one stem (``000.png`` and ``000.bmp``) are ambiguous."""
    mapping: dict[str, Path] = {}
    for path in files:
        if path.stem in mapping:
            raise DataError(f"{path}: two {what} files share the stem {path.stem!r} "
                            f"({mapping[path.stem].name}); expected one per stem")
        mapping[path.stem] = path
    return mapping


def _check_root(root: Path) -> Path:
    root = Path(root)
    if not root.exists():
        raise DataError(f"{root}: data folder does not exist (expected a folder in MVTec-AD layout)")
    if not root.is_dir():
        raise DataError(f"{root}: not a directory (expected a folder in MVTec-AD layout)")
    return root


def discover_categories(root: Path) -> list[str]:
    """The categories under ``root``, sorted: sub-folders whose ``train/good`` holds at least one image."""
    root = _check_root(root)
    categories = [folder.name for folder in _subfolders(root) if _image_files(folder / "train" / GOOD)]
    if not categories:
        raise DataError(f"{root}: no category folder with images in <category>/train/good "
                        "(expected the MVTec-AD layout)")
    return categories


def resolve_categories(root: Path, requested: Sequence[str] | None) -> list[str]:
    """The requested categories in the order given (duplicates dropped), or all when ``requested`` is empty."""
    available = discover_categories(root)
    if not requested:
        return available
    unknown = [name for name in requested if name not in available]
    if unknown:
        raise DataError(f"{root}: unknown categories {', '.join(unknown)}; available: {', '.join(available)}")
    return list(dict.fromkeys(requested))


def _find_mask(image: Path, masks: dict[str, Path], mask_folder: Path) -> Path:
    """The mask of a defective image: ``<stem>_mask.*`` first, then ``<stem>.*`` (BTAD)."""
    for stem in (image.stem + MASK_SUFFIX, image.stem):
        if stem in masks:
            return masks[stem]
    raise DataError(f"{image}: defective test image without a mask (expected "
                    f"{mask_folder / (image.stem + MASK_SUFFIX)}.png or {mask_folder / image.stem}.png)")


def _check_masks_have_images(mask_folder: Path, image_stems: set[str]) -> None:
    """Every mask in ``mask_folder`` must belong to an image of the matching test folder."""
    for mask in _image_files(mask_folder):
        stem = mask.stem
        candidates = {stem}
        if stem.endswith(MASK_SUFFIX):
            candidates.add(stem[: -len(MASK_SUFFIX)])
        if not candidates & image_stems:
            defect = mask_folder.name
            raise DataError(f"{mask}: mask without an image (expected an image with stem "
                            f"{min(candidates, key=len)!r} in test/{defect})")


def list_samples(root: Path, category: str, split: str) -> list[Sample]:
    """The samples of one split of one category, sorted by defect then file name, masks paired and checked.

    ``train`` holds ``train/good`` only; ``test`` holds ``test/good`` and every ``test/<defect>`` folder,
    each defective image paired with its mask in ``ground_truth/<defect>``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    category_dir = _check_root(root) / category
    if not category_dir.is_dir():
        raise DataError(f"{category_dir}: category folder does not exist")
    if split == "train":
        train_dir = category_dir / "train" / GOOD
        images = _image_files(train_dir)
        if not images:
            raise DataError(f"{train_dir}: no training images (expected good images in train/good)")
        return [Sample(path, None, category, split, GOOD) for path in images]

    test_dir = category_dir / "test"
    truth_dir = category_dir / GROUND_TRUTH
    samples: list[Sample] = []
    defect_names: set[str] = set()
    for defect_dir in _subfolders(test_dir):
        defect = defect_dir.name
        images = _image_files(defect_dir)
        _by_stem(images, "image")
        if defect == GOOD:
            samples.extend(Sample(path, None, category, split, GOOD) for path in images)
            continue
        defect_names.add(defect)
        mask_folder = truth_dir / defect
        masks = _by_stem(_image_files(mask_folder), "mask")
        samples.extend(
            Sample(path, _find_mask(path, masks, mask_folder), category, split, defect) for path in images
        )
        _check_masks_have_images(mask_folder, {path.stem for path in images})
    for mask_folder in _subfolders(truth_dir):
        # Masks of a defect with no test folder at all; ground_truth/good (if any) is not read.
        if mask_folder.name != GOOD and mask_folder.name not in defect_names:
            _check_masks_have_images(mask_folder, set())
    if not samples:
        raise DataError(f"{test_dir}: empty test split (expected images in test/good and test/<defect>)")
    return samples


def _open_image(path: Path) -> Image.Image:
    """Open and decode an image file, turning any decoding failure into a DataError naming the file."""
    try:
        with Image.open(path) as image:
            image.load()
            return image.copy()
    except FileNotFoundError as error:
        raise DataError(f"{path}: image file does not exist") from error
    except _PIL_READ_ERRORS as error:
        raise DataError(f"{path}: unreadable or corrupt image file ({error}); expected one of "
                        f"{', '.join(IMAGE_EXTENSIONS)}") from error


def _to_rgb(image: Image.Image) -> Image.Image:
    if image.mode in _SIXTEEN_BIT_MODES:
        grey = np.asarray(image, dtype=np.float32) / _SIXTEEN_BIT_TO_EIGHT
        image = Image.fromarray(np.clip(np.rint(grey), 0, _MAX_8BIT).astype(np.uint8))
    return image if image.mode == "RGB" else image.convert("RGB")


def _image_array(image: Image.Image, image_size: int) -> np.ndarray:
    rgb = _to_rgb(image)
    if rgb.size != (image_size, image_size):
        # Pillow widens the bilinear kernel when it shrinks an image, so this resize is antialiased.
        rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.float32) / _MAX_8BIT


def _mask_array(image: Image.Image, image_size: int) -> np.ndarray:
    if image.mode not in _SINGLE_CHANNEL_MODES:
        image = image.convert("RGBA" if "A" in image.mode else "RGB")
    values = np.asarray(image)
    if values.ndim == 3:
        values = values[..., :3].max(axis=-1)  # any non-zero colour channel marks a defect; alpha does not
    binary = Image.fromarray((values > 0).astype(np.uint8))
    if binary.size != (image_size, image_size):
        binary = binary.resize((image_size, image_size), Image.Resampling.NEAREST)
    return np.asarray(binary, dtype=np.uint8)


def load_image(path: Path, image_size: int) -> np.ndarray:
    """An image as float32 ``image_size x image_size x 3`` RGB in [0, 1] (grey images are expanded)."""
    return _image_array(_open_image(Path(path)), image_size)


def load_mask(path: Path | None, image_size: int) -> np.ndarray:
    """A mask as uint8 ``image_size x image_size`` in {0, 1} (any non-zero value is a defect); ``None``
    gives an empty mask. Resized with nearest neighbour so it stays binary."""
    if path is None:
        return np.zeros((image_size, image_size), dtype=np.uint8)
    return _mask_array(_open_image(Path(path)), image_size)


def _check_mask_size(image_path: Path, image_size: tuple[int, int], mask_path: Path,
                     mask_size: tuple[int, int]) -> None:
    if image_size != mask_size:
        raise DataError(f"{mask_path}: mask is {mask_size[0]}x{mask_size[1]} but its image {image_path.name} "
                        f"is {image_size[0]}x{image_size[1]} (expected equal sizes)")


class AnomalyDataset(torch.utils.data.Dataset):
    """Samples as tensors: ``image`` (3xSxS float in [0, 1]), ``mask`` (1xSxS float in {0, 1}), ``label``,
    ``category_index`` (position of the sample's category in ``categories``) and ``index``."""

    def __init__(self, samples: Sequence[Sample], image_size: int, categories: Sequence[str]) -> None:
        self.samples: list[Sample] = list(samples)
        self.image_size = int(image_size)
        self.categories: list[str] = list(categories)
        self._category_index = {name: index for index, name in enumerate(self.categories)}
        missing = sorted({sample.category for sample in self.samples} - set(self._category_index))
        if missing:
            raise ValueError(f"samples of categories {missing} are not in categories {self.categories}")

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor | int]:
        sample = self.samples[index]
        image = _open_image(sample.image_path)
        if sample.mask_path is None:
            mask = np.zeros((self.image_size, self.image_size), dtype=np.uint8)
        else:
            mask_image = _open_image(sample.mask_path)
            _check_mask_size(sample.image_path, image.size, sample.mask_path, mask_image.size)
            mask = _mask_array(mask_image, self.image_size)
        pixels = _image_array(image, self.image_size)
        return {
            "image": torch.from_numpy(np.ascontiguousarray(pixels.transpose(2, 0, 1))),
            "mask": torch.from_numpy(mask.astype(np.float32))[None],
            "label": sample.label,
            "category_index": self._category_index[sample.category],
            "index": index,
        }


def _header_size(path: Path) -> tuple[int, int]:
    """Check that a file is a readable image (PIL's verify reads the whole file) and return its size."""
    try:
        with Image.open(path) as image:
            size = image.size
            image.verify()
    except _PIL_READ_ERRORS as error:
        raise DataError(f"{path}: unreadable or corrupt image file ({error}); expected one of "
                        f"{', '.join(IMAGE_EXTENSIONS)}") from error
    return size


def validate_dataset(root: Path, categories: Sequence[str] | None = None) -> list[str]:
    """Check a whole data set: layout, pairing, every file readable, every mask the size of its image.

    Returns the (resolved) categories. Reads every file once, so on MVTec-AD it takes seconds, not minutes.
    """
    resolved = resolve_categories(root, categories)
    for category in resolved:
        for split in SPLITS:
            for sample in list_samples(root, category, split):
                image_size = _header_size(sample.image_path)
                if sample.mask_path is not None:
                    _check_mask_size(sample.image_path, image_size, sample.mask_path,
                                     _header_size(sample.mask_path))
    return resolved
