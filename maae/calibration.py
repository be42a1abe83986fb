"""Calibrated verdicts: the validation split, thresholds at a target false-positive rate, and their test metrics.

A deployed model must say *anomalous or not*, which needs a threshold on its score. Training keeps
``validation_fraction`` of each category's normal training images out of training (:func:`validation_rows`,
drawn with a fixed seed, so the split is a property of the data set: runs that differ only in their training
seed hold out the same images, and a study trial holds out what ``python -m maae train`` holds out); after the
last epoch the model scores them, and :func:`calibrate` puts the image threshold at the
``1 - target_fpr`` quantile of their image scores and the pixel threshold at the same quantile of all their
anomaly-map pixels. Those images are normal by definition and unseen by training, so about ``target_fpr`` of
new normal images (and normal pixels) lie above the thresholds. The test set is never used: its false-positive
rate and recall at the thresholds (:func:`threshold_metrics`) are measured, beside the threshold-free metrics.

The quantile is taken with numpy's ``higher`` method, so strictly fewer than ``target_fpr`` of the validation
values lie above a threshold. With ``n`` validation images the image threshold can only resolve rates of
``1 / n``: below ``n = 1 / target_fpr`` it is the highest validation score, and the rate on new normal images
is about ``1 / (n + 1)`` rather than the target (the pixel threshold has ``n x S x S`` values and no such limit).

A unified model scores several categories whose scores need not share a scale, so its reference holds the
thresholds calibrated on the validation images of all its categories pooled (used when an image's category is
not known) and, under :data:`PER_CATEGORY_KEY`, each category's own (used when it is: ``evaluate``, and
``predict --category``). A category's own thresholds rest on fewer images: see the resolution limit above.

This module is numpy only; :mod:`maae.evaluation` computes the maps it works on.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from maae.errors import DataError

# Keys of a model's normal reference (maae.run_folder's NORMAL_REFERENCE_KEY) once it is calibrated; an
# exported file carries the same reference in its metadata.
IMAGE_THRESHOLD_KEY = "image_threshold"
PIXEL_THRESHOLD_KEY = "pixel_threshold"
TARGET_FPR_KEY = "target_fpr"
VALIDATION_IMAGES_KEY = "validation_images"
CALIBRATION_KEYS = (IMAGE_THRESHOLD_KEY, PIXEL_THRESHOLD_KEY, TARGET_FPR_KEY, VALIDATION_IMAGES_KEY)
# A unified model's reference: category -> that category's own entries of CALIBRATION_KEYS.
PER_CATEGORY_KEY = "per_category"

# The test set's rates at the calibrated thresholds (fractions; NaN where undefined), per category and as
# unweighted means, beside maae.metric_names.METRIC_NAMES in per_category.csv and metrics.json.
THRESHOLD_METRIC_NAMES: tuple[str, ...] = ("image_fpr", "image_recall", "pixel_fpr", "pixel_recall",
                                           "pixel_fpr_good")
# numpy's quantile method: the smallest data value at or above the quantile (never an interpolated one), so
# fewer than target_fpr of the validation values exceed the threshold.
QUANTILE_METHOD = "higher"
# The fewest training images a category needs to keep at least one for training and one for validation.
MIN_IMAGES_FOR_SPLIT = 2
# The seed of every validation split (with the category's name): fixed, not the training seed (see above).
VALIDATION_SPLIT_SEED = 0


@dataclass(frozen=True)
class Thresholds:
    """One model's calibrated thresholds: an image is anomalous when its score exceeds ``image``, a pixel
    when its anomaly-map value exceeds ``pixel``."""

    image: float
    pixel: float
    target_fpr: float
    validation_images: int

    def to_reference(self) -> dict[str, float]:
        """The entries this adds to a model's normal reference."""
        return {IMAGE_THRESHOLD_KEY: self.image, PIXEL_THRESHOLD_KEY: self.pixel, TARGET_FPR_KEY: self.target_fpr,
                VALIDATION_IMAGES_KEY: self.validation_images}

    @classmethod
    def from_reference(cls, reference: Mapping[str, Any], category: str | None = None) -> Thresholds | None:
        """The thresholds in a model's normal reference: ``category``'s own when the reference holds them, else
        the model's pooled ones; None when it was not calibrated (a run trained with ``validation_fraction=0``,
        or written before calibration existed)."""
        own = reference.get(PER_CATEGORY_KEY, {})
        if category is not None and category in own:
            reference = own[category]
        if IMAGE_THRESHOLD_KEY not in reference or PIXEL_THRESHOLD_KEY not in reference:
            return None
        return cls(image=float(reference[IMAGE_THRESHOLD_KEY]), pixel=float(reference[PIXEL_THRESHOLD_KEY]),
                   target_fpr=float(reference.get(TARGET_FPR_KEY, math.nan)),
                   validation_images=int(reference.get(VALIDATION_IMAGES_KEY, 0)))

    def normalised(self, scores: np.ndarray) -> np.ndarray:
        """Scores in units of the image threshold: 1.0 is the threshold, above it is anomalous."""
        return np.asarray(scores, dtype=np.float64) / self.image

    def is_anomalous(self, scores: np.ndarray) -> np.ndarray:
        return np.asarray(scores) > self.image

    def defect_mask(self, anomaly_map: np.ndarray) -> np.ndarray:
        return np.asarray(anomaly_map) > self.pixel


def validation_rows(count: int, fraction: float, *, category: str, seed: int = VALIDATION_SPLIT_SEED,
                    ) -> tuple[int, ...]:
    """Which of a category's ``count`` normal training images (by position) are held out for calibration.

    ``round(fraction * count)`` of them, at least one and at most ``count - 1``, drawn with a generator seeded
    by ``seed`` and the category's name (so a category's split does not depend on which others are trained
    with it); sorted. ``fraction`` 0 holds out none (and draws nothing).
    """
    if fraction <= 0:
        return ()
    if count < MIN_IMAGES_FOR_SPLIT:
        raise DataError(f"category {category!r}: {count} training image(s); a validation split needs at least "
                        f"{MIN_IMAGES_FOR_SPLIT} (or set validation_fraction=0)")
    held = min(count - 1, max(1, round(fraction * count)))
    generator = np.random.default_rng([seed, zlib.crc32(category.encode("utf-8"))])
    return tuple(sorted(int(row) for row in generator.choice(count, size=held, replace=False)))


def calibrate(scores: np.ndarray, maps: np.ndarray, target_fpr: float) -> Thresholds:
    """Thresholds from the image scores and anomaly maps (``n x S x S``) of normal validation images."""
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if scores.size == 0:
        raise ValueError("calibration needs at least one validation image")
    quantile = 1.0 - target_fpr
    image = float(np.quantile(scores, quantile, method=QUANTILE_METHOD))
    pixel = float(np.quantile(np.asarray(maps, dtype=np.float32).ravel(), quantile, method=QUANTILE_METHOD))
    return Thresholds(image=image, pixel=pixel, target_fpr=float(target_fpr), validation_images=int(scores.size))


def _rate(flags: np.ndarray) -> float:
    """The fraction of true flags; NaN for none (a rate over an empty set is undefined, not 0)."""
    return float(np.mean(flags)) if flags.size else math.nan


def threshold_metrics(scores: np.ndarray, labels: np.ndarray, maps: np.ndarray, masks: np.ndarray,
                      thresholds: Thresholds) -> dict[str, float]:
    """The rates of :data:`THRESHOLD_METRIC_NAMES` on a labelled set at ``thresholds``.

    ``image_fpr``: the fraction of normal images flagged; ``image_recall``: of defective images flagged;
    ``pixel_fpr``: of normal pixels (mask 0, in every image, as pixel AUROC counts them) above the pixel
    threshold; ``pixel_recall``: of defect pixels above it; ``pixel_fpr_good``: of the pixels of normal images
    only. The last is what the pixel threshold was calibrated for; ``pixel_fpr`` also counts the normal pixels
    next to a defect, where the map's coarse token grid and smoothing spread the defect's response. Maps and
    masks are at the model's resolution, as for the other pixel metrics.
    """
    flagged = thresholds.is_anomalous(np.asarray(scores))
    labels = np.asarray(labels)
    above = thresholds.defect_mask(maps)
    defect = np.asarray(masks) > 0
    return {"image_fpr": _rate(flagged[labels == 0]), "image_recall": _rate(flagged[labels == 1]),
            "pixel_fpr": _rate(above[~defect]), "pixel_recall": _rate(above[defect]),
            "pixel_fpr_good": _rate(above[labels == 0])}


def mean_threshold_metrics(per_category: Mapping[str, Mapping[str, float]]) -> dict[str, float]:
    """Unweighted means over categories of each rate (categories where it is NaN left out; NaN if all are)."""
    means = {}
    for name in THRESHOLD_METRIC_NAMES:
        values = [v[name] for v in per_category.values() if name in v and not math.isnan(v[name])]
        means[name] = float(np.mean(values)) if values else math.nan
    return means


__all__ = [
    "CALIBRATION_KEYS",
    "IMAGE_THRESHOLD_KEY",
    "PER_CATEGORY_KEY",
    "PIXEL_THRESHOLD_KEY",
    "TARGET_FPR_KEY",
    "THRESHOLD_METRIC_NAMES",
    "VALIDATION_IMAGES_KEY",
    "Thresholds",
    "calibrate",
    "mean_threshold_metrics",
    "threshold_metrics",
    "validation_rows",
]
