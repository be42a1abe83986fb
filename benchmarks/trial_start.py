"""What every trial process pays besides training: importing its code, and the metrics of each evaluation.

Every one-worker trial is a fresh Ray actor process, so the imports of ``study.tune.trial_worker`` (torch,
maae, pandas, ...) are paid once per trial, and every evaluation ranks all test pixels of every category.
Until the commit that added this benchmark, ``maae.metrics`` used sklearn's ``roc_curve``; importing
sklearn.metrics (with the scipy.stats it pulls in) and its stable sort were part of that cost. Side by side,
in alternation:

- imports: a fresh interpreter importing the trial's code, against the same plus ``sklearn.metrics`` (what
  the trial process imported before);
- ranking metrics (AUROC, AP, F1-max) on one category's pixels at the sweep preset's image size (as many
  maps as the category has test images; scores and masks drawn at random, seeded): ``maae.metrics``'s own
  sort against the sklearn route it replaced (``roc_curve`` without dropping points, then counts).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from benchmarks.common import PYTHON, REPO_ROOT, Outcome, Settings, info, interleave, median, run_command, timed
from maae.data import list_samples, resolve_categories
from maae.metrics import _ranking_metrics

NAME = "trial_start"
FULL_ROUNDS = 5
TINY_ROUNDS = 1
TRIAL_IMPORTS = "import study.tune.trial_worker"
WITH_SKLEARN = TRIAL_IMPORTS + "; import sklearn.metrics"
DEFECT_FRACTION = 0.01  # the embedded set's small defects cover under 1% of an image
SEED = 0


def sklearn_ranking_metrics(labels: np.ndarray, scores: np.ndarray) -> tuple[float, float, float]:
    """The sklearn route ``maae.metrics`` used before: one ``roc_curve``, then counts, precision and recall."""
    from sklearn.metrics import auc, roc_curve

    false_pos_rate, true_pos_rate, _ = roc_curve(labels, scores, drop_intermediate=False)
    auroc = float(auc(false_pos_rate, true_pos_rate))
    n_positive = int(np.count_nonzero(labels))
    true_pos = np.rint(true_pos_rate * n_positive)
    false_pos = np.rint(false_pos_rate * (labels.size - n_positive))
    predicted_pos = true_pos + false_pos
    precision = np.divide(true_pos, predicted_pos, out=np.ones_like(true_pos), where=predicted_pos > 0)
    recall = true_pos / n_positive
    average_precision = float(np.sum(np.diff(recall) * precision[1:]))
    denominator = precision + recall
    f1 = np.divide(2.0 * precision * recall, denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return auroc, average_precision, float(np.max(f1))


def _import_seconds(statement: str) -> float:
    """Wall time of a fresh interpreter running ``statement`` from the repository root."""
    result = run_command([PYTHON, "-c", statement], cwd=REPO_ROOT)
    if result.returncode != 0:
        raise RuntimeError(f"{statement!r} failed: {result.stderr.strip().splitlines()[-1:]}")
    return result.seconds


def run(settings: Settings) -> Outcome:
    rounds = TINY_ROUNDS if settings.tiny else FULL_ROUNDS
    imports = interleave({"trial code": lambda: _import_seconds(TRIAL_IMPORTS),
                          "trial code + sklearn.metrics": lambda: _import_seconds(WITH_SKLEARN)}, rounds)
    category = resolve_categories(settings.data_root, None)[0]
    size = settings.config().image_size
    images = len(list_samples(settings.data_root, category, "test"))
    rng = np.random.default_rng(SEED)
    labels = rng.random(images * size * size) < DEFECT_FRACTION
    scores = (rng.random(labels.size) + labels * 0.5).astype(np.float32)
    ours, theirs = _ranking_metrics(labels, scores), sklearn_ranking_metrics(labels, scores)
    largest_difference = max(abs(a - b) for a, b in zip(ours, theirs, strict=True))
    metrics = interleave({"maae.metrics": lambda: timed(lambda: _ranking_metrics(labels, scores)),
                          "sklearn roc_curve": lambda: timed(lambda: sklearn_ranking_metrics(labels, scores))},
                         rounds)
    import_s = median(imports["trial code"])
    sklearn_extra_s = median(imports["trial code + sklearn.metrics"]) - import_s
    ours_s, theirs_s = median(metrics["maae.metrics"]), median(metrics["sklearn roc_curve"])
    speedup = theirs_s / ours_s if ours_s > 0 else None
    details: dict[str, Any] = {
        "import_seconds": imports, "ranking_seconds": metrics, "category": category, "test_images": images,
        "image_size": size, "pixels": int(labels.size), "largest_metric_difference": largest_difference,
        "note": "the sklearn column is the route maae.metrics used before this benchmark was added",
    }
    checks = [
        info(NAME, "fresh interpreter importing the trial's code", import_s, "s"),
        info(NAME, "what sklearn.metrics added to it (removed)", sklearn_extra_s, "s"),
        info(NAME, f"ranking metrics, {labels.size:,} pixels: maae.metrics", ours_s, "s"),
        info(NAME, "ranking metrics: the sklearn route it replaced", theirs_s, "s"),
        info(NAME, "ranking metrics speedup, sklearn / maae.metrics", speedup, "x"),
        info(NAME, "largest difference between the two routes' metrics", largest_difference),
    ]
    headline = {"trial_import_seconds": import_s,
                "metrics_speedup_vs_sklearn": speedup if speedup is not None and math.isfinite(speedup) else None}
    return Outcome(headline, checks, details)
