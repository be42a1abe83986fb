"""Data sets: readers for the MVTec-AD, VisA and Real-IAD layouts, image and mask loading, and a torch Dataset.

Every reader returns the same :class:`Sample` records; which one reads a folder is detected from its
contents or named with ``data_format`` (:mod:`maae.data.formats`). The layouts:

- :mod:`maae.data.mvtec`: ``<category>/train/good``, ``test/<defect>``, ``ground_truth/<defect>`` (MVTec-AD,
  MPDD, BTAD, converted VisA, the embedded set);
- :mod:`maae.data.visa`: VisA as published, ``split_csv/1cls.csv`` and ``<object>/Data/{Images,Masks}``;
- :mod:`maae.data.realiad`: Real-IAD as published, ``realiad_jsons/`` and ``realiad_<resolution>/``.
"""

from maae.data.common import GOOD, IMAGE_EXTENSIONS, SPLITS, Sample
from maae.data.dataset import AnomalyDataset
from maae.data.formats import (
    AUTO,
    DATA_FORMATS,
    detect_data_format,
    discover_categories,
    list_samples,
    resolve_categories,
    resolve_data_format,
    validate_dataset,
)
from maae.data.images import ImageConversionWarning, decode_image, load_image, load_mask, load_mask_at

__all__ = [
    "AUTO",
    "DATA_FORMATS",
    "GOOD",
    "IMAGE_EXTENSIONS",
    "SPLITS",
    "AnomalyDataset",
    "ImageConversionWarning",
    "Sample",
    "decode_image",
    "detect_data_format",
    "discover_categories",
    "list_samples",
    "load_image",
    "load_mask",
    "load_mask_at",
    "resolve_categories",
    "resolve_data_format",
    "validate_dataset",
]
