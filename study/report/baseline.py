"""The nearest-neighbour patch baseline beside every study: ``baseline.csv`` (per category, the metric columns
of per_category.csv), computed by maae's baseline on the study's data set, categories, backbone and image
size, and read by every report.

The report computes the file when it is missing and the study is no longer running (so the study runner's
final report writes it, and ``python study/report.py`` writes it for an older study); the refreshes while a
study runs only read it, so the trials never wait for it. maae caches the baseline's memory bank and test
distances beside the shared feature cache, per (data set, backbone, image size, baseline settings), so
after the first study on a data set the baseline costs seconds.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from maae.config import MAAEConfig, preset
from maae.errors import MAAEError
from maae.io import write_csv_atomic
from study.protocol import BASELINE_FILE, CATEGORY, METRIC_NAMES, STUDY_RUNNING
from study.report.load import StudyResults, read_metric_table
from study.report.paper import normalise_category

BASELINE_NAME = "nearest-neighbour patch baseline"
BASELINE_COLUMNS = [CATEGORY, *METRIC_NAMES]
DEFAULT_PRESET = "quick"
PROGRESS_PREFIX = "[report]"


@dataclass(frozen=True)
class StudyBaseline:
    """The baseline's per-category metrics (fractions; empty when there are none), why there are none, and
    the settings it ran with (backbone, image size)."""

    per_category: pd.DataFrame
    reason: str
    description: str
    computed_now: bool = False

    @property
    def available(self) -> bool:
        return not self.per_category.empty

    def mean(self, metric: str) -> float:
        """The unweighted mean over categories (NaN categories left out), like a trial's means."""
        if not self.available or metric not in self.per_category.columns:
            return float("nan")
        return float(self.per_category[metric].mean())

    def category_value(self, category: str, metric: str) -> float:
        rows = self.per_category[self.per_category[CATEGORY] == category] if self.available else self.per_category
        return float("nan") if rows.empty or metric not in rows.columns else float(rows[metric].iloc[0])


def study_config(study: Mapping[str, Any]) -> MAAEConfig:
    """The study's base configuration: study.json's ``base_config``, else its preset with its ``fixed``
    values (an older study.json); the baseline reads its backbone, weights, image size and smoothing."""
    base = study.get("base_config")
    if isinstance(base, dict) and base:
        return MAAEConfig.from_dict(dict(base), source="study.json base_config")
    values = preset(str(study.get("preset") or DEFAULT_PRESET)).to_dict()
    fixed = {k: v for k, v in (study.get("fixed") or {}).items() if k in values}
    return MAAEConfig.from_dict({**values, **fixed}, source="study.json fixed")


def describe(config: MAAEConfig) -> str:
    return (f"{BASELINE_NAME} on the study's data set and categories: backbone {config.backbone} "
            f"({config.backbone_weights} weights), {config.image_size} px, maae's default baseline settings")


def compute_baseline(results_dir: Path, config: MAAEConfig, data_root: Path, categories: list[str]) -> pd.DataFrame:
    """Run maae's baseline (memory bank and distances from maae's caches when present) and write
    ``results_dir/baseline.csv``; returns its rows. A data set without defective test images raises
    maae's one-line DataError naming ``--data``."""
    from maae.baseline import default_baseline_config, run_baseline

    # Minutes on a new data set or image size (seconds once maae has cached it): say what the report is doing.
    report_progress(f"computing the {BASELINE_NAME} for this data set at {config.image_size} px "
                    f"({config.backbone}); maae caches it, so later reports read it")
    result = run_baseline(config, default_baseline_config(config), Path(data_root), categories or None,
                          progress=report_progress)
    rows = [{CATEGORY: category, **{m: values.get(m) for m in METRIC_NAMES}}
            for category, values in result.evaluation.per_category.items()]
    frame = pd.DataFrame(rows, columns=BASELINE_COLUMNS)
    write_csv_atomic(Path(results_dir) / BASELINE_FILE, frame)
    return frame


def report_progress(message: str) -> None:
    """A progress line of the report on stderr (the study's own lines are on stderr too)."""
    print(f"{PROGRESS_PREFIX} {message}", file=sys.stderr, flush=True)


def read_baseline(path: Path) -> pd.DataFrame:
    frame = read_metric_table(path, (CATEGORY,))
    frame[CATEGORY] = frame[CATEGORY].map(normalise_category)
    return frame


def study_baseline(results: StudyResults, compute: bool = True) -> StudyBaseline:
    """baseline.csv of the study; computed first when it is missing, ``compute`` is on and the study is not
    running. When there is none, the reason says why (one line)."""
    path = results.folder / BASELINE_FILE
    try:
        config = study_config(results.study)
    except MAAEError as err:
        return StudyBaseline(pd.DataFrame(columns=BASELINE_COLUMNS), f"study.json's configuration is unusable: "
                                                                     f"{err}", BASELINE_NAME)
    description = describe(config)
    if path.is_file():
        return StudyBaseline(read_baseline(path), "", description)
    empty = pd.DataFrame(columns=BASELINE_COLUMNS)
    if results.study.get("status") == STUDY_RUNNING:
        return StudyBaseline(empty, f"the study is still running; the report at its end writes {BASELINE_FILE}",
                             description)
    if not compute:
        return StudyBaseline(empty, f"{BASELINE_FILE} is missing and this report was asked not to compute it",
                             description)
    root = results.study.get("data_root")
    if not root or not Path(root).is_dir():
        return StudyBaseline(empty, f"{BASELINE_FILE} is missing and study.json's data_root ({root or 'none'}) "
                                    "is not a folder on this machine, so it cannot be computed here", description)
    try:
        compute_baseline(results.folder, config, Path(root), list(results.study.get("categories") or []))
    except MAAEError as err:
        return StudyBaseline(empty, f"the baseline could not be computed: {err}", description)
    return StudyBaseline(read_baseline(path), "", description, computed_now=True)
