"""The numbers a report shows beyond the raw tables: seed repeats with confidence intervals, the best trial
and its repeats, and per-category aggregates.

Seed repeats are trials whose settings differ only in ``seed``; their mean comes with a t-based confidence
interval, and two settings' difference is judged against their pooled seed-to-seed spread (see
:mod:`study.report.ablation`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from study.protocol import (
    BEST_DIR,
    CATEGORY,
    COMPLETED,
    FINISHED_STATUSES,
    METRIC_NAMES,
    MODE_MAX,
    PER_CATEGORY_FILE,
    SEED_COLUMN,
    STATUS,
    TRIAL_ID,
)
from study.report.load import StudyResults, read_metric_table
from study.report.paper import normalise_category

# Seed statistics and the ablation use completed trials only: a stopped trial trained for fewer epochs.
SEED_STATUSES = (COMPLETED,)
CONFIDENCE = 0.95
# A difference between two settings counts as real when |delta mean| > SPREAD_FACTOR x pooled std.
SPREAD_FACTOR = 2.0
DIFFERENCE_RULE = (
    f"a difference counts as larger than the seed-to-seed spread when |Δ mean| > {SPREAD_FACTOR:g} × the "
    "pooled standard deviation of the two rows over seeds, sqrt(((n₁−1)s₁² + (n₂−1)s₂²)/(n₁+n₂−2)); "
    "it is undetermined when either row has fewer than 2 completed seeds"
)


@dataclass(frozen=True)
class Spread:
    """Mean of a metric over seed repeats with its sample std and t-based confidence interval."""

    n: int
    mean: float
    std: float  # sample standard deviation (ddof=1); NaN when n < 2
    half_width: float  # t_{(1+confidence)/2, n-1} * std / sqrt(n); NaN when n < 2

    @property
    def ci_low(self) -> float:
        return self.mean - self.half_width

    @property
    def ci_high(self) -> float:
        return self.mean + self.half_width


def mean_ci(values: Iterable[float], confidence: float = CONFIDENCE) -> Spread:
    """Mean, std and t-based confidence interval of the finite values (NaN parts when too few)."""
    array = np.asarray([v for v in values if v is not None and np.isfinite(v)], dtype=float)
    n = int(array.size)
    if n == 0:
        return Spread(0, math.nan, math.nan, math.nan)
    if n == 1:
        return Spread(1, float(array[0]), math.nan, math.nan)
    std = float(array.std(ddof=1))
    quantile = float(stats.t.ppf((1.0 + confidence) / 2.0, df=n - 1))
    return Spread(n, float(array.mean()), std, quantile * std / math.sqrt(n))


def pooled_std(a: Spread, b: Spread) -> float:
    """Pooled standard deviation of two groups; NaN unless both have at least 2 values."""
    if a.n < 2 or b.n < 2:
        return math.nan
    return math.sqrt(((a.n - 1) * a.std**2 + (b.n - 1) * b.std**2) / (a.n + b.n - 2))


def exceeds_spread(row: Spread, reference: Spread) -> bool | None:
    """The :data:`DIFFERENCE_RULE`: True/False, or None when either side has fewer than 2 seeds."""
    spread = pooled_std(row, reference)
    if math.isnan(spread):
        return None
    return abs(row.mean - reference.mean) > SPREAD_FACTOR * spread


# ---------------------------------------------------------------------------------------- seed repeats
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
    return ", ".join(f"{p}={_short(values[p])}" for p in params)


def _short(value: Any) -> str:
    if isinstance(value, float) and not math.isnan(value):
        return f"{value:.4g}"
    return str(value)


def seed_groups(results: StudyResults, statuses: Sequence[str] = SEED_STATUSES) -> pd.DataFrame:
    """One row per setting (identical hyperparameters except ``seed``) over the trials in ``statuses``.

    Columns: ``key``, ``label``, the setting's parameter values, ``n_trials``, ``trial_ids`` and ``seeds``
    (comma-separated), and for every metric ``<metric>_n``, ``_mean``, ``_std``, ``_half_ci`` (fractions).
    Rows keep the order in which settings first appear in trials.csv.
    """
    grouping = [c for c in results.param_columns if c != SEED_COLUMN]
    label_params = results.setting_params
    chosen = results.trials_with(statuses)
    columns = ["key", "label", *label_params, "n_trials", "trial_ids", "seeds",
               *[f"{m}_{part}" for m in METRIC_NAMES for part in ("n", "mean", "std", "half_ci")]]
    if chosen.empty:
        return pd.DataFrame(columns=columns)
    keys = setting_keys(chosen, grouping)
    rows = []
    for key, members in chosen.groupby(keys, sort=False):
        first = members.iloc[0]
        row: dict[str, Any] = {"key": key, "label": setting_label(first, label_params)}
        row.update({p: first[p] for p in label_params})
        row["n_trials"] = len(members)
        row["trial_ids"] = ", ".join(members[TRIAL_ID].astype(str))
        seeds = members[SEED_COLUMN].tolist() if SEED_COLUMN in members.columns else []
        row["seeds"] = ", ".join(_short(s) for s in seeds)
        for metric in METRIC_NAMES:
            spread = mean_ci(members[metric]) if metric in members.columns else mean_ci([])
            row.update({f"{metric}_n": spread.n, f"{metric}_mean": spread.mean,
                        f"{metric}_std": spread.std, f"{metric}_half_ci": spread.half_width})
        rows.append(row)
    return pd.DataFrame(rows, columns=columns)


def group_spread(group_row: pd.Series, metric: str) -> Spread:
    """The :class:`Spread` stored in one row of :func:`seed_groups`."""
    return Spread(int(group_row[f"{metric}_n"]), float(group_row[f"{metric}_mean"]),
                  float(group_row[f"{metric}_std"]), float(group_row[f"{metric}_half_ci"]))


# ------------------------------------------------------------------------------------------- best trial
@dataclass(frozen=True)
class BestTrial:
    """The study's best trial, the completed seed repeats of its setting, and how it was chosen."""

    trial_id: str
    row: pd.Series
    provisional: bool  # chosen here from the finished trials because study.json names none (yet)
    repeats: pd.DataFrame  # completed trials with the same settings except the seed (the best included)
    note: str

    def spread(self, metric: str) -> Spread:
        return mean_ci(self.repeats[metric]) if metric in self.repeats.columns else mean_ci([])


def best_trial(results: StudyResults) -> BestTrial | None:
    """study.json's ``best_trial_id``; while it has none, the best finished trial by the study's metric."""
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
    grouping = [c for c in results.param_columns if c != SEED_COLUMN]
    keys = setting_keys(trials, grouping)
    completed = trials[STATUS].isin(SEED_STATUSES)
    repeats = trials[completed & (keys == keys.loc[row.name])]
    return BestTrial(str(row[TRIAL_ID]), row, provisional, repeats, note)


# ------------------------------------------------------------------------------------------ per category
def per_category_matrix(
    results: StudyResults, metric: str, rows: dict[str, Sequence[str]]
) -> pd.DataFrame:
    """``metric`` (fraction) averaged per category over each row's trials: index = row labels.

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


def trial_per_category(results: StudyResults, trial_id: str) -> tuple[pd.DataFrame, str]:
    """One trial's per-category metrics (fractions) in category order, and where they came from.

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
    if own.empty:
        return pd.DataFrame(columns=[CATEGORY, *METRIC_NAMES]), source
    order = {c: i for i, c in enumerate(results.categories())}
    own = own.assign(_order=own[CATEGORY].map(lambda c: order.get(c, len(order))))
    own = own.sort_values(["_order", CATEGORY]).drop(columns="_order")
    columns = [CATEGORY, *[m for m in METRIC_NAMES if m in own.columns]]
    return own[columns].reset_index(drop=True), source


def per_category_spread(results: StudyResults, trial_ids: Sequence[str], metric: str) -> pd.DataFrame:
    """Per category, the :class:`Spread` of ``metric`` over ``trial_ids`` (seed repeats): n, mean, half_ci."""
    frame = results.per_category
    rows = []
    if not frame.empty and metric in frame.columns:
        members = frame[frame[TRIAL_ID].isin([str(t) for t in trial_ids])]
        for category in results.categories():
            spread = mean_ci(members.loc[members[CATEGORY] == category, metric])
            rows.append({CATEGORY: category, "n": spread.n, "mean": spread.mean, "half_ci": spread.half_width})
    return pd.DataFrame(rows, columns=[CATEGORY, "n", "mean", "half_ci"])
