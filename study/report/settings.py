"""A study's completed trials grouped into settings, each with every metric's mean over its seeds, the
bootstrap interval around that mean, and the seed-to-seed spread: the rows of ``settings.csv``.

A setting is one combination of hyperparameters other than the seed. Seeds reach a results folder in two
layouts, and both end up in the same long frame of :func:`observations` (one row per training run and
category):

- repeats: k seeds trained inside one trial; ``per_category.csv`` has a ``seed`` column (one row per
  trial, seed and category) and ``trials.csv`` holds the seed means;
- seeds as a grid axis (or a search that happens to repeat a setting): one trial per seed; the seed is a
  column of ``trials.csv`` and ``per_category.csv`` has no ``seed`` column.

Only completed trials count: a trial that ASHA stopped was measured at another fidelity (fewer epochs).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from study.protocol import CATEGORY, COMPLETED, METRIC_NAMES, SEED_COLUMN, SEED_SEPARATOR, TRIAL_ID
from study.report.load import StudyResults
from study.report.stats import BOOTSTRAP_REPS, NO_VALUES, Interval, Spread, bootstrap_mean_ci, mean_ci

SETTING_STATUSES = (COMPLETED,)
# Columns of the observations frame (besides CATEGORY, TRIAL_ID and the metrics).
KEY = "key"  # equal exactly for trials of the same setting
RUN = "run"  # one training run: the trial and the seed (a trial with repeats holds several runs)
SEED = SEED_COLUMN
UNKNOWN_SEED = "?"
# Columns of settings.csv besides the parameters and the per-metric ones.
LABEL = "setting"
N_SEEDS_COLUMN = "n_seeds"
SEEDS_COLUMN = "seeds"
TRIAL_IDS_COLUMN = "trial_ids"
# Per metric m, settings.csv has m (the mean over seeds) and these.
CI_LOW, CI_HIGH, SEED_STD = "_ci_low", "_ci_high", "_seed_std"
CI_RULE = ("mean over seeds of the per-seed mean over categories; 95% interval: percentile bootstrap "
           f"({BOOTSTRAP_REPS:,} replicates, seeded) resampling the seeds as whole training runs and the categories, "
           "as rliable's stratified bootstrap with task bootstrap does; none for a setting with a single seed")


# ------------------------------------------------------------------------------------------- keys ---
def setting_grouping(results: StudyResults) -> list[str]:
    """The columns that tell one setting from another: every hyperparameter but the seed."""
    return [c for c in results.param_columns if c != SEED_COLUMN]


def setting_keys(trials: pd.DataFrame, params: Sequence[str]) -> pd.Series:
    """One string per trial that is equal exactly for trials with identical ``params`` values."""
    if not params:
        return pd.Series("", index=trials.index, dtype=str)
    texts = trials[list(params)].apply(lambda column: column.map(_key_text))
    return texts.agg("|".join, axis=1)


def _key_text(value: Any) -> str:
    return "<missing>" if _is_missing(value) else str(value)


def _is_missing(value: Any) -> bool:
    return value is None or (not isinstance(value, (str, bool)) and bool(pd.isna(value)))


def setting_label(values: pd.Series | dict[str, Any], params: Sequence[str]) -> str:
    """``use_ang=True, attention=mixed``; ``all trials`` when no parameter varies."""
    if not params:
        return "all trials"
    return ", ".join(f"{p}={short_value(values[p])}" for p in params)


def short_value(value: Any) -> str:
    """Floats with 4 significant digits, anything else as text."""
    if isinstance(value, (float, np.floating)) and not math.isnan(value):
        return f"{value:.4g}"
    return str(value)


def seed_text(value: Any) -> str:
    """A seed as text: ``3`` for 3 and 3.0 (CSV readers turn integer columns with gaps into floats)."""
    if _is_missing(value):
        return UNKNOWN_SEED
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return str(int(value))
    if isinstance(value, (float, np.floating)) and float(value).is_integer():
        return str(int(value))
    return str(value)


# ----------------------------------------------------------------------------------- observations ---
def observations(results: StudyResults, statuses: Sequence[str] = SETTING_STATUSES) -> pd.DataFrame:
    """One row per training run and category of the trials in ``statuses``: ``key``, ``trial_id``, ``seed``
    (text), ``run``, ``category`` and every metric in per_category.csv (fractions).

    The seed is per_category.csv's ``seed`` where it has one (repeats), else the trial's ``seed`` in
    trials.csv, else unknown (``?``). Trials without per-category rows contribute nothing.
    """
    columns = [KEY, TRIAL_ID, SEED, RUN, CATEGORY, *METRIC_NAMES]
    chosen = results.trials_with(statuses)
    frame = results.per_category
    if chosen.empty or frame.empty:
        return pd.DataFrame(columns=columns)
    keys = dict(zip(chosen[TRIAL_ID].astype(str), setting_keys(chosen, setting_grouping(results)), strict=True))
    trial_seeds = (dict(zip(chosen[TRIAL_ID].astype(str), chosen[SEED_COLUMN], strict=True))
                   if SEED_COLUMN in chosen.columns else {})
    rows = frame[frame[TRIAL_ID].astype(str).isin(keys)].copy()
    if rows.empty:
        return pd.DataFrame(columns=columns)
    rows[TRIAL_ID] = rows[TRIAL_ID].astype(str)
    own_seed = rows[SEED_COLUMN] if SEED_COLUMN in rows.columns else pd.Series(np.nan, index=rows.index)
    rows[SEED] = [seed_text(own if not _is_missing(own) else trial_seeds.get(trial))
                  for own, trial in zip(own_seed, rows[TRIAL_ID], strict=True)]
    rows[KEY] = rows[TRIAL_ID].map(keys)
    rows[RUN] = rows[TRIAL_ID] + "/" + rows[SEED]
    for metric in METRIC_NAMES:
        if metric not in rows.columns:
            rows[metric] = np.nan
    return rows[columns].reset_index(drop=True)


def _seed_order(row: tuple[str, str, str]) -> tuple[float, str, str]:
    _, seed, trial = row
    return (float(seed) if seed.lstrip("-").isdigit() else math.inf, seed, trial)


def _run_order(frame: pd.DataFrame) -> list[str]:
    """Runs ordered by seed (numerically where the seed is a number), then trial id."""
    runs = frame.drop_duplicates(RUN)[[RUN, SEED, TRIAL_ID]]
    return [run for run, _, _ in sorted(runs.itertuples(index=False, name=None), key=_seed_order)]


def seed_matrices(frame: pd.DataFrame, metrics: Sequence[str] = METRIC_NAMES) -> dict[str, pd.DataFrame]:
    """Per metric, runs x categories of the observations in ``frame`` (one setting's), NaN where missing.

    Rows are ordered by seed, columns by category name, so a bootstrap over the matrix does not depend on
    the order of the CSV's rows."""
    if frame.empty:
        return {metric: pd.DataFrame() for metric in metrics}
    cells = frame.groupby([RUN, CATEGORY], sort=False)[list(metrics)].mean().unstack(CATEGORY)
    rows = _run_order(frame)
    return {metric: cells[metric].reindex(index=rows, columns=sorted(cells[metric].columns)) for metric in metrics}


def paired_values(frame: pd.DataFrame, metrics: Sequence[str] = METRIC_NAMES) -> pd.DataFrame:
    """``metrics`` per (seed, category) of one setting's observations: the unit two settings are paired on
    (several runs with the same seed, as a grid repeated with --num-samples gives, are averaged)."""
    if frame.empty:
        return pd.DataFrame(columns=list(metrics))
    return frame.groupby([SEED, CATEGORY], sort=True)[list(metrics)].mean()


# --------------------------------------------------------------------------------------- settings ---
@dataclass(frozen=True)
class Settings:
    """The study's settings (one row each, ``key`` included) and the observations they were computed from."""

    table: pd.DataFrame
    observations: pd.DataFrame
    params: list[str]

    @property
    def empty(self) -> bool:
        return self.table.empty

    def row(self, key: str) -> pd.Series:
        return self.table[self.table[KEY] == key].iloc[0]

    def has(self, key: str | None) -> bool:
        return key is not None and bool((self.table[KEY] == key).any())

    def interval(self, key: str, metric: str) -> Interval:
        """The stored :class:`Interval` of one setting's metric."""
        if not self.has(key):
            return NO_VALUES
        return row_interval(self.row(key), metric)

    def members(self, key: str) -> pd.DataFrame:
        """The observations of one setting."""
        return self.observations[self.observations[KEY] == key]

    def key_of(self, trial_id: str) -> str | None:
        """The key of the setting a completed trial belongs to (None: not completed, or no per-category rows)."""
        match = self.observations.loc[self.observations[TRIAL_ID] == str(trial_id), KEY]
        return None if match.empty else str(match.iloc[0])

    def csv_frame(self) -> pd.DataFrame:
        """settings.csv: the table without the internal key."""
        return self.table.drop(columns=[KEY])


def row_interval(row: pd.Series, metric: str) -> Interval:
    """The :class:`Interval` stored in one row of the settings table."""
    return Interval(int(row[N_SEEDS_COLUMN]), float(row[metric]), float(row[metric + CI_LOW]),
                    float(row[metric + CI_HIGH]), float(row[metric + SEED_STD]))


def settings_columns(params: Sequence[str]) -> list[str]:
    per_metric = [f"{m}{part}" for m in METRIC_NAMES for part in ("", CI_LOW, CI_HIGH, SEED_STD)]
    return [KEY, LABEL, *params, N_SEEDS_COLUMN, SEEDS_COLUMN, TRIAL_IDS_COLUMN, *per_metric]


def study_settings(results: StudyResults) -> Settings:
    """Every setting of the study's completed trials, in the order the settings first appear in trials.csv.

    Per setting: its parameters (the hyperparameters that vary across the study, the seed excepted), the
    number of seeds (training runs) and which, its trials, and per metric the mean, the bootstrap interval
    (:func:`~study.report.stats.bootstrap_mean_ci`) and the standard deviation of the per-seed means.
    """
    params = results.setting_params
    frame = observations(results)
    columns = settings_columns(params)
    if frame.empty:
        return Settings(pd.DataFrame(columns=columns), frame, params)
    chosen = results.trials_with(SETTING_STATUSES)
    chosen_ids = chosen[TRIAL_ID].astype(str)
    # Settings in the order they first appear in trials.csv.
    order = {key: position for position, key in
             enumerate(dict.fromkeys(setting_keys(chosen, setting_grouping(results))))}
    rows = []
    for key, members in sorted(frame.groupby(KEY, sort=False), key=lambda item: order.get(item[0], len(order))):
        first = chosen[chosen_ids == members[TRIAL_ID].iloc[0]].iloc[0]
        row: dict[str, Any] = {KEY: key, LABEL: setting_label(first, params)}
        row.update({p: first[p] for p in params})
        runs = members.drop_duplicates(RUN).set_index(RUN)[SEED]
        row[N_SEEDS_COLUMN] = len(runs)
        row[SEEDS_COLUMN] = SEED_SEPARATOR.join(runs.loc[_run_order(members)])
        row[TRIAL_IDS_COLUMN] = SEED_SEPARATOR.join(dict.fromkeys(members[TRIAL_ID]))
        matrices = seed_matrices(members)
        for metric in METRIC_NAMES:
            interval = bootstrap_mean_ci(matrices[metric].to_numpy(dtype=float))
            row.update({metric: interval.mean, metric + CI_LOW: interval.low, metric + CI_HIGH: interval.high,
                        metric + SEED_STD: interval.seed_std})
        rows.append(row)
    table = pd.DataFrame(rows, columns=columns)
    return Settings(table.reset_index(drop=True), frame, params)


# ----------------------------------------------------------------------------------- per category ---
def per_category_matrix(results: StudyResults, metric: str, rows: dict[str, Sequence[str]]) -> pd.DataFrame:
    """``metric`` (fraction) averaged per category over each row's trials (and their seeds): index = labels.

    ``rows`` maps a label (a trial id, a setting, a study) to the trial ids it stands for. Categories
    follow :meth:`StudyResults.categories`; rows with no per-category values are left out.
    """
    frame = results.per_category
    categories = results.categories()
    if frame.empty or metric not in frame.columns:
        return pd.DataFrame(columns=categories)
    out = {}
    for label, trial_ids in rows.items():
        members = frame[frame[TRIAL_ID].isin([str(t) for t in trial_ids])]
        if not members.empty:
            out[label] = members.groupby(CATEGORY)[metric].mean()
    if not out:
        return pd.DataFrame(columns=categories)
    return pd.DataFrame(out).T.reindex(columns=categories)


def per_category_spread(settings: Settings, key: str, metric: str, categories: Sequence[str]) -> dict[str, Spread]:
    """Per category, one setting's ``metric`` over its seeds: mean and t-based interval (:func:`mean_ci`).

    Within one category only the seed varies, so the t interval over the per-seed values is the natural
    one; it is the interval the per-category tables show."""
    members = settings.members(key)
    return {category: mean_ci(members.loc[members[CATEGORY] == category, metric]) for category in categories}
