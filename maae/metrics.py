"""Anomaly-detection metrics of one category, and their unweighted mean over categories.

The set is ADer's (see ``Metric conventions`` in DESIGN.md): image AUROC and AP on per-image scores (the
caller passes the max of each anomaly map), pixel AUROC and AP over all pixels of the category, pixel
F1-max, and AUPRO up to a false-positive rate of 0.3. Every value is a fraction in [0, 1]; an AUROC below
0.5 is reported as is, never flipped.

Degenerate inputs: a metric that is undefined on the given category (only one image class, no defective
pixel, no normal pixel) is NaN and a :class:`MetricWarning` names the category and the metric; it is never
replaced by a silent 0.5. Scores that are all equal are *not* degenerate and give legitimate values: every
threshold ties, so AUROC is 0.5, AP is the fraction of positives, and the PRO curve is the straight line
from (0, 0) to (1, 1), so AUPRO is fpr_limit / 2 (0.15).

Malformed inputs (wrong shapes or lengths, masks or labels outside {0, 1}, non-finite scores) raise
:class:`maae.errors.MetricError`.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
from scipy import ndimage

from maae.errors import MetricError
from maae.metric_names import METRIC_NAMES

AUPRO_FPR_LIMIT = 0.3

IMAGE_METRICS = ("image_auroc", "image_ap")
PIXEL_METRICS = ("pixel_auroc", "aupro", "pixel_ap", "pixel_f1_max")

# Ground-truth regions for AUPRO are the 8-connected components of each image's mask (as in the MVTec AD
# evaluation code): pixels that touch only diagonally belong to the same defect. Regions never span images.
REGION_CONNECTIVITY_2D = np.ones((3, 3), dtype=bool)

MAP_DTYPE = np.float32
_MAP_NDIM = 3
_WARN_STACKLEVEL = 3


class MetricWarning(RuntimeWarning):
    """A metric is undefined on the given data and reported as NaN."""


def compute_metrics(
    image_scores: np.ndarray,
    image_labels: np.ndarray,
    anomaly_maps: np.ndarray,
    masks: np.ndarray,
    *,
    category: str = "",
) -> dict[str, float]:
    """All METRIC_NAMES for one category, as fractions in [0, 1] (NaN where undefined, with a warning).

    ``image_scores`` [n] float, ``image_labels`` [n] in {0, 1}, ``anomaly_maps`` [n, H, W] float,
    ``masks`` [n, H, W] bool or {0, 1}. Maps are converted to float32 to bound memory.
    """
    scores, labels = _validate_image_inputs(image_scores, image_labels)
    maps, defect = _validate_pixel_inputs(anomaly_maps, masks)
    if maps.shape[0] != scores.shape[0]:
        raise MetricError(
            f"anomaly_maps: expected one map per image score ({scores.shape[0]}), got {maps.shape[0]} maps"
        )
    where = f"category {category!r}" if category else "category (unnamed)"
    results: dict[str, float] = {}

    image_reason = _image_degenerate_reason(labels)
    if image_reason is None:
        results["image_auroc"], results["image_ap"], _ = _ranking_metrics(labels, scores)
    else:
        _warn_nan(where, IMAGE_METRICS, image_reason)
        results.update(dict.fromkeys(IMAGE_METRICS, math.nan))

    pixel_reason = _pixel_degenerate_reason(defect)
    if pixel_reason is None:
        pixel_auroc, pixel_ap, pixel_f1_max = _ranking_metrics(defect.ravel(), maps.ravel())
        results.update(pixel_auroc=pixel_auroc, pixel_ap=pixel_ap, pixel_f1_max=pixel_f1_max)
        results["aupro"] = _aupro_validated(maps, defect, AUPRO_FPR_LIMIT)
    else:
        _warn_nan(where, PIXEL_METRICS, pixel_reason)
        results.update(dict.fromkeys(PIXEL_METRICS, math.nan))

    return {name: results[name] for name in METRIC_NAMES}


def aupro(anomaly_maps: np.ndarray, masks: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """Area under the per-region-overlap curve up to ``fpr_limit``, normalised by ``fpr_limit`` (in [0, 1]).

    Standard definition (Bergmann et al., MVTec AD): the regions are the 8-connected components of each mask.
    A pixel is predicted anomalous at threshold t when its score is >= t. For every threshold, PRO is the mean
    over all regions of the fraction of the region's pixels predicted anomalous (each region counts equally,
    whatever its size), and FPR is the fraction of normal pixels (mask 0, over all images) predicted
    anomalous.
    PRO is integrated over FPR from 0 to ``fpr_limit`` with the trapezoid rule, the curve being interpolated
    linearly at exactly ``fpr_limit``. NaN, with a warning, when there is no defective or no normal pixel.
    """
    maps, defect = _validate_pixel_inputs(anomaly_maps, masks)
    is_number = isinstance(fpr_limit, (int, float, np.number)) and not isinstance(fpr_limit, bool)
    if not (is_number and 0.0 < float(fpr_limit) <= 1.0):
        raise MetricError(f"fpr_limit: expected a number in (0, 1], got {fpr_limit!r}")
    reason = _pixel_degenerate_reason(defect)
    if reason is not None:
        _warn_nan("aupro() input", ("aupro",), reason)
        return math.nan
    return _aupro_validated(maps, defect, float(fpr_limit))


def mean_metrics(per_category: dict[str, dict[str, float]]) -> dict[str, float]:
    """Unweighted mean over categories of each metric; NaNs are skipped with a warning; all-NaN gives NaN.

    Every category must report the same metric names; the result keeps the order of the first category.
    """
    if not per_category:
        raise MetricError("per_category: expected at least one category, got none")
    categories = list(per_category)
    names = list(per_category[categories[0]])
    for category in categories[1:]:
        if set(per_category[category]) != set(names):
            raise MetricError(
                f"per_category[{category!r}]: expected the metrics {sorted(names)}, "
                f"got {sorted(per_category[category])}"
            )
    means: dict[str, float] = {}
    for name in names:
        values = np.array([float(per_category[category][name]) for category in categories], dtype=np.float64)
        missing = [category for category, value in zip(categories, values, strict=True) if math.isnan(value)]
        if len(missing) == len(categories):
            warnings.warn(
                f"mean of {name} is NaN: it is NaN in every category ({', '.join(missing)})",
                MetricWarning,
                stacklevel=2,
            )
            means[name] = math.nan
            continue
        if missing:
            warnings.warn(
                f"mean of {name} skips {len(missing)} of {len(categories)} categories where it is NaN: "
                f"{', '.join(missing)}",
                MetricWarning,
                stacklevel=2,
            )
        means[name] = float(np.mean(values[~np.isnan(values)]))
    return means


def _aupro_validated(maps: np.ndarray, defect: np.ndarray, fpr_limit: float) -> float:
    """AUPRO on validated float32 maps and bool masks holding both defective and normal pixels.

    Vectorised: sorting the pixels by decreasing score, lowering the threshold past a pixel adds 1/n_normal
    to FPR if it is normal, and 1/(n_regions * region_size) to PRO if it is in a region. So both curves are
    cumulative sums over the sorted pixels, read at the end of each run of tied scores. Only the pixels that
    reach the first curve point beyond fpr_limit are sorted (a partition finds them), which makes the curve
    up to fpr_limit exact at a fraction of the cost of sorting every pixel.
    """
    # Label every image's components in one call: the 3-D structure connects nothing across images.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = REGION_CONNECTIVITY_2D
    region_ids, n_regions = ndimage.label(defect, structure=structure)
    region_ids = region_ids.ravel()
    region_sizes = np.bincount(region_ids, minlength=n_regions + 1)
    n_normal = int(region_sizes[0])
    pro_step = np.zeros(n_regions + 1, dtype=np.float64)
    pro_step[1:] = 1.0 / (n_regions * region_sizes[1:])

    scores = maps.ravel()
    lowest_needed = _lowest_needed_threshold(scores[region_ids == 0], fpr_limit)
    needed = scores >= lowest_needed
    scores, region_ids = scores[needed], region_ids[needed]
    del needed
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    sorted_ids = region_ids[order]
    del order, scores, region_ids
    fpr = np.cumsum(sorted_ids == 0, dtype=np.int64) / n_normal
    pro = np.cumsum(pro_step[sorted_ids])
    del sorted_ids
    # The curve's points are the ends of runs of tied scores, after (0, 0) for a threshold above every score.
    run_ends = _tie_run_ends(sorted_scores)
    fpr = np.concatenate(([0.0], fpr[run_ends]))
    pro = np.clip(np.concatenate(([0.0], pro[run_ends])), 0.0, 1.0)
    return _area_up_to(fpr, pro, fpr_limit) / fpr_limit


def _tie_run_ends(sorted_scores: np.ndarray) -> np.ndarray:
    """Index of the last element of every run of equal scores in a sorted array: the curve points of the ROC and
    PRO curves, since a threshold passes all tied pixels at once."""
    return np.append(np.flatnonzero(sorted_scores[1:] != sorted_scores[:-1]), sorted_scores.size - 1)


def _lowest_needed_threshold(normal_scores: np.ndarray, fpr_limit: float) -> float:
    """A threshold whose FPR exceeds fpr_limit, as high as possible: the curve needs no lower threshold.

    It is the score of the c-th highest normal pixel, with c one or two past fpr_limit * n_normal (two guards
    against rounding in the product); at it at least c normal pixels are predicted anomalous.
    """
    n_normal = normal_scores.size
    count = min(n_normal, math.floor(fpr_limit * n_normal) + 2)
    position = n_normal - count
    normal_scores.partition(position)
    return float(normal_scores[position])


def _area_up_to(fpr: np.ndarray, pro: np.ndarray, fpr_limit: float) -> float:
    """Trapezoid area under the polyline (fpr, pro) from fpr 0 to fpr_limit; fpr is non-decreasing from 0.

    Vertical steps (equal fpr) add no area. The last segment crossing fpr_limit is cut there by linear
    interpolation.
    """
    n_inside = int(np.searchsorted(fpr, fpr_limit, side="right"))
    fpr_in, pro_in = fpr[:n_inside], pro[:n_inside]
    if n_inside < fpr.size and fpr_in[-1] < fpr_limit:
        left, right = n_inside - 1, n_inside
        fraction = (fpr_limit - fpr[left]) / (fpr[right] - fpr[left])
        pro_at_limit = pro[left] + fraction * (pro[right] - pro[left])
        fpr_in = np.append(fpr_in, fpr_limit)
        pro_in = np.append(pro_in, pro_at_limit)
    area = float(np.trapezoid(pro_in, fpr_in))
    return min(max(area, 0.0), fpr_limit)


def _ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
    """AUROC, average precision and the best F1 over thresholds of binary labels, from one sort of the scores.

    Sorting by decreasing score, the true- and false-positive counts at every distinct threshold are
    cumulative sums read at the end of each run of tied scores (after the point (0, 0) above every score).
    AUROC is the trapezoid area under that ROC curve and AP the step-wise sum over thresholds of
    (recall increase) * precision: the definitions of sklearn's ``roc_auc_score`` and
    ``average_precision_score``, which the tests check against. F1 is 0 where precision and recall are both
    0. The caller guarantees both classes are present.

    Why not sklearn itself: its import (about a second, with scipy.stats) is paid by every trial process,
    and its stable sort is slower than numpy's default sort, whose order within ties does not matter here.
    """
    order = np.argsort(scores)[::-1]
    sorted_scores = scores[order]
    positive_cumsum = np.cumsum(labels[order] != 0, dtype=np.int64)
    del order
    run_ends = _tie_run_ends(sorted_scores)
    del sorted_scores
    true_pos = np.concatenate(([0], positive_cumsum[run_ends])).astype(np.float64)
    false_pos = np.concatenate(([0], run_ends + 1)).astype(np.float64) - true_pos
    del positive_cumsum, run_ends
    n_positive, n_negative = true_pos[-1], false_pos[-1]
    recall = true_pos / n_positive
    auroc = float(np.trapezoid(recall, false_pos / n_negative))
    predicted_pos = true_pos + false_pos
    # Nothing predicted positive (the first point, above every score): precision 1, as sklearn defines it.
    precision = np.divide(true_pos, predicted_pos, out=np.ones_like(true_pos), where=predicted_pos > 0)
    average_precision = float(np.sum(np.diff(recall) * precision[1:]))
    denominator = precision + recall
    f1 = np.divide(2.0 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return auroc, average_precision, float(np.max(f1))


def _image_degenerate_reason(labels: np.ndarray) -> str | None:
    """Why image metrics are undefined on these labels, or None when both classes are present."""
    n_defective = int(labels.sum())
    if n_defective == 0:
        return "no defective image (image_labels are all 0)"
    if n_defective == labels.size:
        return "only defective images (image_labels are all 1)"
    return None


def _pixel_degenerate_reason(defect: np.ndarray) -> str | None:
    """Why pixel metrics are undefined on these masks, or None when both pixel classes are present."""
    n_defective = int(np.count_nonzero(defect))
    if n_defective == 0:
        return "no defective pixel (masks are all 0)"
    if n_defective == defect.size:
        return "no normal pixel (masks are all 1)"
    return None


def _warn_nan(where: str, metric_names: tuple[str, ...], reason: str) -> None:
    """Warn that the named metrics are NaN on ``where`` and why."""
    warnings.warn(
        f"{where}: {', '.join(metric_names)} set to NaN: {reason}", MetricWarning, stacklevel=_WARN_STACKLEVEL
    )


def _validate_image_inputs(image_scores: np.ndarray, image_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Image scores as float64 [n] and labels as int8 [n] in {0, 1}; MetricError otherwise."""
    scores = np.asarray(image_scores)
    labels = np.asarray(image_labels)
    if scores.ndim != 1 or scores.size == 0:
        raise MetricError(f"image_scores: expected a non-empty 1-D array [n], got shape {scores.shape}")
    if labels.shape != scores.shape:
        raise MetricError(f"image_labels: expected shape {scores.shape} like image_scores, got {labels.shape}")
    if not np.issubdtype(scores.dtype, np.number) or not np.all(np.isfinite(scores)):
        raise MetricError("image_scores: expected finite numbers, got NaN, inf or a non-numeric array")
    if not _is_binary(labels):
        raise MetricError(f"image_labels: expected values in {{0, 1}}, got {np.unique(labels)[:5].tolist()}")
    return scores.astype(np.float64, copy=False), labels.astype(np.int8)


def _validate_pixel_inputs(anomaly_maps: np.ndarray, masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Maps as float32 [n, H, W] and masks as bool [n, H, W]; MetricError otherwise."""
    maps = np.asarray(anomaly_maps)
    masks = np.asarray(masks)
    if maps.ndim != _MAP_NDIM or 0 in maps.shape:
        raise MetricError(f"anomaly_maps: expected a non-empty array [n, H, W], got shape {maps.shape}")
    if masks.shape != maps.shape:
        raise MetricError(f"masks: expected shape {maps.shape} like anomaly_maps, got {masks.shape}")
    if not np.issubdtype(maps.dtype, np.number):
        raise MetricError(f"anomaly_maps: expected a numeric array, got dtype {maps.dtype}")
    maps = maps.astype(MAP_DTYPE, copy=False)
    if not np.all(np.isfinite(maps)):
        raise MetricError("anomaly_maps: expected finite float32 scores, got NaN or inf")
    if not _is_binary(masks):
        raise MetricError(
            f"masks: expected values in {{0, 1}} (divide 0/255 masks by 255), got {np.unique(masks)[:5].tolist()}"
        )
    return maps, masks.astype(bool, copy=False)


def _is_binary(values: np.ndarray) -> bool:
    """Whether every entry is 0 or 1 (any numeric or bool dtype)."""
    if values.dtype == bool:
        return True
    if not np.issubdtype(values.dtype, np.number):
        return False
    return bool(np.all((values == 0) | (values == 1)))
