"""Everything a report derives from one results folder, computed once per report, and the CSV files it
writes beside the study's own tables: ``settings.csv``, ``comparisons.csv``, ``rung_correlations.csv`` (and
``baseline.csv``, which :mod:`study.report.baseline` writes when it computes the baseline).

The derived files are rewritten whole on every report (atomically), so they always match the tables they
came from; the study's own files (trials.csv, per_category.csv, history.csv, best/) are only read.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from maae.io import write_csv_atomic
from study.protocol import COMPARISONS_FILE, RUNG_CORRELATIONS_FILE, SETTINGS_FILE
from study.report.baseline import StudyBaseline, study_baseline
from study.report.best import BestTrial, best_trial
from study.report.comparisons import comparisons_table
from study.report.fidelity import rung_correlations
from study.report.load import StudyResults
from study.report.sensitivity import parameter_effects
from study.report.settings import Settings, study_settings


@dataclass(frozen=True)
class StudyNumbers:
    """One study's folder and the numbers its report shows."""

    results: StudyResults
    settings: Settings
    best: BestTrial | None
    baseline: StudyBaseline
    comparisons: pd.DataFrame  # comparisons.csv
    correlations: pd.DataFrame  # rung_correlations.csv
    effects: pd.DataFrame  # the searched parameters' effects against the seed spread


def derive(results: StudyResults, compute_baseline: bool = True) -> StudyNumbers:
    """Settings, best trial, baseline (computed when missing, ``compute_baseline`` is on and the study is no
    longer running), one-switch comparisons, rung correlations and parameter effects of one study."""
    settings = study_settings(results)
    return StudyNumbers(
        results=results, settings=settings, best=best_trial(results, settings),
        baseline=study_baseline(results, compute=compute_baseline),
        comparisons=comparisons_table(results, settings),
        correlations=rung_correlations(results, results.metric),
        effects=parameter_effects(results, settings, results.metric),
    )


def write_tables(numbers: StudyNumbers) -> list[Path]:
    """Write settings.csv, comparisons.csv and rung_correlations.csv into the study's folder; their paths."""
    folder = numbers.results.folder
    files = {SETTINGS_FILE: numbers.settings.csv_frame(), COMPARISONS_FILE: numbers.comparisons,
             RUNG_CORRELATIONS_FILE: numbers.correlations}
    for name, frame in files.items():
        write_csv_atomic(folder / name, frame)
    return [folder / name for name in files]
