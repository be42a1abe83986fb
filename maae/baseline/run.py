"""The baseline end to end: cached features -> memory bank -> anomaly maps -> MAAE's metrics -> run folder.

The run folder holds the files ``python -m maae train`` writes (through :mod:`maae.run_folder`), except
``checkpoint.pt``: the baseline has no trained weights, and its fitted state (the memory bank) lives in the
cache, whose entry ``config.json`` names. ``config.json`` has ``"model": "patch_nn_baseline"`` so readers
can tell it from an MAAE run, and ``metrics.json`` has ``epochs`` 0.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from maae.baseline.bank import BANK_FOLDER, MemoryBank, bank_key, load_or_fit_bank, patch_distance_maps
from maae.baseline.config import BaselineConfig
from maae.config import MAAEConfig
from maae.data import list_samples, resolve_categories
from maae.engine import PreparedData, default_device, prepare_data
from maae.errors import DataError, MAAEError
from maae.evaluation import SCORE_COLUMNS, Evaluation
from maae.features import StageFeatures, cache_key, default_cache_dir, load_or_compute
from maae.io import write_json_atomic
from maae.metrics import compute_metrics, mean_metrics
from maae.model.anomaly_map import AnomalyMapGenerator, image_scores
from maae.run_folder import CONFIG_FILE, METRICS_FILE, is_finished, run_config, write_metrics

MODEL_NAME = "patch_nn_baseline"
# The map generator's L2 distance of a one-channel map from zero is the map itself (see _anomaly_maps).
MAP_DISTANCE = "mse"
# The image score is the map's maximum (paper Eq. 5, as for MAAE's default).
IMAGE_SCORE = "max"
ProgressFn = Callable[[str], None]


@dataclass
class BaselineResult:
    """What one baseline run produced: the evaluation (MAAE's metric set), the bank, and the wall time."""

    evaluation: Evaluation
    bank: MemoryBank
    data: PreparedData
    seconds: float


def check_has_defects(root: Path, categories: Sequence[str]) -> None:
    """A one-line DataError when no chosen category has a defective test image (no metric is defined)."""
    for category in categories:
        if any(sample.label == 1 for sample in list_samples(root, category, "test")):
            return
    raise DataError(f"--data {root}: no defective test images in {', '.join(categories)} (only good ones, "
                    "e.g. <category>/test/good alone in the MVTec-AD layout); the baseline's metrics need "
                    "defective test images with masks")


def run_baseline(
    config: MAAEConfig, baseline: BaselineConfig, root: Path, categories: Sequence[str] | None = None, *,
    device: torch.device | None = None, cache_dir: Path | None = None, progress: ProgressFn | None = None,
    keep_maps: bool = False,
) -> BaselineResult:
    """Fit (or read) the unified memory bank on the training images and evaluate every category's test set.

    ``config`` supplies the backbone, weights, image size, evaluation batch size and whether the feature
    cache is on (off: nothing is cached, the bank included); ``cache_dir`` overrides the feature cache's
    folder, the bank is cached in its ``patch-baseline`` sub-folder.
    """
    started = time.perf_counter()
    root = Path(root)
    device = device or default_device()
    check_has_defects(root, resolve_categories(root, categories))
    data = prepare_data(config, root, categories, device=device, cache_dir=cache_dir, progress=progress)
    train = [_train_features(data, category, config, device) for category in data.categories]
    train_samples = [sample for category in data.categories for sample in data.per_category[category].train_samples]
    feature_cache = (cache_dir if cache_dir is not None else default_cache_dir()) if config.feature_cache else None
    bank = load_or_fit_bank(
        train, baseline, key=bank_key(train_samples, data.backbone_fingerprint, config.image_size, baseline),
        cache_root=Path(feature_cache) / BANK_FOLDER if feature_cache is not None else None,
        batch_size=config.eval_batch_size, device=device, progress=progress,
    )
    evaluation = evaluate_baseline(bank, data, config, baseline, device=device, keep_maps=keep_maps,
                                  progress=progress)
    return BaselineResult(evaluation, bank, data, time.perf_counter() - started)


def evaluate_baseline(
    bank: MemoryBank, data: PreparedData, config: MAAEConfig, baseline: BaselineConfig, *,
    device: torch.device, keep_maps: bool = False, progress: ProgressFn | None = None,
) -> Evaluation:
    """Per-category metrics of the bank's anomaly maps: nearest-patch distance, upsampled to the image and
    smoothed by MAAE's own map generator; the image score is the map's maximum (as for MAAE)."""
    generator = AnomalyMapGenerator(config.image_size, baseline.anomaly_map_sigma, distance=MAP_DISTANCE).to(device)
    per_category: dict[str, dict[str, float]] = {}
    score_rows = []
    kept: dict[str, np.ndarray] = {}
    for category in data.categories:
        cat = data.per_category[category]
        distances = patch_distance_maps(
            bank, cat.test, baseline, test_key=cache_key(cat.test.samples, data.backbone_fingerprint,
                                                         config.image_size),
            batch_size=config.eval_batch_size, device=device, progress=progress, label=f"{category}/test")
        maps = _anomaly_maps(distances, generator, batch_size=config.eval_batch_size, device=device)
        scores = image_scores(torch.from_numpy(maps), IMAGE_SCORE).numpy()
        per_category[category] = compute_metrics(scores, cat.labels, maps, cat.masks(config.image_size),
                                                 category=category)
        for sample, score in zip(cat.test.samples, scores, strict=True):
            score_rows.append({"path": str(sample.image_path), "category": category, "defect": sample.defect,
                               "label": sample.label, "score": float(score)})
        if keep_maps:
            kept[category] = maps
    return Evaluation(per_category, mean_metrics(per_category), pd.DataFrame(score_rows, columns=SCORE_COLUMNS),
                      kept)


def write_baseline_run(out_dir: Path, result: BaselineResult, config: MAAEConfig, baseline: BaselineConfig) -> None:
    """``config.json``, then :func:`maae.run_folder.write_metrics`'s files (``metrics.json`` last, with
    ``epochs`` 0: nothing is trained), each atomically.

    ``config.json`` is ``train``'s (the MAAE config that chose the features, data root, categories, backbone
    fingerprint) plus ``model``, the baseline's settings and the memory bank's size and cache entry.
    """
    bank = result.bank
    payload = {
        **run_config(config, result.data),
        "model": MODEL_NAME,
        "baseline": baseline.to_dict(),
        "memory_bank": {"key": bank.key, "path": str(bank.path) if bank.path else None,
                        "patches": int(bank.patches.shape[0]), "source_patches": bank.source_patches,
                        "channels": int(bank.patches.shape[1]), "fitted_now": bank.fitted},
    }
    write_json_atomic(Path(out_dir) / CONFIG_FILE, payload)
    write_metrics(out_dir, result.evaluation, epochs=0, seconds=result.seconds)


def baseline_run(
    config: MAAEConfig, baseline: BaselineConfig, root: Path, categories: Sequence[str] | None, out_dir: Path, *,
    device: torch.device | None = None, progress: ProgressFn | None = None,
) -> BaselineResult:
    """What ``python -m maae baseline`` does: run, then write the run folder (never over a finished run)."""
    out_dir = Path(out_dir)
    if is_finished(out_dir):
        raise MAAEError(f"--out {out_dir}: already holds a finished run ({METRICS_FILE}); choose another --out")
    result = run_baseline(config, baseline, root, categories, device=device, progress=progress)
    write_baseline_run(out_dir, result, config, baseline)
    return result


def _train_features(data: PreparedData, category: str, config: MAAEConfig, device: torch.device) -> StageFeatures:
    """The category's cached training features; computed in memory when the feature cache is off."""
    cat = data.per_category[category]
    if cat.train_features is not None:
        return cat.train_features
    return load_or_compute(data.backbone_source, cat.train_samples, config.image_size,
                           backbone_fingerprint=data.backbone_fingerprint, cache_dir=None,
                           batch_size=config.eval_batch_size, device=device)


def _anomaly_maps(
    distances: np.ndarray, generator: AnomalyMapGenerator, *, batch_size: int, device: torch.device,
) -> np.ndarray:
    """n x S x S maps from n x h x w patch distances, by the generator MAAE's maps go through.

    The generator takes a (reconstruction, target) pair and maps their per-position L2 distance; a
    one-channel "reconstruction" equal to the (non-negative) distance and a zero target give back the
    distance itself, so the upsampling and smoothing are exactly MAAE's.
    """
    maps = []
    with torch.no_grad():
        for start in range(0, len(distances), batch_size):
            block = torch.from_numpy(distances[start:start + batch_size]).to(device)[:, None]
            maps.append(generator(block, torch.zeros_like(block)).float().cpu().numpy())
    return np.concatenate(maps, axis=0)
