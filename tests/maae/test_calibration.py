"""Calibrated verdicts: the seeded validation split, thresholds at the target false-positive rate, the test set's
rates at them in every output, ``validation_fraction=0`` training exactly as before, and old run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import RandomSampler

from maae.calibration import (
    IMAGE_THRESHOLD_KEY,
    PER_CATEGORY_KEY,
    PIXEL_THRESHOLD_KEY,
    TARGET_FPR_KEY,
    THRESHOLD_METRIC_NAMES,
    VALIDATION_SPLIT_SEED,
    Thresholds,
    calibrate,
    threshold_metrics,
    validation_rows,
)
from maae.checkpoint import load_run
from maae.cli import main
from maae.config import MAAEConfig
from maae.data import decode_image, list_samples
from maae.engine import UNIFIED_KEY, TrainingSession, prepare_data
from maae.errors import ConfigError, DataError
from maae.metric_names import METRIC_NAMES
from maae.predict import checkpoint_scorer
from maae.run_folder import CHECKPOINT_FILE, load_checkpoint

CATEGORIES = ["hex_nut", "grass"]
# Two of each category's eight tiny training images are held out (one at the default 10%).
FRACTION = 0.25
TARGET_FPR = 0.05
# Calibration reads the cached (float16) backbone features, predict runs the backbone in float32: the same
# image's score differs by this much, relative to it, at most.
CACHE_ROUNDING = 1e-2


def _set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _config(overrides: list[str], **changes) -> MAAEConfig:
    return MAAEConfig.from_dict({**dict(item.split("=", 1) for item in overrides), **changes}, source="test")


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------------------- units ---

def test_validation_rows_are_seeded_sized_and_chosen_per_category() -> None:
    rows = validation_rows(60, 0.1, category="brick")
    assert len(rows) == 6 and list(rows) == sorted(set(rows)) and all(0 <= r < 60 for r in rows)
    assert validation_rows(60, 0.1, category="brick") == rows  # seeded: the same split every time
    assert validation_rows(60, 0.1, category="brick", seed=VALIDATION_SPLIT_SEED + 1) != rows
    assert validation_rows(60, 0.1, category="grass") != rows  # categories get their own draw
    assert validation_rows(60, 0.0, category="brick") == ()
    assert len(validation_rows(8, 0.1, category="brick")) == 1  # at least one image ...
    assert len(validation_rows(2, 0.9, category="brick")) == 1  # ... and at least one left to train on
    with pytest.raises(DataError, match="'brick': 1 training image") as error:
        validation_rows(1, 0.1, category="brick")
    assert "\n" not in str(error.value)


def test_calibration_leaves_fewer_than_the_target_rate_above_the_thresholds() -> None:
    generator = np.random.default_rng(0)
    scores = generator.normal(size=1000)
    maps = generator.gamma(2.0, size=(50, 16, 16)).astype(np.float32)
    thresholds = calibrate(scores, maps, 0.01)
    assert np.mean(scores > thresholds.image) <= 0.01 and np.mean(maps > thresholds.pixel) <= 0.01
    assert thresholds.image == np.sort(scores)[990]  # a data value (numpy's "higher"), never interpolated
    assert thresholds.image in scores and thresholds.pixel in maps
    assert thresholds.validation_images == 1000 and thresholds.target_fpr == 0.01
    # Fewer images than 1 / target: the threshold is the highest validation score (no finer rate exists).
    assert calibrate(scores[:36], maps, 0.01).image == scores[:36].max()


def test_threshold_metrics_count_rates_and_leave_undefined_ones_nan() -> None:
    thresholds = Thresholds(image=1.0, pixel=0.5, target_fpr=0.01, validation_images=10)
    scores = np.array([0.5, 1.5, 2.0, 0.9])
    labels = np.array([0, 0, 1, 1])
    maps = np.zeros((4, 2, 2), dtype=np.float32)
    maps[2, 0, :] = 1.0  # image 2: its two defect pixels above, image 3: its one defect pixel below
    maps[1, 1, 1] = 1.0  # a normal image's pixel above
    masks = np.zeros((4, 2, 2), dtype=np.uint8)
    masks[2, 0, :] = 1
    masks[3, 0, 0] = 1
    rates = threshold_metrics(scores, labels, maps, masks, thresholds)
    assert rates == {"image_fpr": 0.5, "image_recall": 0.5, "pixel_fpr": 1 / 13, "pixel_recall": 2 / 3,
                     "pixel_fpr_good": 1 / 8}
    only_normal = threshold_metrics(scores[:2], labels[:2], maps[:2], np.zeros_like(masks[:2]), thresholds)
    assert np.isnan(only_normal["image_recall"]) and np.isnan(only_normal["pixel_recall"])
    only_defective = threshold_metrics(scores[2:], labels[2:], maps[2:], masks[2:], thresholds)
    assert np.isnan(only_defective["image_fpr"]) and np.isnan(only_defective["pixel_fpr_good"])


def test_config_fields_are_validated_in_one_line(tiny_data: Path, tmp_path: Path, capsys) -> None:
    for field, value in (("validation_fraction", 1.0), ("validation_fraction", -0.1), ("target_fpr", 0.0),
                         ("target_fpr", 1.0)):
        with pytest.raises(ConfigError) as error:
            MAAEConfig(**{field: value})
        assert error.value.field == field and "\n" not in str(error.value)
    capsys.readouterr()
    assert main(["train", "--data", str(tiny_data), "--set", "validation_fraction=1", "--out",
                 str(tmp_path / "run")]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "validation_fraction" in lines[0] and "[0, 1)" in lines[0], lines


# ------------------------------------------------------------------------------------- the split ---

def test_zero_fraction_trains_on_every_image_in_the_order_it_always_did(tiny_data: Path,
                                                                        tiny_overrides: list[str]) -> None:
    """``validation_fraction=0``: one epoch's batches are every training image, shuffled by a generator seeded
    with the config's seed, exactly as the loader did before the split existed; with a split, the held-out
    images are never trained on."""
    config = _config(tiny_overrides, validation_fraction=0.0)
    data = prepare_data(config, tiny_data, CATEGORIES, device=torch.device("cpu"))
    rows = [(category, row) for category in CATEGORIES
            for row in range(len(data.per_category[category].train_samples))]
    order = list(RandomSampler(rows, generator=torch.Generator().manual_seed(config.seed)))
    loader = TrainingSession(config, data, device=torch.device("cpu")).loaders[UNIFIED_KEY]
    batches = list(loader)
    assert len(batches) == len(rows) // config.batch_size
    for number, batch in enumerate(batches):
        chosen = [rows[i] for i in order[number * config.batch_size:(number + 1) * config.batch_size]]
        for stage, features in enumerate(batch):
            expected = np.stack([data.per_category[c].train_features.stages[stage][row] for c, row in chosen])
            assert torch.equal(features, torch.from_numpy(expected.astype(np.float32))), (number, stage)

    split = prepare_data(config.replace(validation_fraction=FRACTION), tiny_data, CATEGORIES,
                         device=torch.device("cpu"))
    session = TrainingSession(config.replace(validation_fraction=FRACTION), split, device=torch.device("cpu"))
    trained = {(CATEGORIES[block], row) for block, row in session.loaders[UNIFIED_KEY].dataset.index}
    held = {(c, row) for c in CATEGORIES for row in split.per_category[c].validation_rows}
    assert len(held) == 2 * len(CATEGORIES) and not trained & held and trained | held == set(rows)
    # The split is the data set's, not the training seed's: another seed holds out the same images.
    other_seed = prepare_data(config.replace(validation_fraction=FRACTION, seed=config.seed + 1), tiny_data,
                              CATEGORIES, device=torch.device("cpu"))
    assert all(other_seed.per_category[c].validation_rows == split.per_category[c].validation_rows
               for c in CATEGORIES)


# ------------------------------------------------------------------------------- a calibrated run ---

@pytest.fixture(scope="module")
def calibrated_run(tiny_data: Path, tiny_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("calibrated") / "run"
    assert main(["train", "--data", str(tiny_data), "--categories", ",".join(CATEGORIES), "--out", str(out),
                 *_set_args([*tiny_overrides, f"validation_fraction={FRACTION}", f"target_fpr={TARGET_FPR}"])]) == 0
    return out


def test_thresholds_come_from_the_held_out_training_images(calibrated_run: Path, tiny_data: Path) -> None:
    """Two validation images per category and a 5% target: each category's image threshold is the highest
    score among its own held-out training images (recomputed here through predict's path)."""
    run = load_run(calibrated_run)
    reference = run.normal_reference[UNIFIED_KEY]
    assert reference[TARGET_FPR_KEY] == TARGET_FPR and reference["validation_images"] == 2 * len(CATEGORIES)
    scorer = checkpoint_scorer(run)
    pooled = []
    for category in CATEGORIES:
        samples = list_samples(tiny_data, category, "train")
        held = validation_rows(len(samples), FRACTION, category=category)
        images = np.stack([decode_image(samples[row].image_path).model_input(run.config.image_size)
                           for row in held]).transpose(0, 3, 1, 2)
        _, scores = scorer.score(np.ascontiguousarray(images))
        own = Thresholds.from_reference(reference, category)
        assert own.validation_images == len(held) == 2
        assert own.image == pytest.approx(scores.max(), rel=CACHE_ROUNDING), category
        assert reference[PER_CATEGORY_KEY][category][IMAGE_THRESHOLD_KEY] == own.image
        pooled.extend(scores)
    assert reference[IMAGE_THRESHOLD_KEY] == pytest.approx(max(pooled), rel=CACHE_ROUNDING)
    assert reference[PIXEL_THRESHOLD_KEY] > 0


def test_run_folder_and_evaluate_give_the_test_rates_at_the_thresholds(calibrated_run: Path, tiny_data: Path,
                                                                       tmp_path: Path) -> None:
    metrics = json.loads((calibrated_run / "metrics.json").read_text())
    assert set(metrics) >= {*METRIC_NAMES, *THRESHOLD_METRIC_NAMES} and metrics[TARGET_FPR_KEY] == TARGET_FPR
    per_category = pd.read_csv(calibrated_run / "per_category.csv").set_index("category")
    scores = pd.read_csv(calibrated_run / "scores.csv")
    reference = load_run(calibrated_run).normal_reference[UNIFIED_KEY]
    for category, rows in scores.groupby("category"):
        own = Thresholds.from_reference(reference, category)
        assert per_category.loc[category, "image_threshold"] == pytest.approx(own.image)
        assert rows.is_anomalous.tolist() == (rows.score > own.image).tolist()
        assert np.allclose(rows.normalised_score, rows.score / own.image)
        assert per_category.loc[category, "image_fpr"] == pytest.approx(rows.is_anomalous[rows.label == 0].mean())
        assert per_category.loc[category, "image_recall"] == pytest.approx(rows.is_anomalous[rows.label == 1].mean())
    for name in THRESHOLD_METRIC_NAMES:
        assert metrics[name] == pytest.approx(per_category[name].mean())
    # `evaluate` of the saved run measures the same rates, from the checkpoint's thresholds.
    assert main(["evaluate", "--checkpoint", str(calibrated_run), "--data", str(tiny_data),
                 "--out", str(tmp_path / "evaluated")]) == 0
    evaluated = json.loads((tmp_path / "evaluated" / "metrics.json").read_text())
    for name in (*METRIC_NAMES, *THRESHOLD_METRIC_NAMES):
        assert evaluated[name] == pytest.approx(metrics[name]), name


def test_predict_category_uses_the_category_thresholds(calibrated_run: Path, tiny_data: Path, tmp_path: Path,
                                                       capsys) -> None:
    folder = str(tiny_data / "grass" / "test")
    assert main(["predict", "--checkpoint", str(calibrated_run), folder, "--category", "grass",
                 "--out", str(tmp_path / "grass")]) == 0
    predictions = pd.read_csv(tmp_path / "grass" / "predictions.csv")
    own = Thresholds.from_reference(load_run(calibrated_run).normal_reference[UNIFIED_KEY], "grass")
    assert np.allclose(predictions.normalised_score, predictions.score / own.image)
    assert predictions.is_anomalous.tolist() == (predictions.score > own.image).tolist()
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(calibrated_run), folder, "--category", "gravel",
                 "--out", str(tmp_path / "gravel")]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "'gravel' is not a category of this model" in lines[0], lines


# ---------------------------------------------------------------------------- runs without thresholds ---

def _assert_scores_only(run: Path, image: str, out: Path, capsys) -> None:
    capsys.readouterr()
    assert main(["predict", "--checkpoint", str(run), image, "--out", str(out)]) == 0
    assert "no calibrated threshold" in capsys.readouterr().err
    predictions = pd.read_csv(out / "predictions.csv")
    assert predictions.score.notna().all()
    assert predictions.normalised_score.isna().all() and predictions.is_anomalous.isna().all()
    assert predictions["mask"].isna().all() and not (out / "masks").exists()


def test_zero_fraction_run_has_scores_without_verdicts(tiny_data: Path, tiny_overrides: list[str], tmp_path: Path,
                                                       capsys) -> None:
    run = tmp_path / "run"
    assert main(["train", "--data", str(tiny_data), "--categories", ",".join(CATEGORIES), "--out", str(run),
                 *_set_args([*tiny_overrides, "validation_fraction=0"])]) == 0
    reference = load_run(run).normal_reference[UNIFIED_KEY]
    assert Thresholds.from_reference(reference) is None and set(reference) == {"map_median", "score_p99"}
    metrics = json.loads((run / "metrics.json").read_text())
    assert not set(metrics) & {*THRESHOLD_METRIC_NAMES, TARGET_FPR_KEY}
    assert list(pd.read_csv(run / "per_category.csv").columns) == ["category", *METRIC_NAMES]
    _assert_scores_only(run, str(tiny_data / "grass" / "test" / "good"), tmp_path / "predicted", capsys)


def test_a_run_folder_from_before_calibration_still_loads(calibrated_run: Path, tiny_data: Path, tmp_path: Path,
                                                          capsys) -> None:
    """A checkpoint written before the split existed: no thresholds, and a config without the two new fields,
    which reads as trained on every image (validation_fraction 0)."""
    state = torch.load(calibrated_run / CHECKPOINT_FILE, weights_only=True)
    for field in ("validation_fraction", "target_fpr"):
        del state["config"][field]
    state["normal_reference"] = {key: {name: value[name] for name in ("map_median", "score_p99")}
                                 for key, value in state["normal_reference"].items()}
    old = tmp_path / "old"
    old.mkdir()
    torch.save(state, old / CHECKPOINT_FILE)
    checkpoint = load_checkpoint(old)
    assert checkpoint.config.validation_fraction == 0.0
    assert checkpoint.config.target_fpr == MAAEConfig().target_fpr
    _assert_scores_only(old, str(tiny_data / "grass" / "test" / "good"), tmp_path / "predicted", capsys)
