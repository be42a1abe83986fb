"""The report's tables as display frames (percent; "mean [95% CI]" strings), shared by the HTML and Markdown.

Metrics are fractions in the CSVs; every frame here shows them in percent like the paper's tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from study.protocol import (
    CATEGORY,
    COMPLETED,
    EPOCHS_DONE,
    ERROR,
    LOSS,
    METRIC_NAMES,
    N_SEEDS,
    SECONDS,
    SEEDS,
    STATUS,
    STATUSES,
    TRIAL_ID,
)
from study.report.baseline import BASELINE_NAME, StudyBaseline
from study.report.best import BestTrial, trial_per_category
from study.report.load import StudyResults
from study.report.paper import MVTEC_CATEGORIES, PAPER_METRICS, PERCENT, is_mvtec
from study.report.settings import LABEL, N_SEEDS_COLUMN, SEEDS_COLUMN, Settings, per_category_spread, row_interval
from study.report.stats import Interval, Spread

METRIC_LABELS = {
    "image_auroc": "Image AUROC",
    "pixel_auroc": "Pixel AUROC",
    "aupro": "AUPRO",
    "image_ap": "Image AP",
    "pixel_ap": "Pixel AP",
    "pixel_f1_max": "Pixel F1-max",
}
MISSING = "–"
MEAN_ROW = "Mean"
SPREAD_DECIMALS = 2
ONE_SEED = "1 seed, no interval"
# Column header of a "mean [interval]" cell.
WITH_CI = "mean [95% CI] (%)"


def percent(value: float) -> float:
    return value * PERCENT


def format_interval(interval: Interval) -> str:
    """``94.23 [92.10, 95.80]`` (mean and bootstrap interval, percent); ``94.23 (1 seed, no interval)``;
    ``–`` when there is no value."""
    if interval.n_seeds == 0 or math.isnan(interval.mean):
        return MISSING
    mean = f"{percent(interval.mean):.{SPREAD_DECIMALS}f}"
    if not interval.has_interval:
        return f"{mean} ({ONE_SEED})"
    return f"{mean} [{percent(interval.low):.{SPREAD_DECIMALS}f}, {percent(interval.high):.{SPREAD_DECIMALS}f}]"


def format_spread(spread: Spread) -> str:
    """``94.23 ± 0.38`` (mean ± t-based CI half width, percent); just the mean for one seed; ``–`` for none."""
    if spread.n == 0:
        return MISSING
    if spread.n == 1:
        return f"{percent(spread.mean):.{SPREAD_DECIMALS}f} ({ONE_SEED})"
    return f"{percent(spread.mean):.{SPREAD_DECIMALS}f} ± {percent(spread.half_width):.{SPREAD_DECIMALS}f}"


def format_std(std: float) -> str:
    return MISSING if std is None or math.isnan(std) else f"{percent(std):.{SPREAD_DECIMALS}f}"


def status_frame(results: StudyResults) -> pd.DataFrame:
    """One row: the number of trials per status and in total."""
    counts = results.status_counts()
    return pd.DataFrame([{**counts, "total": sum(counts.values())}], columns=[*STATUSES, "total"])


def best_settings(results: StudyResults, best: BestTrial) -> list[tuple[str, object]]:
    """(name, value) of every hyperparameter of the best trial, the varying (searched) ones first."""
    names = [*results.setting_params, *[c for c in results.param_columns if c not in results.setting_params]]
    return [(name, best.row[name]) for name in names]


def best_metrics_frame(best: BestTrial, baseline: StudyBaseline | None = None) -> pd.DataFrame:
    """Per metric: the best trial's value, its setting's mean [95% CI] and std over seeds, and the baseline."""
    rows = []
    for metric in METRIC_NAMES:
        interval = best.interval(metric)
        value = best.row.get(metric, math.nan)
        row: dict[str, object] = {"metric": METRIC_LABELS[metric], "best trial (%)": percent(float(value)),
                                  f"setting, {WITH_CI}": format_interval(interval),
                                  "std over seeds (pp)": format_std(interval.seed_std), "seeds (n)": interval.n_seeds}
        if baseline is not None:
            row[f"{BASELINE_NAME} (%)"] = percent(baseline.mean(metric))
        rows.append(row)
    return pd.DataFrame(rows)


def best_against_baseline_frame(best: BestTrial | None, baseline: StudyBaseline,
                                metrics: Sequence[str] = METRIC_NAMES) -> pd.DataFrame:
    """The best setting (mean [95% CI] over its seeds) and the baseline, one column per metric (percent),
    and the difference of their means (percentage points); the baseline alone while there is no best."""
    baseline_row: dict[str, object] = {"": BASELINE_NAME}
    for metric in metrics:
        base = baseline.mean(metric)
        baseline_row[METRIC_LABELS[metric]] = MISSING if math.isnan(base) else f"{percent(base):.{SPREAD_DECIMALS}f}"
    if best is None:
        return pd.DataFrame([baseline_row])
    label = f"best setting ({best.setting_label or 'trial ' + best.trial_id}; {best.n_seeds} seed(s))"
    if not best.has_setting:
        label = f"best trial {best.trial_id} ({best.row.get(STATUS)}; not a completed setting)"
    best_row: dict[str, object] = {"": label}
    difference: dict[str, object] = {"": "best − baseline (pp)"}
    for metric in metrics:
        interval = best.interval(metric)
        mean = interval.mean if best.has_setting else float(best.row.get(metric, math.nan))
        column = METRIC_LABELS[metric]
        best_row[column] = format_interval(interval) if best.has_setting else f"{percent(mean):.{SPREAD_DECIMALS}f}"
        gap = mean - baseline.mean(metric)
        difference[column] = MISSING if math.isnan(gap) else f"{percent(gap):+.{SPREAD_DECIMALS}f}"
    return pd.DataFrame([best_row, baseline_row, difference])


def best_per_category_frame(results: StudyResults, best: BestTrial,
                            baseline: StudyBaseline | None = None) -> tuple[pd.DataFrame, str]:
    """The paper's layout for the best trial: one row per category (and a Mean row) with image and pixel
    AUROC, then the other metrics, in percent; where its setting has several seeds, image/pixel AUROC mean
    ± t-based 95% CI over them per category; then the baseline's image/pixel AUROC."""
    own, source = trial_per_category(results, best.trial_id)
    if own.empty:
        return pd.DataFrame(), source
    frame = pd.DataFrame({"category": own[CATEGORY]})
    for metric in METRIC_NAMES:
        if metric in own.columns:
            frame[METRIC_LABELS[metric]] = own[metric].map(percent)
    mean = {"category": MEAN_ROW, **frame.drop(columns="category").mean().to_dict()}
    if best.n_seeds > 1:
        for metric in PAPER_METRICS:
            spreads = per_category_spread(best.settings, str(best.setting_key), metric, list(frame["category"]))
            column = f"{METRIC_LABELS[metric]} over {best.n_seeds} seeds, mean ± 95% CI"
            frame[column] = [format_spread(spreads[c]) for c in frame["category"]]
            mean[column] = format_interval(best.interval(metric))
    if baseline is not None and baseline.available:
        for metric in PAPER_METRICS:
            column = f"baseline {METRIC_LABELS[metric]}"
            frame[column] = [percent(baseline.category_value(c, metric)) for c in frame["category"]]
            mean[column] = percent(baseline.mean(metric))
    return pd.concat([frame, pd.DataFrame([mean])], ignore_index=True), source


def trials_frame(results: StudyResults) -> pd.DataFrame:
    """Every trial: id, status, hyperparameters, seeds, metrics (percent), epochs, seconds and error."""
    trials = results.trials
    columns = [TRIAL_ID, STATUS, *results.param_columns, *[c for c in (N_SEEDS, SEEDS) if c in trials.columns]]
    frame = trials[columns].copy()
    if N_SEEDS in frame.columns:
        frame[N_SEEDS] = frame[N_SEEDS].astype("Int64")
    for metric in METRIC_NAMES:
        if metric in trials.columns:
            frame[METRIC_LABELS[metric]] = trials[metric].map(percent)
    for extra in (LOSS, EPOCHS_DONE, SECONDS, ERROR):
        if extra in trials.columns:
            frame[extra] = trials[extra]
    if EPOCHS_DONE in frame.columns:
        frame[EPOCHS_DONE] = frame[EPOCHS_DONE].astype("Int64")
    return frame


def settings_frame(settings: Settings, metrics: Sequence[str]) -> pd.DataFrame:
    """One row per setting: its label, seeds, and per metric the mean [95% CI] and std over seeds (percent)."""
    rows = []
    for _, row in settings.table.iterrows():
        out: dict[str, object] = {"setting": row[LABEL], "seeds (n)": int(row[N_SEEDS_COLUMN]),
                                  "seeds": row[SEEDS_COLUMN]}
        for metric in metrics:
            interval = row_interval(row, metric)
            out[f"{METRIC_LABELS[metric]} {WITH_CI}"] = format_interval(interval)
            out[f"{METRIC_LABELS[metric]} std over seeds (pp)"] = format_std(interval.seed_std)
        rows.append(out)
    return pd.DataFrame(rows)


def ablation_frame(results: StudyResults, table: pd.DataFrame) -> pd.DataFrame:
    """The ablation rows: switches, seeds, mean [95% CI] and std over seeds of image/pixel AUROC, Table 3."""
    rows = []
    others = [p for p in results.setting_params if p not in ("use_ang", "use_ffm", "attention")]
    for _, row in table.iterrows():
        out: dict[str, object] = {"setting": row[LABEL], "ANG": _on(row["ang"]), "FFM": _on(row["ffm"]),
                                  "mixed attention": _on(row["mixed_attention"])}
        out.update({p: row[p] for p in others})
        out["seeds (n)"] = int(row[N_SEEDS_COLUMN])
        for metric in PAPER_METRICS:
            interval = row_interval(row, metric)
            label = METRIC_LABELS[metric]
            out[f"{label} {WITH_CI}"] = format_interval(interval)
            out[f"{label} std over seeds (pp)"] = format_std(interval.seed_std)
            out[f"{label} paper Table 3 (%)"] = row[f"paper_{metric}"]
        rows.append(out)
    return pd.DataFrame(rows)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def format_p(value: float) -> str:
    """A p-value with 3 significant digits (``<0.001`` below that), ``–`` when there is none."""
    if value is None or math.isnan(value):
        return MISSING
    return "<0.001" if value < 1e-3 else f"{value:.3g}"


def comparisons_frame(comparisons: pd.DataFrame, metrics: Sequence[str]) -> pd.DataFrame:
    """comparisons.csv for display: one row per one-switch pair and metric, differences in percentage points."""
    chosen = comparisons[comparisons["metric"].isin(list(metrics))]
    rows = []
    for _, row in chosen.iterrows():
        rows.append({"switch": row["parameter"], "A": row["setting_a"], "B": row["setting_b"],
                     "metric": METRIC_LABELS.get(row["metric"], row["metric"]), "pairs (n)": int(row["n_pairs"]),
                     "Δ mean B − A (pp)": percent(float(row["mean_difference"])), "p": format_p(row["p_value"]),
                     "p (Holm)": format_p(row["p_holm"]),
                     "P(B > A)": row["prob_improvement"], "significant": "yes" if row["significant"] else "no"})
    return pd.DataFrame(rows)


def effects_frame(effects: pd.DataFrame) -> pd.DataFrame:
    """The parameter effects against the seed spread (percentage points), with the verdict in words."""
    rows = []
    for _, row in effects.iterrows():
        verdict = row["within_spread"]
        rows.append({"parameter": row["parameter"], "measured": f"{row['how']} ({int(row['groups'])} group(s))",
                     "effect: range of setting means (pp)": percent(float(row["effect"])),
                     "seed-to-seed std (pp)": percent(float(row["seed_std"])),
                     "within the seed spread": ("undetermined" if verdict is None or pd.isna(verdict)
                                                else "yes: flagged" if verdict else "no"),
                     "note": row["note"]})
    return pd.DataFrame(rows)


def correlations_frame(correlations: pd.DataFrame) -> pd.DataFrame:
    """rung_correlations.csv for display."""
    return pd.DataFrame({"epoch": correlations["epoch"].astype(int),
                         "ASHA rung": correlations["asha_rung"].map(lambda v: "yes" if v else ""),
                         "trials (n)": correlations["n_trials"].astype(int),
                         "Spearman ρ": correlations["spearman"], "p": correlations["p_value"].map(format_p),
                         "note": correlations["note"]})


def display_names(studies: Sequence[tuple[StudyResults, BestTrial | None]]) -> list[str]:
    """Each study's name, with its folder added where two studies share a name."""
    names = [results.name for results, _ in studies]
    return [f"{name} ({results.folder})" if names.count(name) > 1 else name
            for name, (results, _) in zip(names, studies, strict=True)]


def study_means_frame(studies: Sequence[tuple[StudyResults, BestTrial | None]]) -> pd.DataFrame:
    """One row per study: trials, best trial, its setting and its means (best value and seed mean [CI])."""
    rows = []
    for name, (results, best) in zip(display_names(studies), studies, strict=True):
        counts = results.status_counts()
        row: dict[str, object] = {"study": name, "kind": results.kind,
                                  "status": results.study.get("status", MISSING),
                                  "trials (completed / all)": f"{counts[COMPLETED]} / {sum(counts.values())}",
                                  "best trial": best.trial_id if best else MISSING,
                                  "setting": ", ".join(f"{k}={v}" for k, v in best.row[results.setting_params].items())
                                  if best is not None and results.setting_params else MISSING}
        for metric in METRIC_NAMES:
            label = METRIC_LABELS[metric]
            row[f"{label} (%)"] = percent(float(best.row.get(metric, math.nan))) if best else math.nan
            if metric in PAPER_METRICS:
                row[f"{label} setting {WITH_CI}"] = format_interval(best.interval(metric)) if best else MISSING
        rows.append(row)
    return pd.DataFrame(rows)


def best_of_studies_matrix(studies: Sequence[tuple[StudyResults, BestTrial | None]], metric: str) -> pd.DataFrame:
    """Studies × categories: each study's best trial per category (percent)."""
    rows = {}
    names: list[str] = []  # categories in the order the studies list them
    for name, (results, best) in zip(display_names(studies), studies, strict=True):
        if best is None:
            continue
        own, _ = trial_per_category(results, best.trial_id)
        if not own.empty and metric in own.columns:
            rows[name] = own.set_index("category")[metric].map(percent)
            names += [c for c in own["category"] if c not in names]
    if not rows:
        return pd.DataFrame()
    order = [c for c in MVTEC_CATEGORIES if c in names] if is_mvtec(names) else names
    return pd.DataFrame(rows).T.reindex(columns=order)
