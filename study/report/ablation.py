"""The ablation table (the paper's Table 3): settings by their ANG, FFM and attention switches, each with its
seed spread, beside the paper's values, and which differences exceed the seed-to-seed spread.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pandas as pd

from maae.config import MAAEConfig
from study.protocol import KIND_GRID, MODE_MAX
from study.report.load import StudyResults
from study.report.paper import PAPER_METRICS, load_paper_ablation, paper_ablation_value
from study.report.stats import exceeds_spread, group_spread, pooled_std, seed_groups

# Ablation switches (paper Table 3) by their MAAEConfig names, and the attention kind that means "on".
SWITCH_COLUMNS = ("use_ang", "use_ffm", "attention")
MIXED_ATTENTION = "mixed"
# (ang, ffm, mixed_attention) of the rows the ablation compares against.
FULL_MODEL_FLAGS = (True, True, True)
BASELINE_FLAGS = (False, False, False)
# The metrics the paper's Table 3 reports (and so the ablation compares).
ABLATION_METRICS = PAPER_METRICS


def is_grid_study(results: StudyResults) -> bool:
    """A grid study by study.json's ``kind``, or a study whose ablation switches vary across trials."""
    return results.kind == KIND_GRID or any(c in results.varying_params for c in SWITCH_COLUMNS)


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
    for metric in ABLATION_METRICS:
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
    ordered = match.sort_values(column, ascending=results.mode != MODE_MAX, na_position="last")
    chosen = ordered.iloc[0]
    note = ""
    if len(match) > 1:
        note = (f"{len(match)} settings have the {name}'s switches; the best by {results.metric} "
                f"({chosen['label']}) is the reference")
    return Reference(str(chosen["key"]), str(chosen["label"]), note)


def ablation_differences(
    table: pd.DataFrame, reference_key: str, metrics: Sequence[str] = ABLATION_METRICS
) -> pd.DataFrame:
    """Every other row against the reference row: Δ mean, pooled std and the
    :data:`~study.report.stats.DIFFERENCE_RULE`.

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
