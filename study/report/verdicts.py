"""The best model's verdicts at its calibrated thresholds: the test set's false-positive rate and recall.

Training calibrates an image and a pixel threshold on held-out normal training images (``maae.calibration``)
and its ``metrics.json`` gives the test set's rates at them beside the threshold-free metrics. The report
reads them from ``best/metrics.json`` (the first seed's run), so a reader sees what the thresholds do on the
test set, not only how well the scores rank.
"""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

# metrics.json key -> label, in the order the report shows them (rates are fractions, shown as percent).
RATE_LABELS: dict[str, str] = {
    "image_fpr": "Image false-positive rate",
    "image_recall": "Image recall",
    "pixel_fpr": "Pixel false-positive rate (all test images)",
    "pixel_fpr_good": "Pixel false-positive rate (good images)",
    "pixel_recall": "Pixel recall",
}
TARGET_KEY = "target_fpr"
METRICS_FILE = "metrics.json"


def verdict_rates(best_dir: Path | None) -> tuple[pd.DataFrame, str] | None:
    """A one-column frame of the rates (percent) with the target false-positive rate stated, or None when
    the best run folder has no calibrated thresholds (``validation_fraction=0``, or a run from before
    calibration existed)."""
    if best_dir is None or not (Path(best_dir) / METRICS_FILE).is_file():
        return None
    try:
        metrics = json.loads((Path(best_dir) / METRICS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    rates = {label: metrics[key] for key, label in RATE_LABELS.items() if isinstance(metrics.get(key), (int, float))}
    if not rates:
        return None
    frame = pd.DataFrame({"metric": list(rates), "best run (%)": [100.0 * value for value in rates.values()]})
    target = metrics.get(TARGET_KEY)
    text = ("At the thresholds calibrated on held-out normal training images"
            + (f" for a {100.0 * target:g}% false-positive rate" if isinstance(target, (int, float)) else "")
            + " (best/metrics.json: the first seed's run); the test set is never used for calibration.")
    return frame, text
