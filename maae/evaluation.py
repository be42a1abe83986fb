"""Evaluation: anomaly maps for every test image, per-category metrics (written by :mod:`maae.run_folder`), and
the normal reference of a finished run, calibrated thresholds included (:mod:`maae.calibration`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import torch

from maae.calibration import PER_CATEGORY_KEY, THRESHOLD_METRIC_NAMES, Thresholds, calibrate, threshold_metrics
from maae.config import MAAEConfig
from maae.engine import UNIFIED_KEY, CategoryData, PreparedData
from maae.features import StageFeatures, load_or_compute
from maae.metrics import METRIC_NAMES, compute_metrics, mean_metrics
from maae.model import AnomalyMapGenerator, MAAEModel, build_anomaly_map_generator, image_scores

SCORE_COLUMNS = ("path", "category", "defect", "label", "score")
# scores.csv's further columns when the run is calibrated: the score in units of the image threshold, the verdict.
VERDICT_COLUMNS = ("normalised_score", "is_anomalous")
# per_category.csv's further columns when the run is calibrated: the thresholds of the model of the category.
THRESHOLD_COLUMNS = ("image_threshold", "pixel_threshold")


@dataclass
class Evaluation:
    """Metrics per category, their unweighted means, one score per test image, and optionally the maps.

    When the models are calibrated, ``per_category`` and ``means`` also hold the test set's rates at the
    thresholds (:data:`maae.calibration.THRESHOLD_METRIC_NAMES`), ``thresholds`` the thresholds each category
    was judged with, and ``scores`` the verdict columns.
    """

    per_category: dict[str, dict[str, float]]
    means: dict[str, float]
    scores: pd.DataFrame
    maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)
    thresholds: dict[str, Thresholds] = field(default_factory=dict)

    @property
    def calibrated(self) -> bool:
        return bool(self.thresholds)

    def per_category_frame(self) -> pd.DataFrame:
        names = [*METRIC_NAMES, *(THRESHOLD_METRIC_NAMES if self.calibrated else ())]
        columns = ["category", *names, *(THRESHOLD_COLUMNS if self.calibrated else ())]
        rows = []
        for category, values in self.per_category.items():
            row = {"category": category, **{m: values[m] for m in names}}
            if self.calibrated:
                row.update(image_threshold=self.thresholds[category].image,
                           pixel_threshold=self.thresholds[category].pixel)
            rows.append(row)
        return pd.DataFrame(rows, columns=columns)


def anomaly_maps(
    model: MAAEModel, features: StageFeatures, generator: AnomalyMapGenerator, *, batch_size: int,
    device: torch.device,
) -> np.ndarray:
    """n x S x S anomaly maps for every sample of ``features`` (model in eval mode: no noise)."""
    was_training = model.training
    model.eval()
    maps = []
    with torch.no_grad():
        for start in range(0, len(features), batch_size):
            stages = [s.to(device) for s in features.batch(slice(start, start + batch_size))]
            output = model(stages)
            maps.append(generator(output.reconstruction, output.target).float().cpu().numpy())
    model.train(was_training)
    return np.concatenate(maps, axis=0)


def model_key(models: Mapping[str, object], category: str) -> str:
    """The key of the model that scores ``category``: the unified one, or the category's own."""
    return UNIFIED_KEY if UNIFIED_KEY in models else category


def calibrated_thresholds(
    reference: Mapping[str, Mapping[str, Any]] | None, keys: Mapping[str, str],
) -> dict[str, Thresholds]:
    """Category -> the thresholds it is judged with (its own, else its model's pooled ones; ``keys``: category ->
    model key) in a normal reference; empty unless every category's model is calibrated (so every category
    reports the same metrics)."""
    found = {category: Thresholds.from_reference((reference or {}).get(key, {}), category)
             for category, key in keys.items()}
    if not found or any(thresholds is None for thresholds in found.values()):
        return {}
    return {category: thresholds for category, thresholds in found.items() if thresholds is not None}


def evaluate(
    models: Mapping[str, MAAEModel], data: PreparedData, config: MAAEConfig, *, device: torch.device,
    keep_maps: bool = False, reference: Mapping[str, Mapping[str, Any]] | None = None,
) -> Evaluation:
    """Evaluate the unified model (key ``UNIFIED_KEY``) or the per-category models on every test set.

    ``reference`` is the models' normal reference (:func:`normal_score_reference`, or a checkpoint's); when it
    holds calibrated thresholds, the test set's false-positive rate and recall at them are measured too, each
    category at its own thresholds (as ``predict --category`` judges it; a category the model was not
    calibrated on, e.g. evaluated on another data set, at the model's pooled ones).
    """
    generator = build_anomaly_map_generator(config).to(device)
    thresholds = calibrated_thresholds(reference, {c: model_key(models, c) for c in data.categories})
    per_category: dict[str, dict[str, float]] = {}
    score_rows = []
    kept: dict[str, np.ndarray] = {}
    for category in data.categories:
        model = models[model_key(models, category)]
        cat = data.per_category[category]
        maps = anomaly_maps(model, cat.test, generator, batch_size=config.eval_batch_size, device=device)
        scores = image_scores(torch.from_numpy(maps), config.image_score, config.image_score_topk).numpy()
        masks = cat.masks(config.image_size)
        per_category[category] = compute_metrics(scores, cat.labels, maps, masks, category=category)
        verdicts = {}
        if thresholds:
            judged = thresholds[category]
            per_category[category].update(threshold_metrics(scores, cat.labels, maps, masks, judged))
            verdicts = {"normalised_score": judged.normalised(scores), "is_anomalous": judged.is_anomalous(scores)}
        for index, (sample, score) in enumerate(zip(cat.test.samples, scores, strict=True)):
            row = {"path": str(sample.image_path), "category": category, "defect": sample.defect,
                   "label": sample.label, "score": float(score)}
            row.update({column: values[index].item() for column, values in verdicts.items()})
            score_rows.append(row)
        if keep_maps:
            kept[category] = maps
    columns = [*SCORE_COLUMNS, *(VERDICT_COLUMNS if thresholds else ())]
    return Evaluation(per_category, mean_metrics(per_category), pd.DataFrame(score_rows, columns=columns), kept,
                      thresholds)


def normal_score_reference(
    models: Mapping[str, MAAEModel], data: PreparedData, config: MAAEConfig, *, device: torch.device,
) -> dict[str, dict[str, Any]]:
    """Per model, the spread of anomaly-map values on its training images (normal by definition), and, when the
    data holds a validation split, the thresholds calibrated on it (:func:`maae.calibration.calibrate`).

    Prediction uses the spread to scale heatmaps, so that a deployed model's overlays mean the same across
    images, and the thresholds for its verdicts. Neither touches the test set, except that without the feature
    cache the spread (never the thresholds) is taken from the test set's normal images.
    """
    generator = build_anomaly_map_generator(config).to(device)
    reference = {}
    for key, model in models.items():
        categories = data.categories if key == UNIFIED_KEY else [key]
        values, maxima = [], []
        for category in categories:
            features = data.per_category[category].train_features
            if features is None:
                features = data.per_category[category].test  # fallback: test normals only
                keep = [i for i, s in enumerate(features.samples) if s.label == 0]
                features = StageFeatures([features.samples[i] for i in keep], [st[keep] for st in features.stages])
            maps = anomaly_maps(model, features, generator, batch_size=config.eval_batch_size, device=device)
            values.append(np.median(maps, axis=(1, 2)))
            maxima.append(maps.reshape(len(maps), -1).max(axis=1))
        reference[key] = {"map_median": float(np.median(np.concatenate(values))),
                          "score_p99": float(np.percentile(np.concatenate(maxima), 99))}
        pooled, own = calibrate_model(model, [data.per_category[c] for c in categories], data, config,
                                      generator=generator, device=device)
        if pooled is not None:
            reference[key].update(pooled.to_reference())
        if len(own) > 1:  # a unified model: each category's own thresholds too
            reference[key][PER_CATEGORY_KEY] = {c: thresholds.to_reference() for c, thresholds in own.items()}
    return reference


def evaluate_finished(
    models: Mapping[str, MAAEModel], data: PreparedData, config: MAAEConfig, *, device: torch.device,
) -> tuple[Evaluation, dict[str, dict[str, Any]]]:
    """A finished run's last evaluation and its normal reference, in the order that lets the evaluation measure
    the test set at the thresholds calibrated on the validation split (what ``write_run`` takes). Every
    writer of a finished run (``python -m maae train``, a study trial's last epoch) calls this."""
    reference = normal_score_reference(models, data, config, device=device)
    return evaluate(models, data, config, device=device, reference=reference), reference


def calibrate_model(
    model: MAAEModel, categories: Sequence[CategoryData], data: PreparedData, config: MAAEConfig, *,
    generator: AnomalyMapGenerator, device: torch.device,
) -> tuple[Thresholds | None, dict[str, Thresholds]]:
    """The model's thresholds on the validation images of its ``categories`` (:class:`maae.engine.CategoryData`)
    pooled, and each category's own; (None, {}) when they hold none (``validation_fraction=0``)."""
    maps: dict[str, np.ndarray] = {}
    for cat in categories:
        if not cat.validation_rows:
            continue
        if cat.train_features is not None:  # the cached features' validation rows (a small copy)
            rows = list(cat.validation_rows)
            features = StageFeatures(cat.validation_samples, [stage[rows] for stage in cat.train_features.stages])
        else:  # no feature cache: run the backbone on them now
            features = load_or_compute(data.backbone_source, cat.validation_samples, image_size=config.image_size,
                                       backbone_fingerprint=data.backbone_fingerprint, cache_dir=None,
                                       batch_size=config.eval_batch_size, device=device)
        maps[cat.category] = anomaly_maps(model, features, generator, batch_size=config.eval_batch_size,
                                          device=device)
    if not maps:
        return None, {}

    def thresholds(validation_maps: np.ndarray) -> Thresholds:
        scores = image_scores(torch.from_numpy(validation_maps), config.image_score, config.image_score_topk)
        return calibrate(scores.numpy(), validation_maps, config.target_fpr)

    return thresholds(np.concatenate(list(maps.values()))), {c: thresholds(m) for c, m in maps.items()}
