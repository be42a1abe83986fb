"""``comparison.md``: the report's key tables as Markdown, in the paper's layout (percent).

The best trial's metrics and its setting beside the baseline, per category image/pixel AUROC of the best
trial (beside the baseline, and the paper's MAAE for MVTec-AD), the settings with their intervals, the
ablation table with its paired one-switch comparisons for grid studies, the rung correlations, the
parameters within the seed spread, and the trials table. Several studies: each study's best means and a
per-category table of every study's best trial, then each study's tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from study.protocol import COMPARISONS_FILE, RUNG_CORRELATIONS_FILE, SETTINGS_FILE
from study.report.ablation import ABLATION_METRICS, ablation_table, is_grid_study
from study.report.baseline import BASELINE_NAME
from study.report.best import BestTrial, trial_per_category
from study.report.comparisons import RULE as COMPARISON_RULE
from study.report.derived import StudyNumbers
from study.report.load import StudyResults
from study.report.paper import OVERLAY_METHODS, PAPER_METRICS, is_mvtec, overlay_column, paper_overlay
from study.report.sensitivity import RULE as EFFECT_RULE
from study.report.settings import CI_RULE
from study.report.tables import (
    METRIC_LABELS,
    MISSING,
    ablation_frame,
    best_against_baseline_frame,
    best_metrics_frame,
    best_of_studies_matrix,
    best_per_category_frame,
    comparisons_frame,
    correlations_frame,
    effects_frame,
    settings_frame,
    study_means_frame,
    trials_frame,
)
from study.report.verdicts import verdict_rates

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


def _per_category(results: StudyResults, best: BestTrial | None, numbers: StudyNumbers) -> str:
    if best is None:
        return "Not available because no trial has finished yet.\n"
    frame, source = best_per_category_frame(results, best, numbers.baseline)
    if frame.empty:
        return f"Not available because trial {best.trial_id} has no per-category values.\n"
    columns = ["category", METRIC_LABELS["image_auroc"], METRIC_LABELS["pixel_auroc"]]
    columns += [c for c in frame.columns if c.startswith("baseline ")]
    paper_table = frame[columns].copy()
    own, _ = trial_per_category(results, best.trial_id)
    if is_mvtec(own["category"]):
        overlay = paper_overlay(own, OVERLAY_METHODS[:1])
        for level in ("image", "pixel"):
            column = overlay_column(OVERLAY_METHODS[0], level, "unified")
            paper_table[f"{OVERLAY_METHODS[0]} paper {level} (unified)"] = overlay[column].to_numpy()
    return (f"Best trial {best.trial_id} ({source}), AUROC in percent; the last row is the unweighted mean"
            + (f"; baseline columns: the {BASELINE_NAME}" if numbers.baseline.available else "") + ".\n\n"
            + markdown_table(paper_table))


def study_markdown(numbers: StudyNumbers, heading: str = "#") -> str:
    """The Markdown of one study: summary line, best metrics and the baseline, per category, settings,
    ablation and its paired comparisons, rung correlations, parameter effects, trials."""
    results, best, baseline = numbers.results, numbers.best, numbers.baseline
    counts = results.status_counts()
    lines = [f"{heading} Study {results.name}", "",
             f"Command: `{results.study.get('command', '')}`  ",
             f"Kind: {results.kind}; metric: {results.metric} ({results.mode}); trials: "
             + ", ".join(f"{v} {k}" for k, v in counts.items()), ""]
    if best is not None:
        lines += [f"{heading}# Best trial {best.trial_id}" + (" (provisional)" if best.provisional else ""), "",
                  markdown_table(best_metrics_frame(best, baseline if baseline.available else None)),
                  f"Setting: {CI_RULE}.", ""]
        rates = verdict_rates(results.best_dir)
        if rates is not None:
            lines += [f"{heading}# Verdicts of the best model", "", markdown_table(rates[0]), rates[1], ""]
    lines += [f"{heading}# Best setting beside the {BASELINE_NAME}", ""]
    lines.append(markdown_table(best_against_baseline_frame(best, baseline)) if baseline.available
                 else f"Not available because {baseline.reason}.\n")
    if baseline.available:
        lines.append(f"Baseline: {baseline.description}.\n")
    lines += [f"{heading}# Per category", "", _per_category(results, best, numbers)]
    metrics = list(dict.fromkeys(["image_auroc", "pixel_auroc", "aupro",
                                  *([results.metric] if results.metric in METRIC_LABELS else [])]))
    lines += [f"{heading}# Settings (completed trials, seeds pooled)", ""]
    lines.append(markdown_table(settings_frame(numbers.settings, metrics), TRIAL_DECIMALS)
                 if not numbers.settings.empty else "Not available because no trial has completed yet.\n")
    lines.append(f"{CI_RULE}. Every metric, as fractions: {SETTINGS_FILE}.\n")
    if is_grid_study(results):
        table = ablation_table(results, numbers.settings)
        lines += [f"{heading}# Ablation", ""]
        lines.append(markdown_table(ablation_frame(results, table)) if not table.empty
                     else "Not available because no trial has completed yet.\n")
        lines += [f"{heading}## Paired comparisons: one switch at a time", ""]
        lines.append(markdown_table(comparisons_frame(numbers.comparisons, ABLATION_METRICS), TRIAL_DECIMALS)
                     if not numbers.comparisons.empty
                     else "Not available because no two completed settings differ in exactly one parameter.\n")
        lines.append(f"Rule: {COMPARISON_RULE}. Every metric: {COMPARISONS_FILE}.\n")
    lines += [f"{heading}# Rank correlation of each evaluated epoch with the final one", ""]
    lines.append(markdown_table(correlations_frame(numbers.correlations), TRIAL_DECIMALS)
                 if not numbers.correlations.empty else "Not available because history.csv has no evaluation yet.\n")
    lines.append(f"Over the completed trials that reported the epoch; also in {RUNG_CORRELATIONS_FILE}.\n")
    lines += [f"{heading}# Searched parameters against the seed-to-seed spread", ""]
    lines.append(markdown_table(effects_frame(numbers.effects), TRIAL_DECIMALS) if not numbers.effects.empty
                 else "Not available because no searched parameter varies among the completed settings.\n")
    lines.append(f"Rule: {EFFECT_RULE}.\n")
    lines += [f"{heading}# Trials", "", markdown_table(trials_frame(results), TRIAL_DECIMALS)]
    return "\n".join(lines)


def comparison_markdown(several: Sequence[StudyNumbers]) -> str:
    """Several studies: best means per study, per-category best of each study, then each study."""
    studies = [(numbers.results, numbers.best) for numbers in several]
    lines = ["# Comparison of studies", "", markdown_table(study_means_frame(studies))]
    for metric in PAPER_METRICS:
        matrix = best_of_studies_matrix(studies, metric)
        lines += [f"## {METRIC_LABELS[metric]} per category, best trial of each study (%)", ""]
        lines.append(markdown_table(matrix.T.reset_index(names="category")) if not matrix.empty
                     else "Not available because no study has a best trial yet.\n")
    for numbers in several:
        lines.append(study_markdown(numbers, heading="##"))
    return "\n".join(lines)
