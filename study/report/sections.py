"""The report's sections as HTML fragments: each shows real data from the study or says why it cannot.

Order of a single-study report: summary (the best setting beside the baseline), per-category comparison,
search (at one fidelity, with the rung correlations and the parameters whose effect stays within the seed
spread), settings and trials, ablation (with paired one-switch comparisons), the paper, pictures. A
multi-study report adds an overview across studies and repeats each study's summary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import optuna.visualization as optuna_plots
import pandas as pd

from study.protocol import (
    COMPARISONS_FILE,
    FAILED,
    FINISHED_STATUSES,
    KIND_GRID,
    MODE_MAX,
    PENDING,
    RUNG_CORRELATIONS_FILE,
    RUNNING,
    SEED_SEPARATOR,
    SETTINGS_FILE,
    STATUS,
)
from study.report.ablation import ABLATION_METRICS, ablation_table, is_grid_study
from study.report.baseline import BASELINE_NAME, StudyBaseline
from study.report.best import BestTrial, trial_per_category
from study.report.comparisons import RULE as COMPARISON_RULE
from study.report.derived import StudyNumbers
from study.report.fidelity import choose_fidelity
from study.report.figures import grouped_bars, heatmap, importance_bars, learning_curves, roc_figure, spread_bars
from study.report.html import Page, esc, image_tag, key_values, not_available, note, pre, table
from study.report.load import StudyResults
from study.report.paper import (
    LEVELS,
    OVERLAY_METHODS,
    PAPER_METRICS,
    PARADIGM_COLUMNS,
    PERCENT,
    is_mvtec,
    normalise_category,
    overlay_column,
    paper_averages,
    paper_overlay,
)
from study.report.search import MIN_TRIALS_FOR_IMPORTANCE, build_search_study, importance_by_rung, param_importances
from study.report.sensitivity import RULE as EFFECT_RULE
from study.report.sensitivity import is_flagged
from study.report.settings import CI_RULE, LABEL, TRIAL_IDS_COLUMN, per_category_matrix, row_interval
from study.report.tables import (
    MEAN_ROW,
    METRIC_LABELS,
    ablation_frame,
    best_against_baseline_frame,
    best_metrics_frame,
    best_of_studies_matrix,
    best_per_category_frame,
    best_settings,
    comparisons_frame,
    correlations_frame,
    display_names,
    effects_frame,
    percent,
    settings_frame,
    status_frame,
    study_means_frame,
    trials_frame,
)
from study.report.verdicts import verdict_rates

# A heatmap of more rows than this shows the best ones only (by the study's metric).
MAX_HEATMAP_ROWS = 40
# Learning curves of more trials than this show the best ones only.
MAX_CURVES = 25
MAX_EXAMPLES_PER_CATEGORY = 6
HEATMAP_METRICS = PAPER_METRICS
DEFAULT_PARADIGM = "unified"
# Metrics of the settings table (the study's own metric is added when it is another).
SETTINGS_METRICS = ("image_auroc", "pixel_auroc", "aupro")
CORRELATION_NOTE = (
    "Spearman's rank correlation between the metric at each evaluated epoch and the final metric, over the "
    "completed trials that reported that epoch. Under ASHA those are the survivors of every earlier rung, a "
    "selected group with a narrower range of values, so these correlations tend to understate how well an "
    "early epoch ranks all trials. A correlation near 1 at ASHA's rungs is the evidence that stopping there "
    f"is safe. Also written to {RUNG_CORRELATIONS_FILE}.")


def _pending_reason(results: StudyResults) -> str:
    counts = results.status_counts()
    total = sum(counts.values())
    if total == 0:
        return "trials.csv lists no trial yet"
    if counts[FAILED] == total:
        return f"all {total} trial(s) failed (their errors are in the summary)"
    return (f"no trial has finished yet ({counts[RUNNING]} running, {counts[PENDING]} pending, "
            f"{counts[FAILED]} failed)")


def _settings_metrics(results: StudyResults) -> list[str]:
    return list(dict.fromkeys([*SETTINGS_METRICS, results.metric] if results.metric in METRIC_LABELS
                              else SETTINGS_METRICS))


# ---------------------------------------------------------------------------------------------- summary
def baseline_block(best: BestTrial | None, baseline: StudyBaseline) -> str:
    """The best setting beside the nearest-neighbour patch baseline, or why either is missing."""
    parts = [f"<h3>Best setting beside the {esc(BASELINE_NAME)}</h3>"]
    if not baseline.available:
        parts.append(not_available(f"there is no baseline row: {baseline.reason}"))
        return "".join(parts)
    if best is None:
        parts.append(not_available("there is no best trial yet, so only the baseline is known"))
    parts.append(table(best_against_baseline_frame(best, baseline), sortable=False, text_columns=[""]))
    parts.append(note(f"Baseline: {baseline.description}; unweighted mean over categories, percent"
                      + (" (computed for this report)" if baseline.computed_now else "") + ". Best setting: "
                      + CI_RULE + "."))
    return "".join(parts)


def summary_section(numbers: StudyNumbers, anchor: str = "summary") -> str:
    """The study's command, space, data, trial counts, best trial settings and metrics with their interval
    over seeds, and the best setting beside the baseline."""
    results, best = numbers.results, numbers.best
    study = results.study
    versions = study.get("versions") or {}
    parts = [key_values([
        ("study", results.name), ("description", study.get("description", "")),
        ("status", study.get("status", "")), ("kind", results.kind),
        ("metric", f"{results.metric} ({results.mode})"), ("command", study.get("command", "")),
        ("data set", study.get("data_root", "")), ("categories", ", ".join(results.categories()) or "–"),
        ("preset", study.get("preset", "")), ("space file", study.get("space_file", "")),
        ("searched", ", ".join(study.get("searched") or []) or "–"),
        ("fixed", ", ".join(f"{k}={v}" for k, v in (study.get("fixed") or {}).items()) or "–"),
        ("samples", study.get("num_samples", "")),
        ("started / ended", f"{study.get('started_at') or '–'} / {study.get('ended_at') or '– (still running)'}"),
        ("git commit", study.get("git_commit", "")),
        ("versions", ", ".join(f"{k} {v}" for k, v in versions.items()) or "–"),
        ("results folder", str(results.folder)),
    ])]
    parts.append("<details><summary>search space (study.json)</summary>"
                 + pre(json.dumps(study.get("space", {}), indent=2, default=str)) + "</details>")
    parts.append("<h3>Trials by status</h3>" + table(status_frame(results), sortable=False))
    parts.append("<h3>Best trial</h3>")
    if best is None:
        parts.append(not_available(f"{_pending_reason(results)}, so there is no best trial yet"))
    else:
        if best.note:
            parts.append(note(best.note))
        parts.append(key_values([("trial", best.trial_id), ("status", best.row["status"]),
                                 *best_settings(results, best)]))
        parts.append(table(best_metrics_frame(best, numbers.baseline if numbers.baseline.available else None),
                           sortable=False))
        seeds = best.n_seeds
        parts.append(note(f"Metrics are means over categories (fractions shown as percent). The setting's "
                          f"column: {CI_RULE}. This setting has {seeds} completed seed(s)"
                          + (f" ({best.seeds.replace(SEED_SEPARATOR, ', ')})" if seeds else "")
                          + ("" if seeds > 1 else ", so no interval") + "."))
        rates = verdict_rates(results.best_dir)
        if rates is not None:
            parts.append("<h3>Verdicts of the best model</h3>" + table(rates[0], sortable=False) + note(rates[1]))
    parts.append(baseline_block(best, numbers.baseline))
    failed = results.trials[results.trials[STATUS] == FAILED]
    if not failed.empty and "error" in failed.columns:
        parts.append("<h3>Failed trials</h3>" + table(failed[["trial_id", "error"]].reset_index(drop=True)))
    return f'<section id="{esc(anchor)}"><h2>Summary: {esc(results.name)}</h2>{"".join(parts)}</section>'


# ----------------------------------------------------------------------------------------- per category
def _heatmap_rows(numbers: StudyNumbers) -> tuple[dict[str, list[str]], str]:
    """Row label -> trial ids: settings (seed means) for grids, the best trials for searches."""
    results = numbers.results
    if results.kind == KIND_GRID:
        table_rows = numbers.settings.table
        return ({row[LABEL]: str(row[TRIAL_IDS_COLUMN]).split(SEED_SEPARATOR) for _, row in table_rows.iterrows()},
                "one row per setting, averaged over its completed seeds")
    if results.metric not in results.trials.columns:
        return {}, ""
    finished = results.trials_with(FINISHED_STATUSES, results.metric)
    ordered = finished.sort_values(results.metric, ascending=results.mode != MODE_MAX)
    shown = ordered.head(MAX_HEATMAP_ROWS)
    label_params = results.setting_params
    rows = {}
    for _, row in shown.iterrows():
        setting = ", ".join(f"{p}={row[p]:.3g}" if isinstance(row[p], float) else f"{p}={row[p]}"
                            for p in label_params)
        rows[f"{row['trial_id']} ({setting})" if setting else str(row["trial_id"])] = [str(row["trial_id"])]
    text = f"one row per finished trial (seeds averaged), best first by {results.metric}"
    if len(ordered) > MAX_HEATMAP_ROWS:
        text += f" (the best {MAX_HEATMAP_ROWS} of {len(ordered)})"
    return rows, text


def per_category_section(page: Page, numbers: StudyNumbers) -> str:
    results, best, baseline = numbers.results, numbers.best, numbers.baseline
    parts = []
    rows, how = _heatmap_rows(numbers)
    for metric in HEATMAP_METRICS:
        label = METRIC_LABELS[metric]
        matrix = per_category_matrix(results, metric, rows) * PERCENT
        if matrix.empty or matrix.isna().all().all():
            reason = (f"per_category.csv has no {label} values for the finished trials" if rows
                      else _pending_reason(results) if results.kind != KIND_GRID
                      else f"{_pending_reason(results)}; the grid's rows use completed trials")
            parts.append(not_available(f"{reason}, so there is no {label} heatmap"))
            continue
        if baseline.available:
            values = {c: percent(baseline.category_value(c, metric)) for c in matrix.columns}
            matrix = pd.concat([matrix, pd.DataFrame([values], index=[BASELINE_NAME])])
        parts.append(page.figure(heatmap(matrix, f"{label} per category (%): {how}"
                                         + ("; last row: the baseline" if baseline.available else ""), label)))
    parts.append("<h3>Best trial per category (the paper's layout)</h3>")
    if best is None:
        parts.append(not_available(f"{_pending_reason(results)}, so there is no best trial yet"))
    else:
        frame, source = best_per_category_frame(results, best, baseline)
        if frame.empty:
            parts.append(not_available(f"neither per_category.csv nor best/per_category.csv has rows for "
                                       f"trial {best.trial_id}"))
        else:
            parts.append(table(frame, decimals=1, pinned_last=1, text_columns=["category"]))
            parts.append(note(f"Trial {best.trial_id}, from {source} (the mean over its seeds where it has several); "
                              f"percent; the {MEAN_ROW} row is the unweighted mean over categories. Per category, "
                              "the interval over seeds is t-based (only the seed varies there); the Mean row's is "
                              "the setting's bootstrap interval. Baseline columns: the "
                              f"{BASELINE_NAME}" + ("" if baseline.available else f" (none: {baseline.reason})")
                              + ". Click a header to sort."))
    return f'<section id="per-category"><h2>Per-category comparison</h2>{"".join(parts)}</section>'


# ----------------------------------------------------------------------------------------------- search
def search_section(page: Page, numbers: StudyNumbers) -> str:
    results = numbers.results
    parts = []
    fidelity, why = choose_fidelity(results, results.metric, MIN_TRIALS_FOR_IMPORTANCE)
    search = build_search_study(results, fidelity)
    target = METRIC_LABELS.get(results.metric, results.metric)
    if search.finished_count == 0:
        parts.append(not_available(f"{_pending_reason(results)}: the search plots need trials at one fidelity "
                                   "(completed trials, or one evaluated epoch)"))
    else:
        parts.append(note(f"One fidelity: the optimisation history, parallel coordinates, slice plots and "
                          f"importances below use {fidelity.describe(search.finished_count)}"
                          + (f" ({why})" if why else "") + f"; value: {results.metric}."))
        parts.append(page.figure(optuna_plots.plot_optimization_history(search.study, target_name=target)))
        if search.params:
            parts.append(page.figure(optuna_plots.plot_parallel_coordinate(
                search.study, params=search.params, target_name=target)))
            parts.append(page.figure(optuna_plots.plot_slice(search.study, params=search.params,
                                                             target_name=target)))
            sources = pd.DataFrame({"hyperparameter": list(search.sources),
                                    "distribution": [repr(search.distributions[p]) for p in search.sources],
                                    "from": list(search.sources.values())})
            parts.append(table(sources, sortable=False))
        else:
            parts.append(not_available("no searched hyperparameter varies across the trials, so there are no "
                                       "parallel coordinates or slice plots"))
        parts.append("<h3>Hyperparameter importance</h3>")
        importance = param_importances(search)
        if importance.values:
            parts.append(page.figure(importance_bars(importance.values,
                                                     f"Importance for {target} ({importance.evaluator}, "
                                                     f"{fidelity.label})")))
            parts.append(note(importance.note))
        else:
            parts.append(not_available(importance.note))
        by_rung = importance_by_rung(results)
        if len(by_rung) > 1:
            parts.append("<h3>Importance one fidelity at a time (ASHA's rungs)</h3>")
            parts.append(table(by_rung, decimals=2, sortable=False, text_columns=["fidelity", "evaluator", "note"]))
            parts.append(note("Each row ranks only the trials measured at that fidelity: the completed trials at "
                              "their final epoch, or every trial that reported an ASHA rung's epoch."))
    parts.append(_rung_correlations(numbers))
    parts.append(_effects(numbers))
    parts.append("<h3>Learning curves</h3>")
    parts.append(_learning_curves(page, results))
    return f'<section id="search"><h2>Search</h2>{"".join(parts)}</section>'


def _rung_correlations(numbers: StudyNumbers) -> str:
    title = "<h3>Does an early epoch predict the final one? Rank correlation per rung</h3>"
    correlations = numbers.correlations
    if correlations.empty:
        return title + not_available("history.csv has no evaluated epoch yet")
    if correlations["spearman"].isna().all():
        reasons = "; ".join(dict.fromkeys(correlations["note"].astype(str)))
        return (title + not_available(f"no rung has a rank correlation yet ({reasons})")
                + table(correlations_frame(correlations), decimals=3, sortable=False, text_columns=["note"]))
    return (title + table(correlations_frame(correlations), decimals=3, sortable=False, text_columns=["note"])
            + note(CORRELATION_NOTE))


def _effects(numbers: StudyNumbers) -> str:
    title = "<h3>Searched parameters whose effect stays within the seed-to-seed spread</h3>"
    effects = numbers.effects
    if effects.empty:
        return title + not_available("no searched parameter varies among the completed settings")
    flagged = effects[effects["within_spread"].map(is_flagged)]
    determined = effects["within_spread"].map(lambda v: v is not None and not pd.isna(v))
    if not flagged.empty:
        summary = (f"Flagged: {', '.join(flagged['parameter'])} (the effect on {numbers.results.metric} is no "
                   "larger than one seed's noise).")
    elif determined.any():
        summary = "No parameter is flagged."
    else:
        summary = "Nothing can be flagged until a completed setting has 2 or more seeds."
    return (title + table(effects_frame(effects), decimals=2, sortable=False,
                          text_columns=["parameter", "measured", "within the seed spread", "note"])
            + note(f"Rule: {EFFECT_RULE}. {summary}"))


def _learning_curves(page: Page, results: StudyResults) -> str:
    history = results.history
    if history.empty or results.metric not in history.columns:
        return not_available("history.csv has no per-epoch values yet")
    last = history.sort_values("epoch").groupby("trial_id")[results.metric].last()
    ordered = last.sort_values(ascending=results.mode != MODE_MAX).head(MAX_CURVES)
    status = results.trials.set_index("trial_id")["status"].to_dict() if not results.trials.empty else {}
    labels = {str(t): f"{t} ({status.get(t, '?')})" for t in ordered.index}
    curves = history.assign(**{results.metric: history[results.metric] * PERCENT})
    title = f"{results.metric} per epoch (%)" + (f", the best {MAX_CURVES} trials" if len(last) > MAX_CURVES else "")
    return page.figure(learning_curves(curves, results.metric, labels, title))


def trials_section(numbers: StudyNumbers) -> str:
    results, settings = numbers.results, numbers.settings
    title = '<section id="trials"><h2>Settings and trials</h2>'
    if results.trials.empty:
        return title + not_available("trials.csv lists no trial yet") + "</section>"
    parts = ["<h3>Settings (completed trials, seeds pooled)</h3>"]
    if settings.empty:
        parts.append(not_available(f"no trial has completed yet, so there is no setting ({SETTINGS_FILE} is "
                                   "empty)"))
    else:
        parts.append(table(settings_frame(settings, _settings_metrics(results)), decimals=2,
                           text_columns=["setting", "seeds"]))
        parts.append(note(f"{CI_RULE}. Percent. Also in {SETTINGS_FILE} (fractions, every metric)."))
    parts.append("<h3>Trials</h3>")
    parts.append(table(trials_frame(results), decimals=2, text_columns=["trial_id", "status", "error", "seeds"]))
    parts.append(note("Metrics in percent (trials.csv holds fractions; with repeats, a trial's metrics are the "
                      "means over its seeds); empty (–) while unknown."))
    return title + "".join(parts) + "</section>"


# --------------------------------------------------------------------------------------------- ablation
def ablation_section(page: Page, numbers: StudyNumbers) -> str:
    results = numbers.results
    title = '<section id="ablation"><h2>Ablation</h2>'
    if not is_grid_study(results):
        return title + not_available(
            f"this is a {results.kind} study and its ablation switches (use_ang, use_ffm, attention) do not "
            "vary across trials, so there is no ablation table") + "</section>"
    table_rows = ablation_table(results, numbers.settings)
    if table_rows.empty:
        return title + not_available(f"{_pending_reason(results)}; the ablation uses completed trials") \
            + "</section>"
    parts = [table(ablation_frame(results, table_rows), decimals=1, text_columns=["setting"])]
    parts.append(note(f"Ours: completed trials, {CI_RULE}; percent. Paper: Table 3 (MVTec-AD, unified model, "
                      "EfficientNet-b4), percent; ANG/FFM/mixed attention map to use_ang, use_ffm and attention == "
                      "\"mixed\". Table 3 lists 6 of the 8 switch settings."))
    intervals = {m: [row_interval(r, m) for _, r in table_rows.iterrows()] for m in LEVELS.values()}
    series = {METRIC_LABELS[m]: ([percent(i.mean) for i in values], [percent(i.low) for i in values],
                                 [percent(i.high) for i in values]) for m, values in intervals.items()}
    paper = {f"paper {METRIC_LABELS[m]}": table_rows[f"paper_{m}"].tolist() for m in LEVELS.values()}
    parts.append(page.figure(spread_bars(table_rows[LABEL].tolist(), series,
                                         "Ablation: mean over seeds with 95% CI (bars) and the paper (diamonds), %",
                                         paper)))
    parts.append("<h3>Paired comparisons: one switch at a time</h3>")
    comparisons = numbers.comparisons
    if comparisons.empty:
        parts.append(not_available("no two completed settings differ in exactly one parameter"))
    else:
        parts.append(table(comparisons_frame(comparisons, ABLATION_METRICS), decimals=2,
                           text_columns=["switch", "A", "B", "metric", "significant"]))
        parts.append(note(f"Rule: {COMPARISON_RULE}. Every metric is in {COMPARISONS_FILE}. The units of one seed "
                          "share that seed's training run, so they are not independent: read p-values as a ranking "
                          "of evidence more than as exact error rates."))
    return title + "".join(parts) + "</section>"


# ------------------------------------------------------------------------------------------- the paper
def _paradigm(results: StudyResults, best: BestTrial | None) -> str:
    if best is not None and "paradigm" in best.row.index and isinstance(best.row["paradigm"], str):
        return best.row["paradigm"]
    return str((results.study.get("fixed") or {}).get("paradigm", DEFAULT_PARADIGM))


def paper_section(page: Page, results: StudyResults, best: BestTrial | None) -> str:
    parts = []
    categories = results.categories()
    averages = paper_averages()
    averages_html = ("<h3>The paper's averages over MVTec-AD's 15 categories (AUROC %)</h3>"
                     + table(averages, decimals=1, sortable=False))
    if not categories:
        parts.append(not_available("the study lists no categories and per_category.csv has no rows yet"))
    elif not is_mvtec(categories):
        others = [c for c in categories if not is_mvtec([c])]
        parts.append(not_available(
            f"the categories ({', '.join(others)}) are not MVTec-AD's, so there is no per-category paper "
            "overlay; the paper's averages below are for context only"))
    elif best is None:
        parts.append(not_available(f"{_pending_reason(results)}, so there is no best trial to set beside the paper"))
    else:
        own, source = trial_per_category(results, best.trial_id)
        if own.empty:
            parts.append(not_available(f"trial {best.trial_id} has no per-category values"))
        else:
            overlay = paper_overlay(own)
            paradigm = _paradigm(results, best)
            parts.append(table(overlay, decimals=1, pinned_last=1, text_columns=["category"]))
            parts.append(note(
                f"Ours: trial {best.trial_id} ({source}), {paradigm} paradigm, so the like-for-like paper columns "
                f"are the '{paradigm}' ones. Paper: Tables 1 (image) and 2 (pixel), MAAE is the paper's own model "
                "(\"Ours\" there). The mean row averages the same categories as ours"
                + ("" if len(own) == 15 else f" ({len(own)} of 15), so it differs from the paper's stated averages")
                + "."))
            matched = paradigm if paradigm in PARADIGM_COLUMNS else DEFAULT_PARADIGM
            rows = overlay[overlay["category"] != "mean"]
            bars = {"ours": rows["ours image"].tolist(),
                    **{f"{m} (paper, {matched})": rows[overlay_column(m, 'image', matched)].tolist()
                       for m in OVERLAY_METHODS}}
            parts.append(page.figure(grouped_bars(rows["category"].tolist(), bars,
                                                  "Image AUROC per category: ours and the paper (%)")))
    parts.append(averages_html)
    return f'<section id="paper"><h2>Against the paper</h2>{"".join(parts)}</section>'


# --------------------------------------------------------------------------------------------- pictures
def pictures_section(page: Page, results: StudyResults, best: BestTrial | None) -> str:
    title = '<section id="pictures"><h2>Pictures of the best trial</h2>'
    if best is None:
        return title + not_available(f"{_pending_reason(results)}, so there is no best trial yet") + "</section>"
    if results.best_dir is None:
        return title + not_available(
            f"there is no best/ folder yet (the runner writes it for the study's best trial; the best so far is "
            f"{best.trial_id})") + "</section>"
    parts = []
    named = results.study.get("best_trial_id")
    if named is not None and str(named) != best.trial_id:
        parts.append(note(f"best/ holds trial {named}."))
    parts.append("<h3>Test images: image, ground truth, anomaly heatmap</h3>")
    parts.append(_examples(results))
    parts.append("<h3>Image-level ROC per category</h3>")
    scores_file = results.best_dir / "scores.csv"
    if not scores_file.is_file():
        parts.append(not_available("best/scores.csv does not exist"))
    else:
        scores = pd.read_csv(scores_file)
        scores["category"] = scores["category"].map(normalise_category)
        figure, notes = roc_figure(scores, results.categories() or sorted(scores["category"].unique()))
        parts.append(page.figure(figure) if figure is not None
                     else not_available("no category of best/scores.csv has both normal and defective images"))
        parts.extend(note(text) for text in notes)
    return title + "".join(parts) + "</section>"


def _examples(results: StudyResults) -> str:
    examples_dir = results.best_dir / "examples"
    examples_file = examples_dir / "examples.csv"
    if not examples_file.is_file():
        return not_available("best/examples/examples.csv does not exist (maae.examples.write_examples writes it)")
    examples = pd.read_csv(examples_file)
    if examples.empty:
        return not_available("best/examples/examples.csv lists no image")
    examples["category"] = examples["category"].map(normalise_category)
    parts = []
    order = results.categories() or list(dict.fromkeys(examples["category"]))
    for category in [c for c in order if c in set(examples["category"])]:
        rows = examples[examples["category"] == category].head(MAX_EXAMPLES_PER_CATEGORY)
        cards = []
        for _, row in rows.iterrows():
            images = "".join(image_tag(examples_dir / str(row[kind]), f"{kind} of {row['path']}")
                             if isinstance(row[kind], str) else f'<span class="na">no {kind}</span>'
                             for kind in ("image", "mask", "heatmap"))
            caption = f"{row['defect']} · label {row['label']} · score {float(row['score']):.4g}"
            cards.append(f'<div class="example">{images}<div>{esc(caption)}</div></div>')
        parts.append(f"<h4>{esc(category)}</h4><div class=\"examples\">{''.join(cards)}</div>")
    return "".join(parts)


# ---------------------------------------------------------------------------------------- several studies
def overview_section(page: Page, several: Sequence[StudyNumbers]) -> str:
    """Each study's best trial means, a bar chart of them, and a best-of-each-study heatmap per category."""
    studies = [(numbers.results, numbers.best) for numbers in several]
    parts = [table(study_means_frame(studies), decimals=1, text_columns=["study", "setting", "best trial"])]
    parts.append(note(f"Best trial's own values, and its setting's {CI_RULE}; percent."))
    with_best = [(name, b) for name, (_, b) in zip(display_names(studies), studies, strict=True) if b is not None]
    if with_best:
        series = {METRIC_LABELS[m]: ([percent(b.interval(m).mean) for _, b in with_best],
                                     [percent(b.interval(m).low) for _, b in with_best],
                                     [percent(b.interval(m).high) for _, b in with_best])
                  for m in LEVELS.values()}
        parts.append(page.figure(spread_bars([name for name, _ in with_best], series,
                                             "Best setting of each study: mean over seeds with 95% CI (%)")))
    for metric in HEATMAP_METRICS:
        matrix = best_of_studies_matrix(studies, metric)
        label = METRIC_LABELS[metric]
        if matrix.empty:
            parts.append(not_available(f"no study has a best trial with per-category {label} yet"))
        else:
            parts.append(page.figure(heatmap(matrix, f"{label} per category (%): best trial of each study", label)))
    missing = [r.name for r, b in studies if b is None]
    if missing:
        parts.append(note(f"No best trial yet: {', '.join(missing)}."))
    return f'<section id="overview"><h2>Studies compared</h2>{"".join(parts)}</section>'
