"""Which searched parameters move the study's metric by more than the seed-to-seed spread.

A parameter's effect is the range (max − min) of the setting means along it. Where the study varies it
alone (a grid: settings that agree on every other parameter), that is the largest such range over the
groups of otherwise equal settings. Where it never varies alone (a TPE search changes every parameter at
once), the settings are grouped by its value (a number with many values: by rank into
:data:`MARGINAL_BINS` equal-count bins) and the range of the group means is taken; that marginal range
also carries the other parameters' effects, so a flag there is strong evidence of no effect and its
absence is weak evidence of one.

The seed-to-seed spread is the pooled standard deviation of the per-seed means over every setting with at
least two seeds. A parameter is flagged when its effect is no larger than that spread: a second seed of
one setting moves the metric as much as the whole range of the parameter does.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from study.report.load import StudyResults
from study.report.settings import N_SEEDS_COLUMN, SEED_STD, Settings, setting_keys

# A numeric parameter with more distinct values than this is grouped by rank into this many bins.
MARGINAL_BINS = 3
HOW_ALONE = "varied alone"
HOW_MARGINAL = "marginal"
COLUMNS = ["parameter", "how", "groups", "effect", "seed_std", "within_spread", "note"]
RULE = ("a searched parameter is flagged when the range of the setting means along it is no larger than the "
        "seed-to-seed standard deviation (pooled over the settings with 2 or more seeds)")


@dataclass(frozen=True)
class SeedSpread:
    """Pooled standard deviation of one run's metric across seeds, from ``settings`` settings."""

    std: float
    settings: int
    degrees_of_freedom: int


def pooled_seed_spread(settings: Settings, metric: str) -> SeedSpread:
    """sqrt(Σ (n_i − 1) s_i² / Σ (n_i − 1)) over settings with n_i >= 2 seeds; NaN when there are none."""
    table = settings.table
    if table.empty:
        return SeedSpread(math.nan, 0, 0)
    n = table[N_SEEDS_COLUMN].astype(int)
    std = table[metric + SEED_STD].astype(float)
    usable = (n >= 2) & std.notna()
    dof = int((n[usable] - 1).sum())
    if dof == 0:
        return SeedSpread(math.nan, 0, 0)
    return SeedSpread(math.sqrt(float(((n[usable] - 1) * std[usable] ** 2).sum()) / dof), int(usable.sum()), dof)


def _alone_effect(table: pd.DataFrame, parameter: str, others: Sequence[str], metric: str) -> tuple[float, int]:
    """Largest range of ``metric`` over the groups of settings equal in ``others``; (NaN, 0) without such."""
    keys = setting_keys(table, others)
    ranges = [float(group[metric].max() - group[metric].min())
              for _, group in table.groupby(keys, sort=False) if group[parameter].nunique(dropna=False) > 1]
    return (max(ranges), len(ranges)) if ranges else (math.nan, 0)


def _marginal_effect(table: pd.DataFrame, parameter: str, metric: str) -> tuple[float, int]:
    values = table[parameter]
    numeric = values.dtype.kind in "iuf"
    if numeric and values.nunique() > MARGINAL_BINS:
        groups = pd.qcut(values.rank(method="first"), MARGINAL_BINS, labels=False)
    else:
        groups = values.map(str)
    means = table.groupby(groups, sort=False)[metric].mean()
    return (float(means.max() - means.min()), len(means)) if len(means) > 1 else (math.nan, len(means))


def parameter_effects(results: StudyResults, settings: Settings, metric: str) -> pd.DataFrame:
    """One row per searched parameter that varies: how its effect was measured, over how many groups, the
    effect and the seed spread (fractions), and ``within_spread`` (True/False; None when undetermined)."""
    spread = pooled_seed_spread(settings, metric)
    table = settings.table[settings.table[metric].notna()] if not settings.empty else settings.table
    rows = []
    for parameter in [p for p in results.searched_params if p in settings.params]:
        others = [p for p in settings.params if p != parameter]
        effect, groups = _alone_effect(table, parameter, others, metric) if not table.empty else (math.nan, 0)
        how = HOW_ALONE
        if groups == 0:
            effect, groups = _marginal_effect(table, parameter, metric) if not table.empty else (math.nan, 0)
            how = HOW_MARGINAL
        if math.isnan(effect):
            verdict, note = None, f"{parameter} takes fewer than 2 values among the completed settings"
        elif math.isnan(spread.std):
            verdict, note = None, "no completed setting has 2 or more seeds, so the seed spread is unknown"
        else:
            verdict = bool(effect <= spread.std)
            note = "" if how == HOW_ALONE else "confounded with the other parameters, which vary at the same time"
        rows.append({"parameter": parameter, "how": how, "groups": groups, "effect": effect,
                     "seed_std": spread.std, "within_spread": verdict, "note": note})
    frame = pd.DataFrame(rows, columns=COLUMNS)
    return frame.astype({"effect": float, "seed_std": float}) if not frame.empty else frame


def is_flagged(value: object) -> bool:
    """Whether a ``within_spread`` cell says the parameter's effect stays within the seed spread."""
    return isinstance(value, (bool, np.bool_)) and bool(value)
