"""The search section's numbers: an in-memory Optuna study rebuilt from trials.csv, and its importances.

The study runner's Optuna study lives inside Ray Tune's searcher; the report rebuilds an equivalent one from
the CSV (the source of truth) so Optuna's plots and importance evaluators can run on it. Distributions come
from study.json's ``space`` where it states them, else from the values the trials took (numbers: a float
range from min to max; anything else: categorical).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import optuna
import pandas as pd
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.importance import FanovaImportanceEvaluator, MeanDecreaseImpurityImportanceEvaluator
from optuna.trial import TrialState

from study.aggregate import FINISHED_STATUSES, StudyResults

# Fewer finished trials than this and importances mean nothing.
MIN_TRIALS_FOR_IMPORTANCE = 2
IMPORTANCE_SEED = 0
# How deep study.json's space is searched for a parameter's entry (e.g. space -> "params" -> name).
SPACE_SEARCH_DEPTH = 3
SPACE_SECTIONS = ("search", "grid")
_CHOICE_KEYS = ("choices", "values", "grid", "grid_search", "options")
_RANGE_KEYS = (("low", "high"), ("min", "max"), ("lower", "upper"))
_INT_TYPES = {"int", "integer", "randint", "qrandint", "lograndint", "int_uniform"}
_LOG_TYPES = {"loguniform", "log_uniform", "lograndint", "float_log", "log"}


@dataclass(frozen=True)
class SearchStudy:
    """The rebuilt Optuna study, the parameters it holds, and how their distributions were found."""

    study: optuna.Study
    params: list[str]
    distributions: dict[str, BaseDistribution]
    sources: dict[str, str]  # parameter -> "study.json space" or "trial values (...)" with the reason

    @property
    def finished_count(self) -> int:
        return len(self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))


@dataclass(frozen=True)
class Importance:
    """Normalised importances (empty when skipped), the evaluator that produced them, and notes."""

    values: dict[str, float]
    evaluator: str
    note: str


@contextlib.contextmanager
def quiet_optuna() -> Iterator[None]:
    """Silence Optuna's INFO logging ("A new study created in memory") for the block, then restore it."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(previous)


def native(value: Any) -> Any:
    """A numpy scalar as the plain Python value Optuna's distributions accept."""
    return value.item() if isinstance(value, np.generic) else value


def find_space_entry(space: Any, name: str, depth: int = SPACE_SEARCH_DEPTH) -> Any:
    """The entry for ``name`` in study.json's space (a list, a dict or a scalar), or None.

    The space file's ``search:`` and ``grid:`` sections come first (study/space.py's schema); any other
    nesting is searched too, so an older or hand-written space still yields its ranges.
    """
    if not isinstance(space, Mapping) or depth <= 0:
        return None
    for section in SPACE_SECTIONS:
        if isinstance(space.get(section), Mapping) and name in space[section]:
            return space[section][name]
    if name in space:
        return space[name]
    for value in space.values():
        found = find_space_entry(value, name, depth - 1)
        if found is not None:
            return found
    return None


def distribution_from_space(entry: Any) -> BaseDistribution | None:
    """An Optuna distribution for a space entry that states one (choices or a low/high range), else None.

    A ``step`` is left out: the plain range holds every stepped value, and importances don't need the grid.
    """
    if isinstance(entry, (list, tuple)) and entry:
        return CategoricalDistribution([native(v) for v in entry])
    if not isinstance(entry, Mapping):
        return None
    spec = {str(k).lower(): v for k, v in entry.items()}
    for key in _CHOICE_KEYS:
        if isinstance(spec.get(key), (list, tuple)) and spec[key]:
            return CategoricalDistribution([native(v) for v in spec[key]])
    kind = str(spec.get("type", spec.get("distribution", ""))).lower()
    for low_key, high_key in _RANGE_KEYS:
        if low_key in spec and high_key in spec:
            low, high = spec[low_key], spec[high_key]
            log = bool(spec.get("log", False)) or kind in _LOG_TYPES
            if kind in _INT_TYPES and float(low).is_integer() and float(high).is_integer():
                return IntDistribution(int(low), int(high), log=log)
            return FloatDistribution(float(low), float(high), log=log)
    return None


def distribution_from_values(values: pd.Series) -> BaseDistribution:
    """Numbers: a float range from their min to max; anything else (booleans, words): categorical."""
    present = values.dropna()
    if present.dtype.kind in "iuf":
        return FloatDistribution(float(present.min()), float(present.max()))
    choices = sorted({native(v) for v in present}, key=str)
    return CategoricalDistribution(choices)


def _same_choice(value: Any, choice: Any) -> bool:
    """Equal values, where a boolean only equals a boolean (True == 1 in Python, not in a space)."""
    if isinstance(value, bool) or isinstance(choice, bool):
        return isinstance(value, bool) and isinstance(choice, bool) and value == choice
    return bool(value == choice)


def _contains(distribution: BaseDistribution, value: Any) -> bool:
    """Whether a trial's value lies in the distribution (so Optuna accepts the trial)."""
    if isinstance(distribution, CategoricalDistribution):
        return any(_same_choice(value, choice) for choice in distribution.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return distribution.low <= value <= distribution.high


def infer_distributions(results: StudyResults, params: Sequence[str]) -> tuple[dict[str, BaseDistribution],
                                                                                dict[str, str]]:
    """One distribution per parameter, and for each where it came from (shown in the report)."""
    distributions: dict[str, BaseDistribution] = {}
    sources: dict[str, str] = {}
    space = results.study.get("space") or {}
    for name in params:
        values = results.trials[name].dropna()
        stated = distribution_from_space(find_space_entry(space, name))
        if stated is not None and all(_contains(stated, native(v)) for v in values):
            distributions[name], sources[name] = stated, "study.json space"
            continue
        distributions[name] = distribution_from_values(values)
        sources[name] = ("trial values (the space's entry does not contain every value)" if stated is not None
                         else "trial values (the space states no distribution)")
    return distributions, sources


def build_search_study(results: StudyResults) -> SearchStudy:
    """An in-memory Optuna study of the finished trials (completed, and stopped ones at their last value)."""
    params = results.searched_params
    distributions, sources = infer_distributions(results, params)
    direction = "maximize" if results.mode == "max" else "minimize"
    with quiet_optuna():
        study = optuna.create_study(direction=direction, study_name=results.name)
    has_metric = results.metric in results.trials.columns
    finished = results.trials_with(FINISHED_STATUSES, results.metric) if has_metric else results.trials.iloc[:0]
    trials = []
    for _, row in finished.iterrows():
        values = {p: _param_value(distributions[p], row[p]) for p in params if not pd.isna(row[p])}
        trials.append(optuna.trial.create_trial(
            params=values, distributions={p: distributions[p] for p in values},
            value=float(row[results.metric]),
            user_attrs={"trial_id": str(row["trial_id"]), "status": str(row["status"])},
        ))
    study.add_trials(trials)
    return SearchStudy(study, params, distributions, sources)


def _param_value(distribution: BaseDistribution, value: Any) -> Any:
    value = native(value)
    if isinstance(distribution, FloatDistribution):
        return float(value)
    if isinstance(distribution, IntDistribution):
        return int(value)
    return value


def varying_in_study(search: SearchStudy) -> list[str]:
    """Parameters that take more than one value among the study's finished trials."""
    trials = search.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return [p for p in search.params if len({repr(t.params.get(p)) for t in trials}) > 1]


def param_importances(search: SearchStudy) -> Importance:
    """fANOVA importances; Mean Decrease Impurity when fANOVA fails; skipped (with the reason) when the
    study has fewer than :data:`MIN_TRIALS_FOR_IMPORTANCE` finished trials or no varying parameter."""
    count = search.finished_count
    if count < MIN_TRIALS_FOR_IMPORTANCE:
        return Importance({}, "", f"not available because the study has {count} finished trial(s); "
                                  f"importances need at least {MIN_TRIALS_FOR_IMPORTANCE}")
    params = varying_in_study(search)
    if not params:
        return Importance({}, "", "not available because no searched hyperparameter varies among the "
                                  "finished trials")
    evaluators = (("fANOVA", FanovaImportanceEvaluator(seed=IMPORTANCE_SEED)),
                  ("Mean Decrease Impurity", MeanDecreaseImpurityImportanceEvaluator(seed=IMPORTANCE_SEED)))
    failures = []
    for label, evaluator in evaluators:
        try:
            values = optuna.importance.get_param_importances(search.study, evaluator=evaluator, params=params)
        except (ValueError, RuntimeError, ZeroDivisionError) as err:
            failures.append(f"{label} failed ({type(err).__name__}: {err})")
            continue
        values = {k: float(v) for k, v in values.items() if not math.isnan(v)}
        note = f"{label} on {count} finished trials"
        if failures:
            note += "; " + "; ".join(failures)
        if len(params) == 1:
            note += "; only one hyperparameter varies, so it has all the importance by construction"
        return Importance(values, label, note)
    return Importance({}, "", "not available because " + "; ".join(failures))
