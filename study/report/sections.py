"""The report's sections as HTML fragments: each shows real data from the study or says why it cannot.

Order of a single-study report: summary, per-category comparison, search, trials, ablation, the paper,
pictures. A multi-study report adds an overview across studies and repeats each study's summary.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import optuna.visualization as optuna_plots
import pandas as pd

from study.protocol import FAILED, FINISHED_STATUSES, KIND_GRID, MODE_MAX, PENDING, RUNNING, STATUS
from study.report.ablation import (
    BASELINE_FLAGS,
    FULL_MODEL_FLAGS,
    ablation_differences,
    ablation_table,
    find_reference,
    is_grid_study,
)
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
from study.report.search import build_search_study, param_importances
from study.report.stats import (
    DIFFERENCE_RULE,
    BestTrial,
    group_spread,
    per_category_matrix,
    seed_groups,
    trial_per_category,
)
from study.report.tables import (
    MEAN_ROW,
    METRIC_LABELS,
    ablation_frame,
    best_metrics_frame,
    best_of_studies_matrix,
    best_per_category_frame,
    best_settings,
    differences_frame,
    display_names,
    percent,
    status_frame,
    study_means_frame,
    trials_frame,
)

# A heatmap of more rows than this shows the best ones only (by the study's metric).
MAX_HEATMAP_ROWS = 40
# Learning curves of more trials than this show the best ones only.
MAX_CURVES = 25
MAX_EXAMPLES_PER_CATEGORY = 6
HEATMAP_METRICS = PAPER_METRICS
DEFAULT_PARADIGM = "unified"
CI_RULE = ("mean ± t-based 95% confidence interval, t(0.975, n−1) · s / √n, over the completed trials whose "
           "settings are identical except for the seed")


def _pending_reason(results: StudyResults) -> str:
    counts = results.status_counts()
    total = sum(counts.values())
    if total == 0:
        return "trials.csv lists no trial yet"
    if counts[FAILED] == total:
        return f"all {total} trial(s) failed (their errors are in the summary)"
    return (f"no trial has finished yet ({counts[RUNNING]} running, {counts[PENDING]} pending, "
            f"{counts[FAILED]} failed)")


# ---------------------------------------------------------------------------------------------- summary
def summary_section(results: StudyResults, best: BestTrial | None, anchor: str = "summary") -> str:
    """The study's command, space, data, trial counts, best trial settings and metrics with CI over seeds."""
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
        parts.append(table(best_metrics_frame(best), sortable=False))
        repeats = len(best.repeats)
        parts.append(note(f"Metrics are means over categories (fractions shown as percent). Over seeds: {CI_RULE}"
                          f"; this setting has {repeats} completed seed(s)"
                          + ("" if repeats > 1 else ", so no interval") + "."))
    failed = results.trials[results.trials[STATUS] == FAILED]
    if not failed.empty and "error" in failed.columns:
        parts.append("<h3>Failed trials</h3>" + table(failed[["trial_id", "error"]].reset_index(drop=True)))
    return f'<section id="{esc(anchor)}"><h2>Summary: {esc(results.name)}</h2>{"".join(parts)}</section>'


# ----------------------------------------------------------------------------------------- per category
def _heatmap_rows(results: StudyResults) -> tuple[dict[str, list[str]], str]:
    """Row label -> trial ids: settings (seed means) for grids, the best trials for searches."""
    if results.kind == KIND_GRID:
        groups = seed_groups(results)
        return ({row["label"]: row["trial_ids"].split(", ") for _, row in groups.iterrows()},
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
    text = f"one row per finished trial, best first by {results.metric}"
    if len(ordered) > MAX_HEATMAP_ROWS:
        text += f" (the best {MAX_HEATMAP_ROWS} of {len(ordered)})"
    return rows, text


def per_category_section(page: Page, results: StudyResults, best: BestTrial | None) -> str:
    parts = []
    rows, how = _heatmap_rows(results)
    for metric in HEATMAP_METRICS:
        label = METRIC_LABELS[metric]
        matrix = per_category_matrix(results, metric, rows) * PERCENT
        if matrix.empty or matrix.isna().all().all():
            reason = (f"per_category.csv has no {label} values for the finished trials" if rows
                      else _pending_reason(results) if results.kind != KIND_GRID
                      else f"{_pending_reason(results)}; the grid's rows use completed trials")
            parts.append(not_available(f"{reason}, so there is no {label} heatmap"))
            continue
        parts.append(page.figure(heatmap(matrix, f"{label} per category (%): {how}", label)))
    parts.append("<h3>Best trial per category (the paper's layout)</h3>")
    if best is None:
        parts.append(not_available(f"{_pending_reason(results)}, so there is no best trial yet"))
    else:
        frame, source = best_per_category_frame(results, best)
        if frame.empty:
            parts.append(not_available(f"neither per_category.csv nor best/per_category.csv has rows for "
                                       f"trial {best.trial_id}"))
        else:
            parts.append(table(frame, decimals=1, pinned_last=1, text_columns=["category"]))
            parts.append(note(f"Trial {best.trial_id}, from {source}; percent; the {MEAN_ROW} row is the "
                              "unweighted mean over categories. Click a header to sort."))
    return f'<section id="per-category"><h2>Per-category comparison</h2>{"".join(parts)}</section>'


# ----------------------------------------------------------------------------------------------- search
def search_section(page: Page, results: StudyResults) -> str:
    parts = []
    search = build_search_study(results)
    target = METRIC_LABELS.get(results.metric, results.metric)
    if search.finished_count == 0:
        parts.append(not_available(f"{_pending_reason(results)}: the search plots need finished trials"))
    else:
        parts.append(note(f"{search.finished_count} finished trial(s) (completed, and stopped ones at their last "
                          f"reported value) rebuilt as an in-memory Optuna study; value: {results.metric}."))
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
                                                     f"Importance for {target} ({importance.evaluator})")))
            parts.append(note(importance.note))
        else:
            parts.append(not_available(importance.note))
    parts.append("<h3>Learning curves</h3>")
    parts.append(_learning_curves(page, results))
    return f'<section id="search"><h2>Search</h2>{"".join(parts)}</section>'


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


def trials_section(results: StudyResults) -> str:
    if results.trials.empty:
        return ('<section id="trials"><h2>Trials</h2>'
                + not_available("trials.csv lists no trial yet") + "</section>")
    return ('<section id="trials"><h2>Trials</h2>'
            + table(trials_frame(results), decimals=2, text_columns=["trial_id", "status", "error"])
            + note("Metrics in percent (trials.csv holds fractions); empty (–) while unknown.") + "</section>")


# --------------------------------------------------------------------------------------------- ablation
def ablation_section(page: Page, results: StudyResults) -> str:
    title = '<section id="ablation"><h2>Ablation</h2>'
    if not is_grid_study(results):
        return title + not_available(
            f"this is a {results.kind} study and its ablation switches (use_ang, use_ffm, attention) do not "
            "vary across trials, so there is no ablation table") + "</section>"
    table_rows = ablation_table(results)
    if table_rows.empty:
        return title + not_available(f"{_pending_reason(results)}; the ablation uses completed trials") \
            + "</section>"
    parts = [table(ablation_frame(results, table_rows), decimals=1, text_columns=["setting"])]
    parts.append(note("Ours: completed trials, mean over seeds, std and t-based 95% CI, in percent. Paper: Table 3 "
                      "(MVTec-AD, unified model, EfficientNet-b4), percent; ANG/FFM/mixed attention map to "
                      "use_ang, use_ffm and attention == \"mixed\". Table 3 lists 6 of the 8 switch settings."))
    series = {METRIC_LABELS[m]: ([percent(group_spread(r, m).mean) for _, r in table_rows.iterrows()],
                                 [percent(group_spread(r, m).half_width) for _, r in table_rows.iterrows()])
              for m in LEVELS.values()}
    paper = {f"paper {METRIC_LABELS[m]}": table_rows[f"paper_{m}"].tolist() for m in LEVELS.values()}
    parts.append(page.figure(spread_bars(table_rows["label"].tolist(), series,
                                         "Ablation: mean over seeds with 95% CI (bars) and the paper (diamonds), %",
                                         paper)))
    parts.append(f"<h3>Which differences exceed the seed-to-seed spread</h3>{note('Rule: ' + DIFFERENCE_RULE + '.')}")
    for flags, name in ((FULL_MODEL_FLAGS, "full model"), (BASELINE_FLAGS, "no-module baseline")):
        reference = find_reference(results, table_rows, flags, name)
        parts.append(f"<h3>Against the {esc(name)}</h3>")
        if reference.key is None:
            parts.append(not_available(reference.note))
            continue
        parts.append(note(f"Reference: {reference.label}. {reference.note}".strip()))
        differences = ablation_differences(table_rows, reference.key)
        if differences.empty:
            parts.append(not_available(f"the {name} is the only completed setting"))
        else:
            parts.append(table(differences_frame(differences), decimals=2, text_columns=["setting"]))
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
def overview_section(page: Page, studies: Sequence[tuple[StudyResults, BestTrial | None]]) -> str:
    """Each study's best trial means, a bar chart of them, and a best-of-each-study heatmap per category."""
    parts = [table(study_means_frame(studies), decimals=1, text_columns=["study", "setting", "best trial"])]
    parts.append(note(f"Best trial's own values, and over seeds the {CI_RULE}; percent."))
    with_best = [(name, b) for name, (_, b) in zip(display_names(studies), studies, strict=True) if b is not None]
    if with_best:
        series = {METRIC_LABELS[m]: ([percent(b.spread(m).mean) for _, b in with_best],
                                     [percent(b.spread(m).half_width) for _, b in with_best])
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
