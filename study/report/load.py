"""A study's results folder read into frames: what every report section starts from.

Reads the files of ``docs/results-format.md`` (never writes them: the CSVs stay the source of truth), with
the names of :mod:`study.protocol`: categories normalised, booleans parsed, metrics as floats. Works on
partial results: a study that is still running has running/pending trials with empty metrics, maybe no
``best/`` folder and maybe no ``trials.csv`` yet.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from maae.config import FALSE_WORDS, TRUE_WORDS
from maae.errors import DataError
from study.protocol import (
    BEST_DIR,
    CATEGORY,
    DEFAULT_METRIC,
    DEFAULT_MODE,
    EPOCH,
    EPOCHS_DONE,
    ERROR,
    HISTORY_FILE,
    KIND_SEARCH,
    LOSS,
    METRIC_NAMES,
    N_SEEDS,
    PER_CATEGORY_FILE,
    SECONDS,
    SEED_COLUMN,
    SEEDS,
    STATUS,
    STATUSES,
    STUDY_FILE,
    TRIAL_ID,
    TRIAL_RESULT_COLUMNS,
    TRIALS_FILE,
)
from study.report.paper import MVTEC_CATEGORIES, is_mvtec, normalise_category

# Columns of trials.csv that are not hyperparameters (N_SEEDS and SEEDS among them: a study with repeats
# trains k seeds inside one trial and reports their means; an older study has neither column).
RESULT_COLUMNS = frozenset({TRIAL_ID, STATUS, *TRIAL_RESULT_COLUMNS, N_SEEDS, SEEDS})
# A text column becomes booleans only when it holds these words (pandas writes booleans as True/False), so a
# column of 0/1 numbers stays numbers.
BOOLEAN_NAMES = frozenset({"true", "false"})
# What study/run.py writes the folder with (named in the errors of a folder that is not a study's).
WRITER = "study/run.py"


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
        return str(self.study.get("kind") or KIND_SEARCH)

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
        seen = list(dict.fromkeys(self.per_category[CATEGORY])) if not self.per_category.empty else []
        declared = [normalise_category(c) for c in self.study.get("categories") or []]
        names = list(dict.fromkeys([*declared, *seen]))
        if is_mvtec(names):
            return [c for c in MVTEC_CATEGORIES if c in names]
        return names

    def status_counts(self) -> dict[str, int]:
        """Number of trials per status, every status listed (0 when none)."""
        counts = self.trials[STATUS].value_counts()
        return {status: int(counts.get(status, 0)) for status in STATUSES}

    def trials_with(self, statuses: Iterable[str], metric: str | None = None) -> pd.DataFrame:
        """Trials in ``statuses``, only those with a value for ``metric`` when one is given."""
        chosen = self.trials[self.trials[STATUS].isin(list(statuses))]
        return chosen[chosen[metric].notna()] if metric else chosen


def load_results(folder: Path) -> StudyResults:
    """Read a study folder; DataError (one line, naming the file) when it is not one."""
    folder = Path(folder)
    if not folder.is_dir():
        raise DataError(f"{folder}: no such folder; expected a study results folder written by {WRITER}")
    study_file = folder / STUDY_FILE
    if not study_file.is_file():
        raise DataError(f"{study_file}: missing; expected a study results folder written by {WRITER}")
    try:
        study = json.loads(study_file.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise DataError(f"{study_file}: not valid JSON ({err.msg} at line {err.lineno})") from None
    if not isinstance(study, dict):
        raise DataError(f"{study_file}: expected a JSON object")
    trials = _read_trials(folder / TRIALS_FILE)
    per_category = read_metric_table(folder / PER_CATEGORY_FILE, (TRIAL_ID, CATEGORY))
    if not per_category.empty:
        per_category[CATEGORY] = per_category[CATEGORY].map(normalise_category)
    history = read_metric_table(folder / HISTORY_FILE, (TRIAL_ID, EPOCH))
    best_dir = folder / BEST_DIR
    return StudyResults(folder, study, trials, per_category, history, best_dir if best_dir.is_dir() else None)


def _read_csv(path: Path, required: Sequence[str]) -> pd.DataFrame | None:
    if not path.is_file():
        return None
    try:
        frame = pd.read_csv(path, dtype={TRIAL_ID: str, ERROR: str, SEEDS: str})
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
    frame = _read_csv(path, (TRIAL_ID, STATUS))
    if frame is None:
        return pd.DataFrame({TRIAL_ID: pd.Series(dtype=str), STATUS: pd.Series(dtype=str)})
    frame[STATUS] = frame[STATUS].astype(str).str.strip().str.lower()
    unknown = sorted(set(frame[STATUS]) - set(STATUSES))
    if unknown:
        raise DataError(f"{path}: column {STATUS!r} has {', '.join(unknown)}; expected one of {', '.join(STATUSES)}")
    _numeric(frame, (*METRIC_NAMES, LOSS, EPOCHS_DONE, SECONDS, N_SEEDS), path)
    if SEEDS in frame.columns:
        frame[SEEDS] = frame[SEEDS].fillna("").astype(str)
    if ERROR in frame.columns:
        frame[ERROR] = frame[ERROR].fillna("").astype(str)
    for column in frame.columns:
        if column not in RESULT_COLUMNS:
            frame[column] = _parse_booleans(frame[column])
    return frame.reset_index(drop=True)


def _parse_booleans(column: pd.Series) -> pd.Series:
    """A column of true/false words (as pandas may leave them when some cells are empty) becomes booleans.

    The words are MAAEConfig's own (:data:`maae.config.TRUE_WORDS` / ``FALSE_WORDS``)."""
    if column.dtype == bool or column.dtype.kind in "iuf":
        return column
    present = column.dropna()
    words = {str(v).strip().lower() for v in present}
    if not present.empty and words <= TRUE_WORDS | FALSE_WORDS and words & BOOLEAN_NAMES:
        return column.map(lambda v: v if pd.isna(v) else str(v).strip().lower() in TRUE_WORDS)
    return column


def read_metric_table(path: Path, keys: Sequence[str]) -> pd.DataFrame:
    """A per-category or per-epoch table: ``keys`` required, every other column but the category numeric."""
    frame = _read_csv(path, keys)
    if frame is None:
        return pd.DataFrame(columns=list(keys))
    _numeric(frame, [c for c in frame.columns if c not in keys and c != CATEGORY], path)
    return frame
