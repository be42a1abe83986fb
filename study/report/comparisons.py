"""Paired comparisons of settings that differ in one switch: the rows of ``comparisons.csv``.

For a grid (the ablation included), every two settings that differ in exactly one parameter are compared
on every metric: setting B against setting A, paired on the units both measured (the same seed and
category), with scipy's Wilcoxon signed-rank test, Holm's correction over all comparisons of the same
metric, and the probability of improvement P(B > A). Direction: B is the switch turned on (``True``, or
``attention=mixed``), else the later value in the grid's own order.

The per-(seed, category) differences share their seed's training run, so they are not independent: the
p-values are best read as a ranking of evidence, and Holm's correction as a guard against reading one
lucky row out of many.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from study.protocol import METRIC_NAMES
from study.report.ablation import MIXED_ATTENTION, is_grid_study
from study.report.load import StudyResults
from study.report.settings import KEY, LABEL, Settings, paired_values
from study.report.stats import holm, paired_wilcoxon

# Family-wise error rate of the ``significant`` column (Holm over each metric's comparisons).
ALPHA = 0.05
ATTENTION = "attention"
COLUMNS = ["parameter", "setting_a", "setting_b", "value_a", "value_b", "metric", "n_pairs", "mean_a", "mean_b",
           "mean_difference", "p_value", "p_holm", "prob_improvement", "significant", "test"]
RULE = (f"B against A on the units both measured (same seed and category): two-sided Wilcoxon signed-rank "
        f"test of the differences B − A (zero differences dropped; p = 1 when all are zero), Holm's "
        f"correction over every comparison of the same metric, significant when the corrected p < {ALPHA:g}; "
        "P(B > A) is the share of units where B scores higher, ties counting half")


@dataclass(frozen=True)
class SwitchPair:
    """Two settings that differ in one parameter, oriented so that B is the switch turned on."""

    parameter: str
    key_a: str
    key_b: str
    value_a: Any
    value_b: Any


def _same(value: Any, other: Any) -> bool:
    """Equal values, numbers compared as numbers (2 == 2.0), booleans only to booleans."""
    if isinstance(value, (bool, np.bool_)) or isinstance(other, (bool, np.bool_)):
        return isinstance(value, (bool, np.bool_)) and isinstance(other, (bool, np.bool_)) and bool(value) == bool(
            other)
    if isinstance(value, (int, float, np.number)) and isinstance(other, (int, float, np.number)):
        return math.isclose(float(value), float(other))
    return str(value) == str(other)


def _grid_position(results: StudyResults, parameter: str, value: Any) -> int | None:
    values = ((results.study.get("space") or {}).get("grid") or {}).get(parameter)
    if not isinstance(values, list):
        return None
    return next((i for i, choice in enumerate(values) if _same(value, choice)), None)


def orient(results: StudyResults, parameter: str, first: Any, second: Any) -> tuple[Any, Any]:
    """(A, B) of two values of ``parameter``: B is True for a boolean, ``mixed`` for the attention, else the
    later value in the grid's order (study.json's space), else the larger number or the later text."""
    if isinstance(first, (bool, np.bool_)) and isinstance(second, (bool, np.bool_)):
        return (second, first) if bool(first) else (first, second)
    if parameter == ATTENTION and MIXED_ATTENTION in (first, second):
        return (second, first) if first == MIXED_ATTENTION else (first, second)
    positions = (_grid_position(results, parameter, first), _grid_position(results, parameter, second))
    if None not in positions:
        return (first, second) if positions[0] <= positions[1] else (second, first)
    numbers = all(isinstance(v, (int, float, np.number)) for v in (first, second))
    ordered = sorted((first, second), key=(lambda v: float(v)) if numbers else str)
    return ordered[0], ordered[1]


def one_switch_pairs(results: StudyResults, settings: Settings) -> list[SwitchPair]:
    """Every two settings whose parameters differ in exactly one, in the settings' order."""
    table, params = settings.table, settings.params
    pairs = []
    for (_, left), (_, right) in itertools.combinations(table.iterrows(), 2):
        differing = [p for p in params if not _same(left[p], right[p])]
        if len(differing) != 1:
            continue
        parameter = differing[0]
        value_a, value_b = orient(results, parameter, left[parameter], right[parameter])
        a, b = (left, right) if _same(value_a, left[parameter]) else (right, left)
        pairs.append(SwitchPair(parameter, str(a[KEY]), str(b[KEY]), value_a, value_b))
    return pairs


def comparisons_table(results: StudyResults, settings: Settings,
                      metrics: Sequence[str] = METRIC_NAMES) -> pd.DataFrame:
    """comparisons.csv: one row per one-switch pair and metric (empty, with the columns, for a search study
    or with fewer than two settings). Metrics in fractions; ``mean_difference`` = mean of B − A."""
    if not is_grid_study(results) or len(settings.table) < 2:
        return pd.DataFrame(columns=COLUMNS)
    labels = dict(zip(settings.table[KEY], settings.table[LABEL], strict=True))
    paired = {key: paired_values(settings.members(key), metrics) for key in labels}
    rows = []
    for pair in one_switch_pairs(results, settings):
        a_values, b_values = paired[pair.key_a], paired[pair.key_b]
        units = a_values.index.intersection(b_values.index)
        for metric in metrics:
            test = paired_wilcoxon(b_values.loc[units, metric].to_numpy(), a_values.loc[units, metric].to_numpy())
            rows.append({"parameter": pair.parameter, "setting_a": labels[pair.key_a],
                         "setting_b": labels[pair.key_b], "value_a": pair.value_a,
                         "value_b": pair.value_b, "metric": metric, "n_pairs": test.n_pairs, "mean_a": test.mean_a,
                         "mean_b": test.mean_b, "mean_difference": test.mean_difference, "p_value": test.p_value,
                         "prob_improvement": test.prob_improvement, "test": test.test})
    if not rows:
        return pd.DataFrame(columns=COLUMNS)
    frame = pd.DataFrame(rows)
    frame["p_holm"] = np.nan
    for metric in frame["metric"].unique():
        chosen = frame["metric"] == metric
        frame.loc[chosen, "p_holm"] = holm(frame.loc[chosen, "p_value"].to_numpy(dtype=float))
    frame["significant"] = frame["p_holm"].lt(ALPHA)
    return frame[COLUMNS]
