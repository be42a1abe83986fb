"""Reader for any data set in the MVTec-AD folder layout.

The layout (MVTec-AD, MPDD, BTAD, VisA once converted, and the embedded set of :mod:`maae.synthetic`)::

    <root>/<category>/train/good/<image>
    <root>/<category>/test/good/<image>
    <root>/<category>/test/<defect>/<image>
    <root>/<category>/ground_truth/<defect>/<stem>_mask.<ext>    (BTAD: <stem>.<ext>)

Listing pairs every defective test image with its mask and checks the pairing from the file names only, so it
is fast; :func:`maae.data.validate_dataset` additionally opens every file and compares image and mask sizes.
Every problem is a :class:`~maae.errors.DataError` whose one line names the file or folder and what was
expected.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from maae.data.common import GOOD, Sample, check_root, check_split, image_files, subfolders
from maae.errors import DataError

FORMAT = "mvtec"
LAYOUT = "MVTec-AD layout"
# What detection looks for, as error messages name it.
INDEX = "<category>/train/good/"
MASK_SUFFIX = "_mask"
GROUND_TRUTH = "ground_truth"


def _by_stem(files: Sequence[Path], what: str) -> dict[str, Path]:
    """Map file stems to files; two files with one stem (``000.png`` and ``000.bmp``) are ambiguous."""
    mapping: dict[str, Path] = {}
    for path in files:
        if path.stem in mapping:
            raise DataError(f"{path}: two {what} files share the stem {path.stem!r} "
                            f"({mapping[path.stem].name}); expected one per stem")
        mapping[path.stem] = path
    return mapping


def discover_categories(root: Path) -> list[str]:
    """The categories under ``root``, sorted: sub-folders whose ``train/good`` holds at least one image."""
    root = check_root(root, LAYOUT)
    categories = [folder.name for folder in subfolders(root) if image_files(folder / "train" / GOOD)]
    if not categories:
        raise DataError(f"{root}: no category folder with images in <category>/train/good "
                        f"(expected the {LAYOUT})")
    return categories


def _find_mask(image: Path, masks: dict[str, Path], mask_folder: Path) -> Path:
    """The mask of a defective image: ``<stem>_mask.*`` first, then ``<stem>.*`` (BTAD)."""
    for stem in (image.stem + MASK_SUFFIX, image.stem):
        if stem in masks:
            return masks[stem]
    raise DataError(f"{image}: defective test image without a mask (expected "
                    f"{mask_folder / (image.stem + MASK_SUFFIX)}.png or {mask_folder / image.stem}.png)")


def _check_masks_have_images(mask_folder: Path, image_stems: set[str]) -> None:
    """Every mask in ``mask_folder`` must belong to an image of the matching test folder."""
    for mask in image_files(mask_folder):
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
    check_split(split)
    category_dir = check_root(root, LAYOUT) / category
    if not category_dir.is_dir():
        raise DataError(f"{category_dir}: category folder does not exist")
    if split == "train":
        train_dir = category_dir / "train" / GOOD
        images = image_files(train_dir)
        if not images:
            raise DataError(f"{train_dir}: no training images (expected good images in train/good)")
        return [Sample(path, None, category, split, GOOD) for path in images]

    test_dir = category_dir / "test"
    truth_dir = category_dir / GROUND_TRUTH
    samples: list[Sample] = []
    defect_names: set[str] = set()
    for defect_dir in subfolders(test_dir):
        defect = defect_dir.name
        images = image_files(defect_dir)
        _by_stem(images, "image")
        if defect == GOOD:
            samples.extend(Sample(path, None, category, split, GOOD) for path in images)
            continue
        defect_names.add(defect)
        mask_folder = truth_dir / defect
        masks = _by_stem(image_files(mask_folder), "mask")
        samples.extend(
            Sample(path, _find_mask(path, masks, mask_folder), category, split, defect) for path in images
        )
        _check_masks_have_images(mask_folder, {path.stem for path in images})
    for mask_folder in subfolders(truth_dir):
        # Masks of a defect with no test folder at all; ground_truth/good (if any) is not read.
        if mask_folder.name != GOOD and mask_folder.name not in defect_names:
            _check_masks_have_images(mask_folder, set())
    if not samples:
        raise DataError(f"{test_dir}: empty test split (expected images in test/good and test/<defect>)")
    return samples
