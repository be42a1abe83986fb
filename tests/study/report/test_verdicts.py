"""The best model's verdict rates read from its run folder's metrics.json."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from study.report.verdicts import RATE_LABELS, verdict_rates


def test_rates_are_read_as_percent_with_the_target_stated(tmp_path: Path) -> None:
    metrics = {"image_auroc": 0.95, "image_fpr": 0.097, "image_recall": 0.889, "pixel_fpr": 0.066,
               "pixel_fpr_good": 0.015, "pixel_recall": 0.971, "target_fpr": 0.01}
    (tmp_path / "metrics.json").write_text(json.dumps(metrics))
    frame, text = verdict_rates(tmp_path)
    assert list(frame["metric"]) == list(RATE_LABELS.values())
    assert frame["best run (%)"].tolist() == pytest.approx([9.7, 88.9, 6.6, 1.5, 97.1])
    assert "1% false-positive rate" in text


def test_no_rates_without_calibration_or_without_a_run(tmp_path: Path) -> None:
    assert verdict_rates(None) is None
    assert verdict_rates(tmp_path) is None  # no metrics.json
    (tmp_path / "metrics.json").write_text(json.dumps({"image_auroc": 0.95}))  # validation_fraction=0
    assert verdict_rates(tmp_path) is None
    (tmp_path / "metrics.json").write_text("{not json")
    assert verdict_rates(tmp_path) is None
