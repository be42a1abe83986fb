"""The study's best trial, the setting it belongs to (its seeds pooled), and one trial's per-category values.

The best trial is the one study.json names (the runner picks it among the completed trials); while the
study names none yet, the best finished trial by the study's metric stands in, marked provisional.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from study.protocol import BEST_DIR, CATEGORY, FINISHED_STATUSES, METRIC_NAMES, MODE_MAX, PER_CATEGORY_FILE, TRIAL_ID
from study.report.load import StudyResults, read_metric_table
from study.report.paper import normalise_category
from study.report.settings import Settings, study_settings
from study.report.stats import NO_VALUES, Interval


@dataclass(frozen=True)
class BestTrial:
    """The study's best trial, the completed setting it belongs to, and how it was chosen."""

    trial_id: str
    row: pd.Series
    provisional: bool  # chosen here from the finished trials because study.json names none (yet)
    settings: Settings
    setting_key: str | None  # None when the trial is not completed (a provisional pick may be stopped)
    note: str

    @property
    def has_setting(self) -> bool:
        return self.settings.has(self.setting_key)

    @property
    def n_seeds(self) -> int:
        return int(self.settings.row(self.setting_key)["n_seeds"]) if self.has_setting else 0

    @property
    def seeds(self) -> str:
        return str(self.settings.row(self.setting_key)["seeds"]) if self.has_setting else ""

    @property
    def setting_label(self) -> str:
        return str(self.settings.row(self.setting_key)["setting"]) if self.has_setting else ""

    def interval(self, metric: str) -> Interval:
        """The setting's mean over seeds and its bootstrap interval (nothing when not completed)."""
        return self.settings.interval(self.setting_key, metric) if self.has_setting else NO_VALUES


def best_trial(results: StudyResults, settings: Settings | None = None) -> BestTrial | None:
    """study.json's ``best_trial_id``; while it has none, the best finished trial by the study's metric."""
    settings = settings if settings is not None else study_settings(results)
    trials = results.trials
    named = results.study.get("best_trial_id")
    note = ""
    if named is not None and str(named) in set(trials[TRIAL_ID]):
        row = trials[trials[TRIAL_ID] == str(named)].iloc[0]
        provisional = False
    else:
        if named is not None:
            note = f"study.json names best trial {named}, which trials.csv does not list (yet). "
        if results.metric not in trials.columns:
            return None
        candidates = results.trials_with(FINISHED_STATUSES, results.metric)
        if candidates.empty:
            return None
        values = candidates[results.metric]
        row = candidates.loc[values.idxmax() if results.mode == MODE_MAX else values.idxmin()]
        provisional = True
        note += (f"Provisional: the best finished trial by {results.metric} ({results.mode}) so far; "
                 "study.json names no best trial yet.")
    trial_id = str(row[TRIAL_ID])
    return BestTrial(trial_id, row, provisional, settings, settings.key_of(trial_id), note)


def trial_per_category(results: StudyResults, trial_id: str) -> tuple[pd.DataFrame, str]:
    """One trial's per-category metrics (fractions; the mean over its seeds when it has several) in category
    order, and where they came from.

    From per_category.csv; for the best trial, best/per_category.csv when per_category.csv has no rows
    for it yet. Empty frame when neither has any.
    """
    frame = results.per_category
    own = frame[frame[TRIAL_ID] == str(trial_id)] if not frame.empty else frame
    source = PER_CATEGORY_FILE
    best_file = results.best_dir / PER_CATEGORY_FILE if results.best_dir is not None else None
    is_named_best = str(results.study.get("best_trial_id")) == str(trial_id)
    if own.empty and is_named_best and best_file is not None and best_file.is_file():
        own = read_metric_table(best_file, (CATEGORY,))
        own[CATEGORY] = own[CATEGORY].map(normalise_category)
        source = f"{BEST_DIR}/{PER_CATEGORY_FILE}"
    metrics = [m for m in METRIC_NAMES if m in own.columns]
    if own.empty:
        return pd.DataFrame(columns=[CATEGORY, *METRIC_NAMES]), source
    own = own.groupby(CATEGORY, sort=False)[metrics].mean().reset_index()
    order = {c: i for i, c in enumerate(results.categories())}
    own = own.assign(_order=own[CATEGORY].map(lambda c: order.get(c, len(order))))
    own = own.sort_values(["_order", CATEGORY]).drop(columns="_order")
    return own[[CATEGORY, *metrics]].reset_index(drop=True), source
