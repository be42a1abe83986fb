"""A study's results folder read into frames, and the numbers every report section shows.

Reads the files of ``docs/results-format.md`` (never writes them: the CSVs stay the source of truth) and
derives: trial counts by status, the best trial, seed repeats (trials whose settings differ only in
``seed``) with their mean and t-based confidence interval, per-category matrices, and the ablation table
with the rule that says which differences exceed the seed-to-seed spread.

Works on partial results: a study that is still running has running/pending trials with empty metrics,
maybe no ``best/`` folder and maybe no ``trials.csv`` yet.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy import stats

from maae.config import MAAEConfig
from maae.errors import DataError
from study.report_paper import (
    MVTEC_CATEGORIES,
    is_mvtec,
    load_paper_ablation,
    normalise_category,
    paper_ablation_value,
)

METRICS = ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "pixel_f1_max")
METRIC_LABELS = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AUPRO",
    "image_ap": "Image AP",
    "pixel_ap": "Pixel AP",
    "pixel_f1_max": "Pixel F1-max",
}
# Columns of trials.csv that are not hyperparameters.
RESULT_COLUMNS = frozenset({"trial_id", "status", *METRICS, "loss", "epochs_done", "seconds", "error"})
STATUSES = ("completed", "stopped", "failed", "running", "pending")
# Trials whose metrics are final: completed ones, and those the scheduler stopped early (last report).
FINISHED_STATUSES = ("completed", "stopped")
# Seed statistics and the ablation use completed trials only: a stopped trial trained for fewer epochs.
SEED_STATUSES = ("completed",)
SEED_COLUMN = "seed"
CONFIDENCE = 0.95
DEFAULT_METRIC = "image_auroc"
DEFAULT_MODE = "max"
# Ablation switches (paper Table 3) by their MAAEConfig names, and the attention kind that means "on".
SWITCH_COLUMNS = ("use_ang", "use_ffm", "attention")
MIXED_ATTENTION = "mixed"
# (ang, ffm, mixed_attention) of the rows the ablation compares against.
FULL_MODEL_FLAGS = (True, True, True)
BASELINE_FLAGS = (False, False, False)
# A difference between two ablation rows counts as real when |delta mean| > SPREAD_FACTOR x pooled std.
SPREAD_FACTOR = 2.0
DIFFERENCE_RULE = (
    f"a difference counts as larger than the seed-to-seed spread when |Δ mean| > {SPREAD_FACTOR:g} × the "
    "pooled standard deviation of the two rows over seeds, sqrt(((n₁−1)s₁² + (n₂−1)s₂²)/(n₁+n₂−2)); "
    "it is undetermined when either row has fewer than 2 completed seeds"
)
_TRUE_TEXT = {"true", "1", "yes", "on"}
_FALSE_TEXT = {"false", "0", "no", "off"}


# ----------------------------------------------------------------------------------------------- loading
def _first(value: Any) -> Any:
    """A list's first item (multi-objective studies list their metrics and modes), else the value."""
    return value[0] if isinstance(value, (list, tuple)) and value else value


@dataclass(frozen=True)
class StudyResults:
    """One study's results folder, read (categories normalised, booleans parsed, metrics as floats)."""

    folder: Path
    study: dict[str, Any]
    trials: pd.DataFrame
    per_category: pd.DataFrame
    history: pd.DataFrame
    best_dir: Path | None

    @property
    def name(self) -> str:
        return str(self.study.get("name") or self.folder.name)

    @property
    def metric(self) -> str:
        """The metric the study optimises (the first one of a multi-objective study)."""
        return str(_first(self.study.get("metric")) or DEFAULT_METRIC)

    @property
    def mode(self) -> str:
        return str(_first(self.study.get("mode")) or DEFAULT_MODE)

    @property
    def kind(self) -> str:
        return str(self.study.get("kind") or "search")

    @property
    def param_columns(self) -> list[str]:
        """Every hyperparameter column of trials.csv (searched or fixed), in file order."""
        return [c for c in self.trials.columns if c not in RESULT_COLUMNS]

    @property
    def varying_params(self) -> list[str]:
        """Hyperparameters that take more than one value across the trials (seed included)."""
        return [c for c in self.param_columns if self.trials[c].nunique(dropna=False) > 1]

    @property
    def setting_params(self) -> list[str]:
        """Varying hyperparameters other than the seed: what tells one setting from another."""
        return [c for c in self.varying_params if c != SEED_COLUMN]

    @property
    def searched_params(self) -> list[str]:
        """The searched hyperparameters that vary (study.json ``searched``, else every varying one), no seed."""
        declared = self.study.get("searched")
        names = [c for c in declared if c in self.param_columns] if declared else self.param_columns
        return [c for c in names if c in self.setting_params]

    def categories(self) -> list[str]:
        """Categories in display order: the paper's for MVTec-AD, else study.json's, then any others."""
        seen = list(dict.fromkeys(self.per_category["category"])) if not self.per_category.empty else []
        declared = [normalise_category(c) for c in self.study.get("categories") or []]
        names = list(dict.fromkeys([*declared, *seen]))
        if is_mvtec(names):
            return [c for c in MVTEC_CATEGORIES if c in names]
        return names

    def status_counts(self) -> dict[str, int]:
        """Number of trials per status, every status listed (0 when none)."""
        counts = self.trials["status"].value_counts()
        return {status: int(counts.get(status, 0)) for status in STATUSES}

    def trials_with(self, statuses: Iterable[str], metric: str | None = None) -> pd.DataFrame:
        """Trials in ``statuses``, only those with a value for ``metric`` when one is given."""
        chosen = self.trials[self.trials["status"].isin(list(statuses))]
        return chosen[chosen[metric].notna()] if metric else chosen


def load_results(folder: Path) -> StudyResults:
    """Read a study folder; DataError (one line, naming the file) when it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; expected a study results folder written by study/run.py")
    study_file = folder / "study.json"
    if not study_file.is_file():
        raise DataError(f"{study_file}: missing; expected a study results folder written by study/run.py")
    try:
        study = json.loads(study_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{study_file}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(study, dict):
        raise DataError(f"{study_file}: expected a JSON object")
    trials = _read_trials(folder / "trials.csv")
    per_category = _read_metric_table(folder / "per_category.csv", ("trial_id", "category"))
    if not per_category.empty:
        per_category["category"] = per_category["category"].map(normalise_category)
    history = _read_metric_table(folder / "history.csv", ("trial_id", "epoch"))
    best_dir = folder / "best"
    return StudyResults(folder, study, trials, per_category, history, best_dir if best_dir.is_dir() else None)


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={"trial_id": str, "error": str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame(columns=list(required))
    except (pd.errors.ParserError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: not a readable CSV ({str(err).splitlines()[0]})") from None
    missing = [c for c in required if c not in frame.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {', '.join(missing)}")
    return frame


def _numeric(frame: pd.DataFrame, columns: Iterable[str], path: Path) -> None:
    for column in columns:
        if column in frame.columns:
            try:
                frame[column] = pd.to_numeric(frame[column]).astype(float)
            except (TypeError, ValueError):
                raise DataError(f"{path}: column {column!r} expects numbers (or empty)") from None


def _read_trials(path: Path) -> pd.DataFrame:
    frame = _read_csv(path, ("trial_id", "status"))
    if frame is None:
        return pd.DataFrame({"trial_id": pd.Series(dtype=str), "status": pd.Series(dtype=str)})
    frame["status"] = frame["status"].astype(str).str.strip().str.lower()
    unknown = sorted(set(frame["status"]) - set(STATUSES))
    if unknown:
        raise DataError(f"{path}: column 'status' has {', '.join(unknown)}; expected one of {', '.join(STATUSES)}")
    _numeric(frame, (*METRICS, "loss", "epochs_done", "seconds"), path)
    if "error" in frame.columns:
        frame["error"] = frame["error"].fillna("").astype(str)
    for column in frame.columns:
        if column not in RESULT_COLUMNS:
            frame[column] = _parse_booleans(frame[column])
    return frame.reset_index(drop=True)


def _parse_booleans(column: pd.Series) -> pd.Series:
    """A column of true/false words (as pandas may leave them when some cells are empty) becomes booleans."""
    if column.dtype == bool or column.dtype.kind in "iuf":
        return column
    present = column.dropna()
    words = {str(v).strip().lower() for v in present}
    if not present.empty and words <= _TRUE_TEXT | _FALSE_TEXT and words & {"true", "false"}:
        return column.map(lambda v: v if pd.isna(v) else str(v).strip().lower() in _TRUE_TEXT)
    return column


def _read_metric_table(path: Path, keys: Sequence[str]) -> pd.DataFrame:
    frame = _read_csv(path, keys)
    if frame is None:
        return pd.DataFrame(columns=list(keys))
    _numeric(frame, [c for c in frame.columns if c not in keys and c != "category"], path)
    return frame


# ------------------------------------------------------------------------------------------- statistics
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
               *[f"{m}_{part}" for m in METRICS for part in ("n", "mean", "std", "half_ci")]]
    if chosen.empty:
        return pd.DataFrame(columns=columns)
    keys = setting_keys(chosen, grouping)
    rows = []
    for key, members in chosen.groupby(keys, sort=False):
        first = members.iloc[0]
        row: dict[str, Any] = {"key": key, "label": setting_label(first, label_params)}
        row.update({p: first[p] for p in label_params})
        row["n_trials"] = len(members)
        row["trial_ids"] = ", ".join(members["trial_id"].astype(str))
        seeds = members[SEED_COLUMN].tolist() if SEED_COLUMN in members.columns else []
        row["seeds"] = ", ".join(_short(s) for s in seeds)
        for metric in METRICS:
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
    if named is not None and str(named) in set(trials["trial_id"]):
        row = trials[trials["trial_id"] == str(named)].iloc[0]
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
        row = candidates.loc[values.idxmax() if results.mode == "max" else values.idxmin()]
        provisional = True
        note += (f"Provisional: the best finished trial by {results.metric} ({results.mode}) so far; "
                 "study.json names no best trial yet.")
    grouping = [c for c in results.param_columns if c != SEED_COLUMN]
    keys = setting_keys(trials, grouping)
    completed = trials["status"].isin(SEED_STATUSES)
    repeats = trials[completed & (keys == keys.loc[row.name])]
    return BestTrial(str(row["trial_id"]), row, provisional, repeats, note)


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
        members = frame[frame["trial_id"].isin([str(t) for t in trial_ids])]
        if not members.empty:
            out[label] = members.groupby("category")[metric].mean()
    if not out:
        return pd.DataFrame(columns=categories)
    return pd.DataFrame(out).T.reindex(columns=categories)


def trial_per_category(results: StudyResults, trial_id: str) -> tuple[pd.DataFrame, str]:
    """One trial's per-category metrics (fractions) in category order, and where they came from.

    From per_category.csv; for the best trial, best/per_category.csv when per_category.csv has no rows
    for it yet. Empty frame when neither has any.
    """
    frame = results.per_category
    own = frame[frame["trial_id"] == str(trial_id)] if not frame.empty else frame
    source = "per_category.csv"
    best_file = results.best_dir / "per_category.csv" if results.best_dir is not None else None
    is_named_best = str(results.study.get("best_trial_id")) == str(trial_id)
    if own.empty and is_named_best and best_file is not None and best_file.is_file():
        own = _read_metric_table(best_file, ("category",))
        own["category"] = own["category"].map(normalise_category)
        source = "best/per_category.csv"
    if own.empty:
        return pd.DataFrame(columns=["category", *METRICS]), source
    order = {c: i for i, c in enumerate(results.categories())}
    own = own.assign(_order=own["category"].map(lambda c: order.get(c, len(order))))
    own = own.sort_values(["_order", "category"]).drop(columns="_order")
    columns = ["category", *[m for m in METRICS if m in own.columns]]
    return own[columns].reset_index(drop=True), source


def per_category_spread(results: StudyResults, trial_ids: Sequence[str], metric: str) -> pd.DataFrame:
    """Per category, the :class:`Spread` of ``metric`` over ``trial_ids`` (seed repeats): n, mean, half_ci."""
    frame = results.per_category
    rows = []
    if not frame.empty and metric in frame.columns:
        members = frame[frame["trial_id"].isin([str(t) for t in trial_ids])]
        for category in results.categories():
            spread = mean_ci(members.loc[members["category"] == category, metric])
            rows.append({"category": category, "n": spread.n, "mean": spread.mean, "half_ci": spread.half_width})
    return pd.DataFrame(rows, columns=["category", "n", "mean", "half_ci"])


# --------------------------------------------------------------------------------------------- ablation
def is_grid_study(results: StudyResults) -> bool:
    """A grid study by study.json's ``kind``, or a study whose ablation switches vary across trials."""
    return results.kind == "grid" or any(c in results.varying_params for c in SWITCH_COLUMNS)


def _switch_default(name: str) -> Any:
    return MAAEConfig.__dataclass_fields__[name].default


def switch_flags(results: StudyResults, values: pd.Series | dict[str, Any]) -> tuple[bool, bool, bool]:
    """(ang, ffm, mixed_attention) of one setting; a switch absent from trials.csv has its config default."""
    def value(name: str) -> Any:
        if name in values and not pd.isna(values[name]):
            return values[name]
        fixed = results.study.get("fixed") or {}
        return fixed.get(name, _switch_default(name))

    return bool(value("use_ang")), bool(value("use_ffm")), str(value("attention")) == MIXED_ATTENTION


def ablation_table(results: StudyResults) -> pd.DataFrame:
    """:func:`seed_groups` plus ``ang, ffm, mixed_attention`` flags and Table 3's values (percent).

    Paper columns: ``paper_image_auroc``, ``paper_pixel_auroc`` (NaN where Table 3 has no such row).
    """
    groups = seed_groups(results)
    paper = load_paper_ablation()
    flags = [switch_flags(results, row) for _, row in groups.iterrows()]
    groups["ang"] = [f[0] for f in flags]
    groups["ffm"] = [f[1] for f in flags]
    groups["mixed_attention"] = [f[2] for f in flags]
    for metric in ("image_auroc", "pixel_auroc"):
        groups[f"paper_{metric}"] = [
            paper_ablation_value(paper, *f, metric) if flags else math.nan for f in flags
        ]
        groups[f"paper_{metric}"] = groups[f"paper_{metric}"].astype(float)
    return groups


@dataclass(frozen=True)
class Reference:
    """The ablation row others are compared with, or why there is none."""

    key: str | None
    label: str
    note: str


def find_reference(results: StudyResults, table: pd.DataFrame, flags: tuple[bool, bool, bool],
                   name: str) -> Reference:
    """The row of ``table`` with the switch ``flags`` (the best by the study's metric if several)."""
    if table.empty:
        return Reference(None, name, f"no completed trials, so there is no {name} row")
    match = table[(table["ang"] == flags[0]) & (table["ffm"] == flags[1]) & (table["mixed_attention"] == flags[2])]
    if match.empty:
        names = ("ANG", "FFM", "mixed attention")
        wanted = ", ".join(f"{n}={'on' if f else 'off'}" for n, f in zip(names, flags, strict=True))
        return Reference(None, name, f"no completed setting has {wanted}, so there is no {name} row")
    column = f"{results.metric}_mean"
    ordered = match.sort_values(column, ascending=results.mode != "max", na_position="last")
    chosen = ordered.iloc[0]
    note = ""
    if len(match) > 1:
        note = (f"{len(match)} settings have the {name}'s switches; the best by {results.metric} "
                f"({chosen['label']}) is the reference")
    return Reference(str(chosen["key"]), str(chosen["label"]), note)


def ablation_differences(
    table: pd.DataFrame, reference_key: str, metrics: Sequence[str] = ("image_auroc", "pixel_auroc")
) -> pd.DataFrame:
    """Every other row against the reference row: Δ mean, pooled std and the :data:`DIFFERENCE_RULE`.

    Columns: ``label`` and per metric ``<metric>_delta``, ``<metric>_pooled_std`` (fractions) and
    ``<metric>_exceeds`` (True/False/None).
    """
    reference = table[table["key"] == reference_key].iloc[0]
    rows = []
    for _, row in table[table["key"] != reference_key].iterrows():
        out: dict[str, Any] = {"key": row["key"], "label": row["label"]}
        for metric in metrics:
            mine, theirs = group_spread(row, metric), group_spread(reference, metric)
            out[f"{metric}_delta"] = mine.mean - theirs.mean
            out[f"{metric}_pooled_std"] = pooled_std(mine, theirs)
            out[f"{metric}_exceeds"] = exceeds_spread(mine, theirs)
        rows.append(out)
    columns = ["key", "label", *[f"{m}_{p}" for m in metrics for p in ("delta", "pooled_std", "exceeds")]]
    return pd.DataFrame(rows, columns=columns)
