"""Evaluation: anomaly maps for every test image, and per-category metrics (written by :mod:`maae.run_folder`)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch

from maae.config import MAAEConfig
from maae.engine import UNIFIED_KEY, PreparedData
from maae.features import StageFeatures
from maae.metrics import METRIC_NAMES, compute_metrics, mean_metrics
from maae.model import AnomalyMapGenerator, MAAEModel, build_anomaly_map_generator, image_scores

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
    generator = build_anomaly_map_generator(config).to(device)
    per_category: dict[str, dict[str, float]] = {}
    score_rows = []
    kept: dict[str, np.ndarray] = {}
    for category in data.categories:
        model = models[UNIFIED_KEY] if UNIFIED_KEY in models else models[category]
        cat = data.per_category[category]
        maps = anomaly_maps(model, cat.test, generator, batch_size=config.eval_batch_size, device=device)
        scores = image_scores(torch.from_numpy(maps), config.image_score, config.image_score_topk).numpy()
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
    return reference
