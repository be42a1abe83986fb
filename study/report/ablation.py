"""The ablation table (the paper's Table 3): settings by their ANG, FFM and attention switches, each with its
mean over seeds and interval, beside the paper's values. Which switch helps is the paired tests' job
(:mod:`study.report.comparisons`).
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd

from maae.config import MAAEConfig
from study.protocol import KIND_GRID
from study.report.load import StudyResults
from study.report.paper import PAPER_METRICS, load_paper_ablation, paper_ablation_value
from study.report.settings import Settings

# Ablation switches (paper Table 3) by their MAAEConfig names, and the attention kind that means "on".
SWITCH_COLUMNS = ("use_ang", "use_ffm", "attention")
MIXED_ATTENTION = "mixed"
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


def ablation_table(results: StudyResults, settings: Settings) -> pd.DataFrame:
    """The settings table plus ``ang, ffm, mixed_attention`` flags and Table 3's values (percent).

    Paper columns: ``paper_image_auroc``, ``paper_pixel_auroc`` (NaN where Table 3 has no such row).
    """
    table = settings.table.copy()
    paper = load_paper_ablation()
    flags = [switch_flags(results, row) for _, row in table.iterrows()]
    table["ang"] = [f[0] for f in flags]
    table["ffm"] = [f[1] for f in flags]
    table["mixed_attention"] = [f[2] for f in flags]
    for metric in ABLATION_METRICS:
        values = [paper_ablation_value(paper, *f, metric) for f in flags]
        table[f"paper_{metric}"] = pd.Series([math.nan if v is None else v for v in values], index=table.index,
                                             dtype=float)
    return table
