"""One fidelity per comparison: which trials' values may be compared with each other, and whether an early
value predicts the final one.

A trial that ASHA stopped after 8 epochs and one that trained all 60 were measured at different fidelities;
ranking them together (importance, slice plots, optimisation history) mixes how good a setting is with how
long it trained. A :class:`Fidelity` is either the completed trials' final values or one evaluated epoch
(every trial that reported at that epoch, whatever became of it later).

The rung correlations are the evidence ASHA's early stopping rests on: for every evaluated epoch, Spearman's
rank correlation between the metric at that epoch and the final metric, over the trials that reached both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import pandas as pd

from maae.errors import ConfigError
from study.protocol import COMPLETED, EPOCH, STATUS, STUDY_FILE, TRIAL_ID
from study.report.load import StudyResults
from study.report.stats import rank_correlation
from study.space import SCHEDULER_ASHA, parse_space

CORRELATION_COLUMNS = ["metric", "epoch", "asha_rung", "n_trials", "spearman", "p_value", "note"]


@dataclass(frozen=True)
class Fidelity:
    """The completed trials' final values (``epoch`` None), or every trial's value at one evaluated epoch."""

    epoch: int | None = None

    @property
    def is_final(self) -> bool:
        return self.epoch is None

    def describe(self, count: int) -> str:
        if self.is_final:
            return (f"the {count} completed trial(s), at their final epoch; trials that ASHA stopped early are "
                    "left out (they trained fewer epochs)")
        return (f"the {count} trial(s) that reported epoch {self.epoch}, at that epoch (whether they went on "
                "or were stopped there)")

    @property
    def label(self) -> str:
        return "completed (final epoch)" if self.is_final else f"epoch {self.epoch}"


FINAL = Fidelity()


def evaluation_epochs(results: StudyResults, metric: str) -> list[int]:
    """Every epoch at which some trial reported ``metric`` (history.csv), ascending."""
    history = results.history
    if history.empty or metric not in history.columns:
        return []
    return sorted({int(e) for e in history.loc[history[metric].notna(), EPOCH]})


def values_at(results: StudyResults, fidelity: Fidelity, metric: str) -> pd.Series:
    """``metric`` by trial id at one fidelity (NaN values left out)."""
    if fidelity.is_final:
        trials = results.trials
        if metric not in trials.columns:
            return pd.Series(dtype=float)
        completed = trials[(trials[STATUS] == COMPLETED) & trials[metric].notna()]
        return pd.Series(completed[metric].to_numpy(dtype=float), index=completed[TRIAL_ID].astype(str))
    history = results.history
    if history.empty or metric not in history.columns:
        return pd.Series(dtype=float)
    rows = history[(history[EPOCH] == fidelity.epoch) & history[metric].notna()]
    values = rows.groupby(rows[TRIAL_ID].astype(str))[metric].last()
    return values.astype(float)


def choose_fidelity(results: StudyResults, metric: str, minimum: int) -> tuple[Fidelity, str]:
    """The completed trials when at least ``minimum`` have ``metric``; else the latest evaluated epoch that
    ``minimum`` trials reported; else the completed trials anyway. The note says why when not the first."""
    if len(values_at(results, FINAL, metric)) >= minimum:
        return FINAL, ""
    for epoch in reversed(evaluation_epochs(results, metric)):
        if len(values_at(results, Fidelity(epoch), metric)) >= minimum:
            return Fidelity(epoch), (f"fewer than {minimum} trials completed, so the latest epoch that "
                                     f"{minimum} or more trials reported stands in")
    return FINAL, ""


def asha_rungs(results: StudyResults) -> list[int]:
    """The epochs at which ASHA compared trials (grace period × reduction factor^k below the last epoch, as
    Ray's AsyncHyperBandScheduler places them); empty when the study ran no ASHA or its space is unreadable."""
    raw = results.study.get("space")
    if not raw:
        return []
    try:
        space = parse_space(raw, str(results.study.get("space_file") or STUDY_FILE))
    except ConfigError:
        return []
    if space.scheduler.type != SCHEDULER_ASHA:
        return []
    epochs = (results.study.get("base_config") or {}).get("epochs")
    if not epochs:
        evaluated = evaluation_epochs(results, results.metric)
        epochs = evaluated[-1] if evaluated else 0
    grace = min(space.scheduler.grace_period, int(epochs))
    factor = space.scheduler.reduction_factor
    if grace < 1 or epochs < 1:
        return []
    count = int(math.log(int(epochs) / grace) / math.log(factor) + 1)
    return [int(round(grace * factor**k)) for k in range(count)]


def rung_correlations(results: StudyResults, metric: str) -> pd.DataFrame:
    """rung_correlations.csv: per evaluated epoch, Spearman's rho (and p-value) between ``metric`` at that
    epoch and the final ``metric``, over the completed trials that reported that epoch (the ones that
    "reached both"); ``asha_rung`` marks ASHA's comparison epochs."""
    final = values_at(results, FINAL, metric)
    rungs = set(asha_rungs(results))
    rows = []
    for epoch in evaluation_epochs(results, metric):
        early = values_at(results, Fidelity(epoch), metric)
        both = early.index.intersection(final.index)
        correlation = rank_correlation(early.loc[both].to_numpy(), final.loc[both].to_numpy(),
                                       names=(f"epoch {epoch}", "the final epoch"))
        rows.append({"metric": metric, "epoch": epoch, "asha_rung": epoch in rungs, "n_trials": correlation.n,
                     "spearman": correlation.rho, "p_value": correlation.p_value, "note": correlation.note})
    frame = pd.DataFrame(rows, columns=CORRELATION_COLUMNS)
    return frame.astype({"spearman": float, "p_value": float}) if not frame.empty else frame

