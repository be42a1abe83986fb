"""Tests of maae.metrics against sklearn, brute force, an independent slow AUPRO, and hand-computed cases."""

from __future__ import annotations

import math
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage
from sklearn.metrics import average_precision_score, roc_auc_score

from maae.errors import MetricError
from maae.metrics import (
    AUPRO_FPR_LIMIT,
    METRIC_NAMES,
    MetricWarning,
    _ranking_metrics,
    aupro,
    compute_metrics,
    mean_metrics,
)

SEED = 1234
REFERENCE_THRESHOLDS = 4001
AUPRO_TOLERANCE = 1e-6
SKLEARN_TOLERANCE = 1e-9


# ----------------------------------------------------------------------------------------------------------
# Independent slow references
# ----------------------------------------------------------------------------------------------------------


def reference_aupro(maps: np.ndarray, masks: np.ndarray, fpr_limit: float = AUPRO_FPR_LIMIT) -> float:
    """AUPRO by brute force: a loop over a dense threshold list, and a loop over regions at each threshold.

    The thresholds are every distinct score plus a dense linspace, so the curve has all its corners.
    """
    maps = maps.astype(np.float32)
    regions = []
    for image_map, image_mask in zip(maps, masks, strict=True):
        labelled, n_found = ndimage.label(image_mask, structure=np.ones((3, 3)))
        regions.extend(image_map[labelled == region] for region in range(1, n_found + 1))
    normal_scores = maps[masks == 0]
    dense = np.linspace(maps.min(), maps.max(), REFERENCE_THRESHOLDS, dtype=np.float32)
    thresholds = np.unique(np.concatenate([maps.ravel(), dense]))[::-1]
    fprs, pros = [0.0], [0.0]
    for threshold in thresholds:
        fprs.append(float(np.mean(normal_scores >= threshold)))
        pros.append(float(np.mean([np.mean(region >= threshold) for region in regions])))
    fprs_arr, pros_arr = np.array(fprs), np.array(pros)
    inside = fprs_arr <= fpr_limit
    fpr_in, pro_in = fprs_arr[inside], pros_arr[inside]
    if not inside.all() and fpr_in[-1] < fpr_limit:
        after = int(np.argmax(~inside))
        before = after - 1
        pro_at_limit = np.interp(fpr_limit, fprs_arr[[before, after]], pros_arr[[before, after]])
        fpr_in, pro_in = np.append(fpr_in, fpr_limit), np.append(pro_in, pro_at_limit)
    return float(np.trapezoid(pro_in, fpr_in) / fpr_limit)


def brute_force_f1_max(labels: np.ndarray, scores: np.ndarray) -> float:
    """Best F1 of ``score >= t`` over every distinct score t."""
    best = 0.0
    for threshold in np.unique(scores):
        predicted = scores >= threshold
        true_pos = np.sum(predicted & labels)
        false_pos = np.sum(predicted & ~labels)
        false_neg = np.sum(~predicted & labels)
        best = max(best, 2 * true_pos / (2 * true_pos + false_pos + false_neg))
    return float(best)


def random_category(rng: np.random.Generator, n_images: int = 12, size: int = 24):
    """Random anomaly maps with rectangular defects on half the images, scores correlated with the masks."""
    masks = np.zeros((n_images, size, size), dtype=bool)
    for index in range(n_images // 2):
        top, left = rng.integers(0, size - 6, 2)
        height, width = rng.integers(1, 7, 2)
        masks[index, top : top + height, left : left + width] = True
    maps = (rng.random(masks.shape) + 0.6 * masks).astype(np.float32)
    image_scores = maps.reshape(n_images, -1).max(axis=1)
    image_labels = masks.reshape(n_images, -1).any(axis=1).astype(int)
    return image_scores, image_labels, maps, masks


# ----------------------------------------------------------------------------------------------------------
# Image and pixel AUROC / AP / F1-max
# ----------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [SEED, SEED + 1, SEED + 2])
def test_auroc_and_ap_match_sklearn(seed: int) -> None:
    rng = np.random.default_rng(seed)
    image_scores, image_labels, maps, masks = random_category(rng)
    # Image scores that are not perfectly separable, so the image metrics are informative.
    image_scores = image_scores + rng.normal(0, 0.3, image_scores.shape)
    result = compute_metrics(image_scores, image_labels, maps, masks, category="random")
    assert tuple(result) == METRIC_NAMES
    expected = {
        "image_auroc": roc_auc_score(image_labels, image_scores),
        "image_ap": average_precision_score(image_labels, image_scores),
        "pixel_auroc": roc_auc_score(masks.ravel(), maps.ravel()),
        "pixel_ap": average_precision_score(masks.ravel(), maps.ravel()),
    }
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, abs=SKLEARN_TOLERANCE), name
    assert all(0.0 <= value <= 1.0 for value in result.values())


def test_metrics_match_sklearn_with_many_ties() -> None:
    rng = np.random.default_rng(SEED)
    image_scores, image_labels, maps, masks = random_category(rng)
    maps = np.round(maps * 4) / 4  # few distinct values: heavy ties
    image_scores = np.round(image_scores * 2) / 2
    result = compute_metrics(image_scores, image_labels, maps, masks)
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert result["pixel_ap"] == pytest.approx(average_precision_score(masks.ravel(), maps.ravel()), abs=1e-12)
    assert result["image_auroc"] == pytest.approx(roc_auc_score(image_labels, image_scores), abs=1e-12)
    assert result["image_ap"] == pytest.approx(average_precision_score(image_labels, image_scores), abs=1e-12)
    assert result["pixel_f1_max"] == pytest.approx(brute_force_f1_max(masks.ravel(), maps.ravel()), abs=1e-12)
    assert result["aupro"] == pytest.approx(reference_aupro(maps, masks), abs=AUPRO_TOLERANCE)


def test_auroc_below_half_is_not_flipped() -> None:
    rng = np.random.default_rng(SEED)
    image_scores, image_labels, maps, masks = random_category(rng)
    result = compute_metrics(-image_scores, image_labels, -maps, masks)
    assert result["image_auroc"] < 0.5
    assert result["pixel_auroc"] < 0.5
    assert result["pixel_auroc"] == pytest.approx(roc_auc_score(masks.ravel(), -maps.ravel()), abs=1e-12)


def test_f1_max_matches_brute_force_on_tiny_case() -> None:
    maps = np.array([[[0.9, 0.2, 0.4], [0.7, 0.1, 0.4]], [[0.3, 0.8, 0.6], [0.2, 0.5, 0.05]]], np.float32)
    masks = np.array([[[1, 0, 1], [0, 0, 0]], [[0, 1, 1], [0, 0, 1]]], dtype=bool)
    result = compute_metrics(np.array([0.9, 0.8]), np.array([1, 0]), maps, masks)
    expected = brute_force_f1_max(masks.ravel(), maps.ravel())
    assert result["pixel_f1_max"] == pytest.approx(expected, abs=1e-12)
    # Hand check: threshold 0.4 predicts 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.4 -> tp 4 of 5, fp 3 -> F1 8/12.
    assert expected == pytest.approx(8 / 12)


def test_all_equal_scores_give_legitimate_values() -> None:
    masks = np.zeros((4, 5, 5), dtype=bool)
    masks[:2, 1:3, 1:3] = True
    maps = np.full(masks.shape, 0.5, np.float32)
    result = compute_metrics(np.full(4, 0.5), np.array([1, 1, 0, 0]), maps, masks)
    assert result["image_auroc"] == 0.5
    assert result["pixel_auroc"] == 0.5
    assert result["image_ap"] == pytest.approx(0.5)
    assert result["pixel_ap"] == pytest.approx(masks.mean())
    # The PRO curve is the diagonal: area fpr_limit**2 / 2, normalised by fpr_limit.
    assert result["aupro"] == pytest.approx(AUPRO_FPR_LIMIT / 2)


# ----------------------------------------------------------------------------------------------------------
# AUPRO
# ----------------------------------------------------------------------------------------------------------


def _one_region_case(rng: np.random.Generator):
    masks = np.zeros((1, 16, 16), dtype=bool)
    masks[0, 4:9, 5:11] = True
    return rng.random(masks.shape) + 0.4 * masks, masks


def _two_regions_one_image_case(rng: np.random.Generator):
    masks = np.zeros((1, 20, 20), dtype=bool)
    masks[0, 1:3, 1:3] = True  # 4 pixels
    masks[0, 8:18, 6:16] = True  # 100 pixels
    maps = rng.random(masks.shape)
    maps[0, 1:3, 1:3] += 0.8  # the small region is easy, the large one hard
    maps[0, 8:18, 6:16] += 0.1
    return maps, masks


def _regions_across_images_case(rng: np.random.Generator):
    masks = np.zeros((4, 12, 12), dtype=bool)
    masks[0, 2:5, 2:5] = True
    masks[1, 6:11, 1:3] = True
    masks[1, 0:2, 8:12] = True
    masks[2, 5, 5] = True
    masks[2, 6, 6] = True  # touches (5, 5) diagonally: one region under 8-connectivity
    return rng.random(masks.shape) + 0.3 * masks, masks


def _perfect_case(rng: np.random.Generator):
    maps, masks = _regions_across_images_case(rng)
    return np.where(masks, 2.0 + rng.random(masks.shape), rng.random(masks.shape)), masks


def _inverted_case(rng: np.random.Generator):
    maps, masks = _regions_across_images_case(rng)
    return np.where(masks, rng.random(masks.shape) - 2.0, rng.random(masks.shape)), masks


AUPRO_CASES = {
    "one_region": _one_region_case,
    "two_regions_one_image": _two_regions_one_image_case,
    "regions_across_images": _regions_across_images_case,
    "perfect": _perfect_case,
    "inverted": _inverted_case,
}


@pytest.mark.parametrize("case", sorted(AUPRO_CASES))
@pytest.mark.parametrize("fpr_limit", [AUPRO_FPR_LIMIT, 0.05, 1.0])
def test_aupro_matches_slow_reference(case: str, fpr_limit: float) -> None:
    maps, masks = AUPRO_CASES[case](np.random.default_rng(SEED))
    assert aupro(maps, masks, fpr_limit) == pytest.approx(reference_aupro(maps, masks, fpr_limit), abs=AUPRO_TOLERANCE)


def test_aupro_perfect_is_one_and_inverted_is_zero() -> None:
    rng = np.random.default_rng(SEED)
    assert aupro(*_perfect_case(rng)) == pytest.approx(1.0, abs=1e-12)
    assert aupro(*_inverted_case(rng)) == pytest.approx(0.0, abs=1e-12)


def test_aupro_with_ties_matches_reference() -> None:
    maps, masks = _regions_across_images_case(np.random.default_rng(SEED))
    maps = np.round(maps * 5) / 5
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), abs=AUPRO_TOLERANCE)


def test_aupro_larger_random_matches_reference() -> None:
    rng = np.random.default_rng(SEED)
    _, _, maps, masks = random_category(rng, n_images=6, size=20)
    assert aupro(maps, masks) == pytest.approx(reference_aupro(maps, masks), abs=AUPRO_TOLERANCE)


def test_aupro_hand_computed_single_region() -> None:
    # One 2-pixel region scoring 0.9 and 0.5; six normal pixels scoring 0.6, 0.4, 0.3, 0.2, 0.1, 0.0.
    # Curve: (0, 0) -> (0, 1/2) [t=0.9] -> (1/6, 1/2) [t=0.6] -> (1/6, 1) [t=0.5] -> ... -> (1, 1).
    # Area up to 0.3: 1/6 * 1/2 + (0.3 - 1/6) * 1 = 13/60; normalised: 13/18. Up to 1: 11/12.
    maps = np.array([[[0.9, 0.5, 0.6, 0.4], [0.3, 0.2, 0.1, 0.0]]])
    masks = np.array([[[1, 1, 0, 0], [0, 0, 0, 0]]])
    assert aupro(maps, masks) == pytest.approx(13 / 18, abs=1e-12)
    assert aupro(maps, masks, fpr_limit=1.0) == pytest.approx(11 / 12, abs=1e-12)


def test_aupro_weighs_regions_equally_not_pixels() -> None:
    # A 1-pixel region found at 0.9 and a 3-pixel region only found below every normal pixel (0.5):
    # PRO is 1/2 for every FPR in (0, 1), so AUPRO is 1/2 (a pixel-weighted overlap would give 1/4).
    maps = np.full((1, 4, 4), 0.5)
    masks = np.zeros((1, 4, 4), dtype=bool)
    maps[0, 0, 0], masks[0, 0, 0] = 0.9, True
    maps[0, 3, 1:4], masks[0, 3, 1:4] = 0.1, True
    assert aupro(maps, masks) == pytest.approx(0.5, abs=1e-12)


def test_aupro_uses_eight_connectivity() -> None:
    # (0, 0) touches (1, 1) diagonally, which touches (1, 2): one 3-pixel region under 8-connectivity, of
    # which only (0, 0) is found before any normal pixel -> AUPRO 1/3 (4-connectivity would give 1/2).
    maps = np.full((1, 4, 4), 0.5)
    masks = np.zeros((1, 4, 4), dtype=bool)
    maps[0, 0, 0], masks[0, 0, 0] = 0.9, True
    maps[0, 1, 1:3], masks[0, 1, 1:3] = 0.1, True
    assert aupro(maps, masks) == pytest.approx(1 / 3, abs=1e-12)


def test_aupro_regions_do_not_span_images() -> None:
    # A 1-pixel defect in image 0 (found at 0.9) over a 3-pixel defect in image 1 (found only at 0.1): two
    # regions, PRO 1/2 -> AUPRO 1/2. Joined into one 3-D blob of 4 pixels it would give 1/4.
    maps = np.full((2, 3, 3), 0.5)
    masks = np.zeros((2, 3, 3), dtype=bool)
    masks[0, 1, 1], maps[0, 1, 1] = True, 0.9
    masks[1, 1, :], maps[1, 1, :] = True, 0.1
    assert aupro(maps, masks) == pytest.approx(0.5, abs=1e-12)


def test_aupro_rejects_bad_fpr_limit() -> None:
    maps, masks = _one_region_case(np.random.default_rng(SEED))
    for bad in (0.0, -0.1, 1.5, "0.3"):
        with pytest.raises(MetricError, match="fpr_limit"):
            aupro(maps, masks, bad)


# ----------------------------------------------------------------------------------------------------------
# Degenerate and malformed inputs
# ----------------------------------------------------------------------------------------------------------


def test_no_defective_image_gives_nan_with_warning() -> None:
    rng = np.random.default_rng(SEED)
    maps = rng.random((3, 6, 6)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    with pytest.warns(MetricWarning) as caught:
        result = compute_metrics(maps.max(axis=(1, 2)), np.zeros(3, int), maps, masks, category="bottle")
    assert all(math.isnan(result[name]) for name in METRIC_NAMES)
    messages = " ".join(str(warning.message) for warning in caught)
    assert "bottle" in messages
    for name in METRIC_NAMES:
        assert name in messages


def test_only_defective_images_nan_for_image_metrics_only() -> None:
    rng = np.random.default_rng(SEED)
    maps = rng.random((3, 6, 6)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    masks[:, 2:4, 2:4] = True
    with pytest.warns(MetricWarning, match=r"'carpet'.*image_auroc, image_ap"):
        result = compute_metrics(maps.max(axis=(1, 2)), np.ones(3, int), maps, masks, category="carpet")
    assert math.isnan(result["image_auroc"]) and math.isnan(result["image_ap"])
    for name in ("pixel_auroc", "aupro", "pixel_ap", "pixel_f1_max"):
        assert not math.isnan(result[name]), name


def test_no_defective_pixel_nan_for_pixel_metrics_only() -> None:
    rng = np.random.default_rng(SEED)
    maps = rng.random((4, 6, 6)).astype(np.float32)
    masks = np.zeros(maps.shape, dtype=bool)
    with pytest.warns(MetricWarning, match=r"'grid'.*pixel_auroc, aupro, pixel_ap, pixel_f1_max"):
        result = compute_metrics(np.array([0.9, 0.8, 0.1, 0.2]), np.array([1, 1, 0, 0]), maps, masks, category="grid")
    assert result["image_auroc"] == 1.0
    for name in ("pixel_auroc", "aupro", "pixel_ap", "pixel_f1_max"):
        assert math.isnan(result[name]), name


def test_aupro_degenerate_warns_and_gives_nan() -> None:
    maps = np.random.default_rng(SEED).random((2, 4, 4))
    with pytest.warns(MetricWarning, match="aupro"):
        assert math.isnan(aupro(maps, np.zeros(maps.shape, bool)))
    with pytest.warns(MetricWarning, match="aupro"):
        assert math.isnan(aupro(maps, np.ones(maps.shape, bool)))


def test_valid_input_does_not_warn() -> None:
    rng = np.random.default_rng(SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        compute_metrics(*random_category(rng), category="clean")


MALFORMATIONS = {
    # name: (how the valid inputs (scores, labels, maps, masks) are broken, the input the error must name)
    "short_scores": (lambda s, lab, m, k: (s[:-1], lab, m, k), "image_labels"),
    "2d_scores": (lambda s, lab, m, k: (s[:, None], lab, m, k), "image_scores"),
    "fewer_maps": (lambda s, lab, m, k: (s, lab, m[:-1], k[:-1]), "anomaly_maps"),
    "2d_maps": (lambda s, lab, m, k: (s, lab, m[0], k[0]), "anomaly_maps"),
    "mask_shape": (lambda s, lab, m, k: (s, lab, m, k[:, :-1]), "masks"),
    "mask_255": (lambda s, lab, m, k: (s, lab, m, k.astype(np.uint8) * 255), "masks"),
    "label_2": (lambda s, lab, m, k: (s, lab * 2, m, k), "image_labels"),
    "nan_score": (lambda s, lab, m, k: (s * np.nan, lab, m, k), "image_scores"),
    "inf_map": (lambda s, lab, m, k: (s, lab, np.where(k, np.inf, m), k), "anomaly_maps"),
    "empty": (lambda s, lab, m, k: (s[:0], lab[:0], m[:0], k[:0]), "image_scores"),
}


@pytest.mark.parametrize("malformation", sorted(MALFORMATIONS))
def test_malformed_inputs_raise_metric_error(malformation: str) -> None:
    change, expected = MALFORMATIONS[malformation]
    inputs = change(*random_category(np.random.default_rng(SEED)))
    with pytest.raises(MetricError, match=expected) as raised:
        compute_metrics(*inputs)
    assert "\n" not in str(raised.value)


def test_float_and_int_masks_are_accepted() -> None:
    rng = np.random.default_rng(SEED)
    image_scores, image_labels, maps, masks = random_category(rng)
    as_bool = compute_metrics(image_scores, image_labels, maps, masks)
    as_float = compute_metrics(image_scores, image_labels.astype(float), maps, masks.astype(np.float32))
    assert as_bool == as_float


# ----------------------------------------------------------------------------------------------------------
# mean_metrics
# ----------------------------------------------------------------------------------------------------------


def test_mean_metrics_is_unweighted_and_skips_nan() -> None:
    per_category = {
        "bottle": {"image_auroc": 1.0, "aupro": 0.8},
        "cable": {"image_auroc": 0.5, "aupro": math.nan},
        "grid": {"image_auroc": 0.9, "aupro": 0.6},
    }
    with pytest.warns(MetricWarning, match=r"aupro.*cable"):
        means = mean_metrics(per_category)
    assert means == pytest.approx({"image_auroc": 0.8, "aupro": 0.7})


def test_mean_metrics_all_nan_gives_nan() -> None:
    with pytest.warns(MetricWarning, match="image_ap"):
        means = mean_metrics({"a": {"image_ap": math.nan}, "b": {"image_ap": math.nan}})
    assert math.isnan(means["image_ap"])


def test_mean_metrics_rejects_empty_and_mismatched() -> None:
    with pytest.raises(MetricError, match="per_category"):
        mean_metrics({})
    with pytest.raises(MetricError, match="'b'"):
        mean_metrics({"a": {"image_ap": 1.0}, "b": {"pixel_ap": 1.0}})


def test_mean_metrics_of_compute_metrics_results() -> None:
    rng = np.random.default_rng(SEED)
    first = compute_metrics(*random_category(rng), category="first")
    second = compute_metrics(*random_category(rng), category="second")
    means = mean_metrics({"first": first, "second": second})
    assert tuple(means) == METRIC_NAMES
    for name in METRIC_NAMES:
        assert means[name] == pytest.approx((first[name] + second[name]) / 2)


def test_ranking_metrics_equal_sklearn_to_rounding_on_a_pixel_sized_input_with_ties() -> None:
    """The same curve as sklearn's: equal to the last few bits (sklearn drops collinear ROC points before
    the trapezoid sum, which changes only the rounding)."""
    rng = np.random.default_rng(SEED)
    labels = rng.random(200_000) < 0.02
    scores = np.round(rng.random(200_000).astype(np.float32) + labels * 0.3, 3)  # many ties
    auroc, average_precision, _ = _ranking_metrics(labels, scores)
    assert auroc == pytest.approx(roc_auc_score(labels, scores), rel=1e-12)
    assert average_precision == pytest.approx(average_precision_score(labels, scores), rel=1e-12)


def test_the_metrics_module_does_not_import_sklearn() -> None:
    """Every trial process imports maae.metrics: sklearn (with scipy.stats) would add about a second."""
    code = "import sys, maae.metrics; print(sorted(m for m in sys.modules if m.split('.')[0] == 'sklearn'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[2])
    assert out.stdout.strip() == "[]"
