"""Evaluation: anomaly maps for every test image, per-category metrics, and the run's output files."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maae.config import MAAEConfig
from maae.engine import UNIFIED_KEY, PreparedData
from maae.features import StageFeatures
from maae.io import write_csv_atomic, write_json_atomic
from maae.metrics import METRIC_NAMES, compute_metrics, mean_metrics
from maae.model import AnomalyMapGenerator, MAAEModel
from maae.model.anomaly_map import image_scores

SCORE_COLUMNS = ("path", "category", "defect", "label", "score")


@dataclass
class Evaluation:
    """Metrics per category, their unweighted means, one score per test image, and optionally the maps."""

    per_category: dict[str, dict[str, float]]
    means: dict[str, float]
    scores: pd.DataFrame
    maps: dict[str, np.ndarray] = field(default_factory=dict, repr=False)

    def per_category_frame(self) -> pd.DataFrame:
        rows = [{"category": c, **{m: values[m] for m in METRIC_NAMES}} for c, values in self.per_category.items()]
        return pd.DataFrame(rows, columns=["category", *METRIC_NAMES])


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


def evaluate(
    models: Mapping[str, MAAEModel], data: PreparedData, config: MAAEConfig, *, device: torch.device,
    keep_maps: bool = False,
) -> Evaluation:
    """Evaluate the unified model (key ``UNIFIED_KEY``) or the per-category models on every test set."""
    generator = AnomalyMapGenerator(config.image_size, config.anomaly_map_sigma).to(device)
    per_category: dict[str, dict[str, float]] = {}
    score_rows = []
    kept: dict[str, np.ndarray] = {}
    for category in data.categories:
        model = models[UNIFIED_KEY] if UNIFIED_KEY in models else models[category]
        cat = data.per_category[category]
        maps = anomaly_maps(model, cat.test, generator, batch_size=config.eval_batch_size, device=device)
        scores = image_scores(torch.from_numpy(maps)).numpy()
        per_category[category] = compute_metrics(scores, cat.labels, maps, cat.masks(config.image_size),
                                                 category=category)
        for sample, score in zip(cat.test.samples, scores, strict=True):
            score_rows.append({"path": str(sample.image_path), "category": category, "defect": sample.defect,
                               "label": sample.label, "score": float(score)})
        if keep_maps:
            kept[category] = maps
    return Evaluation(per_category, mean_metrics(per_category), pd.DataFrame(score_rows, columns=SCORE_COLUMNS),
                      kept)


def normal_score_reference(
    models: Mapping[str, MAAEModel], data: PreparedData, config: MAAEConfig, *, device: torch.device,
) -> dict[str, dict[str, float]]:
    """Per model, the spread of anomaly-map values on its training images (normal by definition).

    Prediction uses it to scale heatmaps, so that a deployed model's overlays mean the same across images;
    it never touches the test set.
    """
    generator = AnomalyMapGenerator(config.image_size, config.anomaly_map_sigma).to(device)
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
    return reference


def write_evaluation(out_dir: Path, evaluation: Evaluation, extra_metrics: Mapping[str, float] | None = None) -> None:
    """``metrics.json`` (means as fractions), ``per_category.csv`` and ``scores.csv``, each written atomically."""
    out_dir = Path(out_dir)
    payload = {name: _json_float(evaluation.means.get(name, float("nan"))) for name in METRIC_NAMES}
    if extra_metrics:
        payload.update({k: _json_float(v) if isinstance(v, float) else v for k, v in extra_metrics.items()})
    write_csv_atomic(out_dir / "per_category.csv", evaluation.per_category_frame())
    write_csv_atomic(out_dir / "scores.csv", evaluation.scores)
    write_json_atomic(out_dir / "metrics.json", payload)


def _json_float(value: float) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)
