"""``comparison.md``: the report's key tables as Markdown, in the paper's layout (percent).

Per category image/pixel AUROC of the best trial (beside the paper's MAAE for MVTec-AD), the ablation table
for grid studies, and the trials table. Several studies: each study's best means and a per-category table
of every study's best trial, then each study's tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from study.report.ablation import ablation_table, is_grid_study
from study.report.load import StudyResults
from study.report.paper import OVERLAY_METHODS, PAPER_METRICS, is_mvtec, overlay_column, paper_overlay
from study.report.stats import DIFFERENCE_RULE, BestTrial, trial_per_category
from study.report.tables import (
    METRIC_LABELS,
    MISSING,
    ablation_frame,
    best_metrics_frame,
    best_of_studies_matrix,
    best_per_category_frame,
    study_means_frame,
    trials_frame,
)

DECIMALS = 1
TRIAL_DECIMALS = 2


def markdown_cell(value: object, decimals: int = DECIMALS) -> str:
    """One cell: floats with ``decimals`` places, missing as ``–``, pipes and newlines escaped."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return MISSING
    text = f"{value:.{decimals}f}" if isinstance(value, float) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(frame: pd.DataFrame, decimals: int = DECIMALS) -> str:
    """A GitHub-flavoured pipe table of ``frame`` (no index)."""
    if frame.empty:
        return f"_{MISSING} no rows_\n"
    header = "| " + " | ".join(markdown_cell(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    rows = ["| " + " | ".join(markdown_cell(v, decimals) for v in row) + " |"
            for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *rows]) + "\n"


def _per_category(results: StudyResults, best: BestTrial | None) -> str:
    if best is None:
        return "Not available because no trial has finished yet.\n"
    frame, source = best_per_category_frame(results, best)
    if frame.empty:
        return f"Not available because trial {best.trial_id} has no per-category values.\n"
    columns = ["category", METRIC_LABELS["image_auroc"], METRIC_LABELS["pixel_auroc"]]
    paper_table = frame[columns].copy()
    own, _ = trial_per_category(results, best.trial_id)
    if is_mvtec(own["category"]):
        overlay = paper_overlay(own, OVERLAY_METHODS[:1])
        for level in ("image", "pixel"):
            column = overlay_column(OVERLAY_METHODS[0], level, "unified")
            paper_table[f"{OVERLAY_METHODS[0]} paper {level} (unified)"] = overlay[column].to_numpy()
    return (f"Best trial {best.trial_id} ({source}), AUROC in percent; the last row is the unweighted mean.\n\n"
            + markdown_table(paper_table))


def study_markdown(results: StudyResults, best: BestTrial | None, heading: str = "#") -> str:
    """The Markdown of one study: summary line, best metrics, per category, ablation, trials."""
    counts = results.status_counts()
    lines = [f"{heading} Study {results.name}", "",
             f"Command: `{results.study.get('command', '')}`  ",
             f"Kind: {results.kind}; metric: {results.metric} ({results.mode}); trials: "
             + ", ".join(f"{v} {k}" for k, v in counts.items()), ""]
    if best is not None:
        lines += [f"{heading}# Best trial {best.trial_id}" + (" (provisional)" if best.provisional else ""), "",
                  markdown_table(best_metrics_frame(best))]
    lines += [f"{heading}# Per category", "", _per_category(results, best)]
    if is_grid_study(results):
        table = ablation_table(results)
        lines += [f"{heading}# Ablation", ""]
        lines.append(markdown_table(ablation_frame(results, table)) if not table.empty
                     else "Not available because no trial has completed yet.\n")
        lines.append(f"Rule: {DIFFERENCE_RULE}.\n")
    lines += [f"{heading}# Trials", "", markdown_table(trials_frame(results), TRIAL_DECIMALS)]
    return "\n".join(lines)


def comparison_markdown(studies: Sequence[tuple[StudyResults, BestTrial | None]]) -> str:
    """Several studies: best means per study, per-category best of each study, then each study."""
    lines = ["# Comparison of studies", "", markdown_table(study_means_frame(studies))]
    for metric in PAPER_METRICS:
        matrix = best_of_studies_matrix(studies, metric)
        lines += [f"## {METRIC_LABELS[metric]} per category, best trial of each study (%)", ""]
        lines.append(markdown_table(matrix.T.reset_index(names="category")) if not matrix.empty
                     else "Not available because no study has a best trial yet.\n")
    for results, best in studies:
        lines.append(study_markdown(results, best, heading="##"))
    return "\n".join(lines)
