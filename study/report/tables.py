"""The report's tables as display frames (percent, "mean ± CI" strings), shared by the HTML and Markdown.

Metrics are fractions in the CSVs; every frame here shows them in percent like the paper's tables.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pandas as pd

from study.protocol import (
    COMPLETED,
    EPOCHS_DONE,
    ERROR,
    LOSS,
    METRIC_NAMES,
    SECONDS,
    SEED_COLUMN,
    STATUS,
    STATUSES,
    TRIAL_ID,
)
from study.report.load import StudyResults
from study.report.paper import MVTEC_CATEGORIES, PAPER_METRICS, PERCENT, is_mvtec
from study.report.stats import (
    SPREAD_FACTOR,
    BestTrial,
    Spread,
    group_spread,
    per_category_spread,
    trial_per_category,
)

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


def percent(value: float) -> float:
    return value * PERCENT


def format_spread(spread: Spread) -> str:
    """``94.23 ± 0.38`` (mean ± CI half width, percent); just the mean for one seed; ``–`` for none."""
    if spread.n == 0:
        return MISSING
    if spread.n == 1:
        return f"{percent(spread.mean):.{SPREAD_DECIMALS}f} (1 seed)"
    return f"{percent(spread.mean):.{SPREAD_DECIMALS}f} ± {percent(spread.half_width):.{SPREAD_DECIMALS}f}"


def format_std(spread: Spread) -> str:
    return MISSING if spread.n < 2 else f"{percent(spread.std):.{SPREAD_DECIMALS}f}"


def status_frame(results: StudyResults) -> pd.DataFrame:
    """One row: the number of trials per status and in total."""
    counts = results.status_counts()
    return pd.DataFrame([{**counts, "total": sum(counts.values())}], columns=[*STATUSES, "total"])


def best_settings(results: StudyResults, best: BestTrial) -> list[tuple[str, object]]:
    """(name, value) of every hyperparameter of the best trial, the varying (searched) ones first."""
    names = [*results.setting_params, *[c for c in results.param_columns if c not in results.setting_params]]
    return [(name, best.row[name]) for name in names]


def best_metrics_frame(best: BestTrial) -> pd.DataFrame:
    """Per metric: the best trial's value, and the mean ± 95% CI, std and count over its seed repeats."""
    rows = []
    for metric in METRIC_NAMES:
        spread = best.spread(metric)
        value = best.row.get(metric, math.nan)
        seeds = best.repeats[SEED_COLUMN].tolist() if SEED_COLUMN in best.repeats.columns else []
        rows.append({"metric": METRIC_LABELS[metric], "best trial (%)": percent(float(value)),
                     "mean over seeds ± 95% CI (%)": format_spread(spread), "std over seeds (pp)": format_std(spread),
                     "seeds (n)": spread.n, "seeds": ", ".join(str(s) for s in seeds)})
    return pd.DataFrame(rows)


def best_per_category_frame(results: StudyResults, best: BestTrial) -> tuple[pd.DataFrame, str]:
    """The paper's layout for the best trial: one row per category (and a Mean row) with image and pixel
    AUROC, then the other metrics, in percent; where seeds repeat, image/pixel AUROC mean ± CI over them."""
    own, source = trial_per_category(results, best.trial_id)
    if own.empty:
        return pd.DataFrame(), source
    frame = pd.DataFrame({"category": own["category"]})
    for metric in METRIC_NAMES:
        if metric in own.columns:
            frame[METRIC_LABELS[metric]] = own[metric].map(percent)
    mean = {"category": MEAN_ROW, **frame.drop(columns="category").mean().to_dict()}
    if len(best.repeats) > 1:
        trial_ids = best.repeats["trial_id"].tolist()
        for metric in PAPER_METRICS:
            spreads = per_category_spread(results, trial_ids, metric).set_index("category")
            column = f"{METRIC_LABELS[metric]} over {len(trial_ids)} seeds"
            frame[column] = [
                format_spread(Spread(int(spreads.loc[c, "n"]), spreads.loc[c, "mean"], math.nan,
                                     spreads.loc[c, "half_ci"])) if c in spreads.index else MISSING
                for c in frame["category"]
            ]
            mean[column] = format_spread(best.spread(metric))
    return pd.concat([frame, pd.DataFrame([mean])], ignore_index=True), source


def trials_frame(results: StudyResults) -> pd.DataFrame:
    """Every trial: id, status, hyperparameters, metrics (percent), epochs, seconds and error."""
    trials = results.trials
    columns = [TRIAL_ID, STATUS, *results.param_columns]
    frame = trials[columns].copy()
    for metric in METRIC_NAMES:
        if metric in trials.columns:
            frame[METRIC_LABELS[metric]] = trials[metric].map(percent)
    for extra in (LOSS, EPOCHS_DONE, SECONDS, ERROR):
        if extra in trials.columns:
            frame[extra] = trials[extra]
    if EPOCHS_DONE in frame.columns:
        frame[EPOCHS_DONE] = frame[EPOCHS_DONE].astype("Int64")
    return frame


def ablation_frame(results: StudyResults, table: pd.DataFrame) -> pd.DataFrame:
    """The ablation rows: switches, seeds, mean ± std and 95% CI of image/pixel AUROC, Table 3's values."""
    rows = []
    others = [p for p in results.setting_params if p not in ("use_ang", "use_ffm", "attention")]
    for _, row in table.iterrows():
        out: dict[str, object] = {"setting": row["label"], "ANG": _on(row["ang"]), "FFM": _on(row["ffm"]),
                                  "mixed attention": _on(row["mixed_attention"])}
        out.update({p: row[p] for p in others})
        out["seeds (n)"] = int(row["n_trials"])
        for metric in PAPER_METRICS:
            spread = group_spread(row, metric)
            label = METRIC_LABELS[metric]
            out[f"{label} mean (%)"] = percent(spread.mean)
            out[f"{label} std (pp)"] = format_std(spread)
            out[f"{label} 95% CI (%)"] = (MISSING if spread.n < 2 else
                                          f"[{percent(spread.ci_low):.2f}, {percent(spread.ci_high):.2f}]")
            out[f"{label} paper Table 3 (%)"] = row[f"paper_{metric}"]
        rows.append(out)
    return pd.DataFrame(rows)


def _on(flag: bool) -> str:
    return "on" if flag else "off"


def differences_frame(differences: pd.DataFrame) -> pd.DataFrame:
    """Δ mean, 2 × pooled std and the verdict of the difference rule per metric (percentage points)."""
    rows = []
    for _, row in differences.iterrows():
        out: dict[str, object] = {"setting": row["label"]}
        for metric in PAPER_METRICS:
            label = METRIC_LABELS[metric]
            out[f"Δ {label} (pp)"] = percent(row[f"{metric}_delta"])
            out[f"{label} {SPREAD_FACTOR:g} × pooled std (pp)"] = percent(SPREAD_FACTOR * row[f"{metric}_pooled_std"])
            verdict = row[f"{metric}_exceeds"]
            out[f"{label} beyond spread"] = ("undetermined" if verdict is None or pd.isna(verdict)
                                             else "yes" if verdict else "no")
        rows.append(out)
    return pd.DataFrame(rows)


def display_names(studies: Sequence[tuple[StudyResults, BestTrial | None]]) -> list[str]:
    """Each study's name, with its folder added where two studies share a name."""
    names = [results.name for results, _ in studies]
    return [f"{name} ({results.folder})" if names.count(name) > 1 else name
            for name, (results, _) in zip(names, studies, strict=True)]


def study_means_frame(studies: Sequence[tuple[StudyResults, BestTrial | None]]) -> pd.DataFrame:
    """One row per study: trials, best trial, its setting and its means (best value and seed mean ± CI)."""
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
                row[f"{label} over seeds (%)"] = format_spread(best.spread(metric)) if best else MISSING
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
