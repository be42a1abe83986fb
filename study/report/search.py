"""The search section's numbers: an in-memory Optuna study rebuilt from trials.csv, and its importances, at
one fidelity at a time (:mod:`study.report.fidelity`: the completed trials, or one evaluated epoch).

The study runner's Optuna study lives inside Ray Tune's searcher; the report rebuilds an equivalent one from
the CSV (the source of truth) so Optuna's plots and importance evaluators can run on it. Distributions come
from study.json's ``space``, read by the same parser and translated by the same function as when the study
ran (:func:`study.space.parse_space`, :func:`study.space.stated_distributions`); a parameter the space does
not state, or whose trials took a value outside it, gets one from the values the trials took (numbers: a
float range from min to max; anything else: categorical).
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

from maae.errors import ConfigError
from study.protocol import MODE_MAX, STATUS, STUDY_FILE, TRIAL_ID
from study.report.fidelity import FINAL, Fidelity, asha_rungs, values_at
from study.report.load import StudyResults
from study.space import parse_space, stated_distributions

# Fewer finished trials than this and importances mean nothing.
MIN_TRIALS_FOR_IMPORTANCE = 2
IMPORTANCE_SEED = 0
# A value lies on a stepped range when (value - low) / step is this close to an integer.
STEP_TOLERANCE = 1e-8
# Where a parameter's distribution came from (shown in the report).
FROM_SPACE = "study.json space"
FROM_VALUES = "trial values"
NO_SPACE = "the space states no distribution"


@dataclass(frozen=True)
class SearchStudy:
    """The rebuilt Optuna study, the parameters it holds, and how their distributions were found."""

    study: optuna.Study
    params: list[str]
    distributions: dict[str, BaseDistribution]
    sources: dict[str, str]  # parameter -> "study.json space" or "trial values (...)" with the reason
    fidelity: Fidelity

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


def space_distributions(study: Mapping[str, Any]) -> tuple[dict[str, BaseDistribution], str]:
    """The distributions study.json's ``space`` states, by parameter, and why there are none (else "").

    The space is read exactly as ``study/run.py`` read it; a space that is missing, or that the parser no
    longer accepts (an older study), states none, and the reason says so.
    """
    raw = study.get("space")
    if not raw:
        return {}, NO_SPACE
    try:
        space = parse_space(raw, str(study.get("space_file") or STUDY_FILE))
    except ConfigError as err:
        return {}, f"study.json's space is not a valid space today: {err}"
    return stated_distributions(space), ""


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
    """Whether a trial's value lies in the distribution, on its step if it has one (so Optuna accepts it)."""
    if isinstance(distribution, CategoricalDistribution):
        return any(_same_choice(value, choice) for choice in distribution.choices)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    if not distribution.low <= value <= distribution.high:
        return False
    step = getattr(distribution, "step", None)
    if step is None:
        return True
    steps = (value - distribution.low) / step
    return math.isclose(steps, round(steps), abs_tol=STEP_TOLERANCE)


def infer_distributions(results: StudyResults, params: Sequence[str]) -> tuple[dict[str, BaseDistribution],
                                                                                dict[str, str]]:
    """One distribution per parameter, and for each where it came from (shown in the report)."""
    distributions: dict[str, BaseDistribution] = {}
    sources: dict[str, str] = {}
    stated, why_none = space_distributions(results.study)
    for name in params:
        values = results.trials[name].dropna()
        distribution = stated.get(name)
        if distribution is not None and all(_contains(distribution, native(v)) for v in values):
            distributions[name], sources[name] = distribution, FROM_SPACE
            continue
        distributions[name] = distribution_from_values(values)
        reason = ("the space's entry does not contain every value" if distribution is not None
                  else why_none or NO_SPACE)
        sources[name] = f"{FROM_VALUES} ({reason})"
    return distributions, sources


def build_search_study(results: StudyResults, fidelity: Fidelity = FINAL) -> SearchStudy:
    """An in-memory Optuna study of the trials at one fidelity (:func:`~study.report.fidelity.values_at`):
    the completed trials at their final value, or every trial that reported one evaluated epoch."""
    params = results.searched_params
    distributions, sources = infer_distributions(results, params)
    direction = "maximize" if results.mode == MODE_MAX else "minimize"
    with quiet_optuna():
        study = optuna.create_study(direction=direction, study_name=results.name)
    values = values_at(results, fidelity, results.metric)
    rows = results.trials[results.trials[TRIAL_ID].astype(str).isin(values.index)]
    trials = []
    for _, row in rows.iterrows():
        chosen = {p: _param_value(distributions[p], row[p]) for p in params if not pd.isna(row[p])}
        trials.append(optuna.trial.create_trial(
            params=chosen, distributions={p: distributions[p] for p in chosen},
            value=float(values[str(row[TRIAL_ID])]),
            user_attrs={TRIAL_ID: str(row[TRIAL_ID]), STATUS: str(row[STATUS])},
        ))
    study.add_trials(trials)
    return SearchStudy(study, params, distributions, sources, fidelity)


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
        return Importance({}, "", f"not available because {count} trial(s) are at {search.fidelity.label}; "
                                  f"importances need at least {MIN_TRIALS_FOR_IMPORTANCE}")
    params = varying_in_study(search)
    if not params:
        return Importance({}, "", "not available because no searched hyperparameter varies among the "
                                  f"trials at {search.fidelity.label}")
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
        note = f"{label} on {count} trials at {search.fidelity.label}"
        if failures:
            note += "; " + "; ".join(failures)
        if len(params) == 1:
            note += "; only one hyperparameter varies, so it has all the importance by construction"
        return Importance(values, label, note)
    return Importance({}, "", "not available because " + "; ".join(failures))


def importance_by_rung(results: StudyResults) -> pd.DataFrame:
    """Importances at one fidelity at a time: the completed trials, then every ASHA rung (its epoch) that
    enough trials reported. One row per fidelity: ``fidelity``, ``trials``, ``evaluator``, then one column
    per searched parameter (NaN where not computed), and ``note``."""
    rows = []
    for fidelity in (FINAL, *[Fidelity(epoch) for epoch in asha_rungs(results)]):
        search = build_search_study(results, fidelity)
        if fidelity.epoch is not None and search.finished_count == 0:
            continue
        importance = param_importances(search)
        rows.append({"fidelity": fidelity.label, "trials": search.finished_count,
                     "evaluator": importance.evaluator or "–",
                     **{p: importance.values.get(p, math.nan) for p in search.params},
                     "note": "" if importance.values else importance.note})
    return pd.DataFrame(rows, columns=["fidelity", "trials", "evaluator", *results.searched_params, "note"])
