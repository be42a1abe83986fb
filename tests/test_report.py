"""The report's aggregation (seed repeats, CIs, paper overlay, ablation rule) and report writing on full and
partial synthetic study folders (tests/fixtures_report.py)."""

from __future__ import annotations

import hashlib
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from fixtures_report import (
    EMBEDDED_CATEGORIES,
    TrialSpec,
    embedded_images,
    external_references,
    grid_spec,
    grid_study,
    search_spec,
    search_study,
    write_study,
)
from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
from scipy import stats

from maae.errors import DataError
from study.aggregate import (
    BASELINE_FLAGS,
    FULL_MODEL_FLAGS,
    SPREAD_FACTOR,
    Spread,
    ablation_differences,
    ablation_table,
    best_trial,
    exceeds_spread,
    find_reference,
    is_grid_study,
    load_results,
    mean_ci,
    per_category_matrix,
    pooled_std,
    seed_groups,
)
from study.report import main, write_report
from study.report_paper import (
    MVTEC_CATEGORIES,
    REFERENCE_DIR,
    is_mvtec,
    normalise_category,
    overlay_column,
    paper_overlay,
)
from study.report_search import (
    build_search_study,
    distribution_from_space,
    find_space_entry,
    infer_distributions,
    param_importances,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_REFERENCE = REPO_ROOT.parent / "shared" / "reference"


def hand_ci(values: list[float]) -> tuple[float, float]:
    """Mean and t-based 95% half width, written out."""
    array = np.asarray(values, dtype=float)
    n = len(array)
    s = math.sqrt(((array - array.mean()) ** 2).sum() / (n - 1))
    return float(array.mean()), float(stats.t.ppf(0.975, n - 1) * s / math.sqrt(n))


def file_hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# ----------------------------------------------------------------------------------------------- statistics
def test_mean_ci_matches_t_interval_by_hand():
    values = [0.91, 0.935, 0.962, 0.944]
    spread = mean_ci(values + [float("nan")])  # NaN (unknown) values are left out
    mean, half = hand_ci(values)
    assert spread.n == 4
    assert spread.mean == pytest.approx(mean)
    assert spread.std == pytest.approx(np.std(values, ddof=1))
    assert spread.half_width == pytest.approx(half)
    interval = stats.t.interval(0.95, 3, loc=mean, scale=stats.sem(values))
    assert (spread.ci_low, spread.ci_high) == pytest.approx(interval)


def test_mean_ci_with_one_or_no_value_has_no_interval():
    one = mean_ci([0.9])
    assert one.n == 1 and one.mean == 0.9 and math.isnan(one.half_width) and math.isnan(one.std)
    none = mean_ci([float("nan")])
    assert none.n == 0 and math.isnan(none.mean)


def test_difference_rule_uses_twice_the_pooled_std():
    a = Spread(3, 0.90, 0.01, math.nan)
    far = Spread(3, 0.93, 0.01, math.nan)  # |Δ| 0.03 > 2 × 0.01
    near = Spread(3, 0.915, 0.01, math.nan)  # |Δ| 0.015 < 2 × 0.01
    assert pooled_std(a, far) == pytest.approx(0.01)
    assert exceeds_spread(far, a) is True
    assert exceeds_spread(near, a) is False
    unequal = Spread(5, 0.95, 0.02, math.nan)
    assert pooled_std(a, unequal) == pytest.approx(math.sqrt((2 * 0.01**2 + 4 * 0.02**2) / 6))
    assert exceeds_spread(Spread(1, 0.99, math.nan, math.nan), a) is None  # one seed: undetermined
    assert SPREAD_FACTOR == 2.0


# ------------------------------------------------------------------------------------------- seed repeats
def test_seed_groups_merge_settings_that_differ_only_in_seed(tmp_path):
    results = load_results(grid_study(tmp_path))
    groups = seed_groups(results)
    assert len(groups) == 6
    assert (groups["n_trials"] == 3).all()
    assert set(groups["seeds"]) == {"0, 1, 2"}
    full = groups[(groups["use_ang"]) & (groups["use_ffm"]) & (groups["attention"] == "mixed")].iloc[0]
    trials = pd.read_csv(tmp_path / "ablation" / "trials.csv")
    mine = trials[trials["use_ang"] & trials["use_ffm"] & (trials["attention"] == "mixed")]
    mean, half = hand_ci(mine["image_auroc"].tolist())
    assert full["image_auroc_mean"] == pytest.approx(mean)
    assert full["image_auroc_half_ci"] == pytest.approx(half)
    assert full["trial_ids"] == ", ".join(mine["trial_id"])


def test_seed_groups_use_completed_trials_only(tmp_path):
    results = load_results(search_study(tmp_path))
    groups = seed_groups(results)
    assert groups["n_trials"].tolist() == [3, 1, 1, 1, 1]
    listed = ", ".join(groups["trial_ids"])
    for unfinished in ("ang_stop", "ang_fail", "ang_run", "ang_wait"):
        assert unfinished not in listed


def test_best_trial_is_study_json_choice_with_its_seed_repeats(tmp_path):
    results = load_results(search_study(tmp_path))
    best = best_trial(results)
    assert best.trial_id == results.study["best_trial_id"] and not best.provisional
    assert sorted(best.repeats["trial_id"]) == ["ang_s0", "ang_s1", "ang_s2"]
    mean, half = hand_ci(best.repeats["image_auroc"].tolist())
    assert best.spread("image_auroc").mean == pytest.approx(mean)
    assert best.spread("image_auroc").half_width == pytest.approx(half)


def test_provisional_best_ignores_running_trials(tmp_path):
    results = load_results(write_study(tmp_path, search_spec(best_trial_id=None, with_best=False,
                                                             status="running")))
    best = best_trial(results)
    trials = pd.read_csv(tmp_path / "ang" / "trials.csv")
    finished = trials[trials["status"].isin(["completed", "stopped"])]
    assert trials.loc[trials["image_auroc"].idxmax(), "status"] == "running"  # a running trial leads...
    assert best.trial_id == finished.loc[finished["image_auroc"].idxmax(), "trial_id"]  # ...but is not best
    assert best.provisional and "Provisional" in best.note


def test_no_best_trial_while_nothing_finished(tmp_path):
    trials = [TrialSpec("t_run", "running", {"seed": 0}, has_metrics=False),
              TrialSpec("t_wait", "pending", {"seed": 1}, has_metrics=False),
              TrialSpec("t_fail", "failed", {"seed": 2}, error="ValueError: boom")]
    spec = search_spec(trials=trials, best_trial_id=None, with_best=False, status="running")
    assert best_trial(load_results(write_study(tmp_path, spec))) is None


# ------------------------------------------------------------------------------------------------ paper
@pytest.mark.parametrize("name", ["Metal Nut", "metal_nut", " metal-nut ", "METAL NUT"])
def test_category_names_are_normalised(name):
    assert normalise_category(name) == "metal_nut"


def test_mvtec_detection():
    assert is_mvtec(["Metal Nut", "carpet"])
    assert is_mvtec(MVTEC_CATEGORIES)
    assert not is_mvtec(["carpet", "brick"])
    assert not is_mvtec([])


def test_paper_overlay_joins_normalised_names_with_unified_and_separate_columns():
    ours = pd.DataFrame({"category": ["Metal Nut", "carpet"], "image_auroc": [0.95, 0.99],
                         "pixel_auroc": [0.90, 0.97]})
    overlay = paper_overlay(ours).set_index("category")
    # Values as printed in the paper's Tables 1 and 2 (unified / separate).
    assert overlay.loc["metal_nut", overlay_column("MAAE", "image", "unified")] == 99.8
    assert overlay.loc["metal_nut", overlay_column("UniAD", "image", "unified")] == 99.2
    assert overlay.loc["metal_nut", overlay_column("UniAD", "image", "separate")] == 99.0
    assert overlay.loc["carpet", overlay_column("MAAE", "pixel", "unified")] == 98.6
    assert overlay.loc["carpet", overlay_column("MAAE", "pixel", "separate")] == 97.8
    assert overlay.loc["metal_nut", "ours image"] == pytest.approx(95.0)  # fractions shown as percent
    assert overlay.loc["mean", "ours pixel"] == pytest.approx(93.5)
    assert overlay.loc["mean", overlay_column("MAAE", "image", "unified")] == pytest.approx((99.8 + 100.0) / 2)


@pytest.mark.skipif(not SHARED_REFERENCE.is_dir(), reason="the team's shared reference folder is not here")
def test_package_reference_tables_are_the_shared_ones():
    for name in ("mvtec_paper_auroc.csv", "mvtec_paper_ablation.csv"):
        assert (REFERENCE_DIR / name).read_bytes() == (SHARED_REFERENCE / name).read_bytes()


# ---------------------------------------------------------------------------------------------- ablation
def test_ablation_table_maps_switches_onto_table_3(tmp_path):
    results = load_results(grid_study(tmp_path))
    assert is_grid_study(results)
    table = ablation_table(results).set_index(["ang", "ffm", "mixed_attention"])
    assert table.loc[(True, True, True), "paper_image_auroc"] == 97.2
    assert table.loc[(True, True, True), "paper_pixel_auroc"] == 96.9
    assert table.loc[(False, False, False), "paper_image_auroc"] == 76.0
    assert table.loc[(True, False, True), "paper_pixel_auroc"] == 96.8


def test_ablation_differences_against_full_model_and_baseline(tmp_path):
    results = load_results(grid_study(tmp_path))
    table = ablation_table(results)
    full = find_reference(results, table, FULL_MODEL_FLAGS, "full model")
    baseline = find_reference(results, table, BASELINE_FLAGS, "no-module baseline")
    assert full.key is not None and baseline.key is not None
    differences = ablation_differences(table, full.key).set_index("label")
    row = differences.loc["use_ang=False, use_ffm=False, attention=spatial"]
    groups = table.set_index("label")
    a = groups.loc["use_ang=False, use_ffm=False, attention=spatial"]
    b = groups.loc["use_ang=True, use_ffm=True, attention=mixed"]
    assert row["image_auroc_delta"] == pytest.approx(a["image_auroc_mean"] - b["image_auroc_mean"])
    pooled = math.sqrt((2 * a["image_auroc_std"] ** 2 + 2 * b["image_auroc_std"] ** 2) / 4)
    assert row["image_auroc_pooled_std"] == pytest.approx(pooled)
    assert bool(row["image_auroc_exceeds"]) == bool(abs(row["image_auroc_delta"]) > 2 * pooled)
    assert len(ablation_differences(table, baseline.key)) == 5


def test_differences_within_seed_spread_are_not_flagged(tmp_path):
    """Two full-model settings whose lambda_ang differs by a hair: the same up to seed noise."""
    trials = []
    for lam in (0.6, 0.61):
        for seed in (0, 1, 2, 3):
            trials.append(TrialSpec(f"lam{lam}_s{seed}", "completed", {"use_ang": True, "use_ffm": True,
                                                                       "attention": "mixed", "lambda_ang": lam,
                                                                       "seed": seed}))
    results = load_results(write_study(tmp_path, grid_spec(trials=trials)))
    table = ablation_table(results)
    full = find_reference(results, table, FULL_MODEL_FLAGS, "full model")
    assert "2 settings" in full.note  # both rows have the full model's switches; the best is the reference
    differences = ablation_differences(table, full.key)
    assert differences["image_auroc_exceeds"].tolist() == [False]
    missing = find_reference(results, table, BASELINE_FLAGS, "no-module baseline")
    assert missing.key is None and "no completed setting" in missing.note


def test_per_category_matrix_averages_over_a_settings_seeds(tmp_path):
    results = load_results(grid_study(tmp_path))
    ids = ["grid_05_s0", "grid_05_s1", "grid_05_s2"]
    matrix = per_category_matrix(results, "pixel_auroc", {"full": ids})
    raw = pd.read_csv(tmp_path / "ablation" / "per_category.csv")
    expected = raw[raw["trial_id"].isin(ids) & (raw["category"] == "Metal Nut")]["pixel_auroc"].mean()
    assert list(matrix.columns) == ["carpet", "bottle", "cable", "metal_nut"]  # the paper's order
    assert matrix.loc["full", "metal_nut"] == pytest.approx(expected)


# ------------------------------------------------------------------------------------------------ search
def test_distributions_come_from_the_space_else_from_values(tmp_path):
    results = load_results(search_study(tmp_path))
    distributions, sources = infer_distributions(results, ["noise_intensity", "lambda_ang", "attention"])
    assert distributions["noise_intensity"] == FloatDistribution(0.1, 2.0)
    assert distributions["lambda_ang"] == FloatDistribution(0.05, 2.0, log=True)
    assert distributions["attention"] == CategoricalDistribution(["mixed", "spatial"])
    assert set(sources.values()) == {"study.json space"}
    bare = load_results(write_study(tmp_path / "bare", search_spec(space={})))
    distributions, sources = infer_distributions(bare, ["noise_intensity", "attention"])
    values = bare.trials["noise_intensity"]
    assert distributions["noise_intensity"] == FloatDistribution(values.min(), values.max())
    assert distributions["attention"] == CategoricalDistribution(["mixed", "spatial"])
    assert all(source.startswith("trial values") for source in sources.values())


def test_importances_on_finished_trials(tmp_path):
    search = build_search_study(load_results(search_study(tmp_path)))
    assert search.finished_count == 8  # 7 completed + 1 stopped
    importance = param_importances(search)
    assert importance.evaluator == "fANOVA"
    assert set(importance.values) == {"noise_intensity", "lambda_ang", "attention"}
    assert sum(importance.values.values()) == pytest.approx(1.0)


def test_importances_skipped_with_a_reason_when_too_few_trials(tmp_path):
    one = [TrialSpec("only", "completed", {"noise_intensity": 1.0, "lambda_ang": 0.6, "attention": "mixed",
                                           "seed": 0})]
    importance = param_importances(build_search_study(load_results(write_study(tmp_path, search_spec(trials=one)))))
    assert importance.values == {} and "1 finished trial" in importance.note


# ------------------------------------------------------------------------------------------------- loading
def test_loading_names_the_bad_file(tmp_path):
    with pytest.raises(DataError, match="study.json"):
        load_results(tmp_path)
    folder = search_study(tmp_path)
    trials = pd.read_csv(folder / "trials.csv")
    trials.loc[0, "status"] = "exploded"
    trials.to_csv(folder / "trials.csv", index=False)
    with pytest.raises(DataError, match=r"trials\.csv: column 'status' has exploded"):
        load_results(folder)


# ------------------------------------------------------------------------------------------------ reports
def _sections(text: str) -> dict[str, str]:
    return dict(re.findall(r'<section id="([^"]+)">(.*?)</section>', text, flags=re.S))


def test_full_report_is_offline_and_shows_every_section(tmp_path):
    folder = grid_study(tmp_path)
    before = file_hashes(folder)
    out = write_report(folder)
    assert out == folder / "report.html"
    text = out.read_text(encoding="utf-8")
    assert external_references(text) == []
    assert text.count("data-target=\"plot-") >= 8  # heatmaps, search plots, ablation, paper, ROC
    images = embedded_images(text)
    assert len(images) == 4 * 2 * 3  # 4 categories × 2 examples × image, mask, heatmap
    assert all(src.startswith("data:image/png;base64,") for src in images)
    plotly_scripts = [s for s in re.findall(r"<script>(.*?)</script>", text, flags=re.S) if "Plotly" in s and
                      len(s) > 1_000_000]
    assert len(plotly_scripts) == 1  # plotly.js is inlined once
    sections = _sections(text)
    assert set(sections) == {"summary", "per-category", "search", "trials", "ablation", "paper", "pictures"}
    assert "Not available" not in sections["ablation"] and "Table 3" in sections["ablation"]
    assert "97.2" in sections["ablation"]  # the paper's full model
    assert "99.8" in sections["paper"]  # MAAE's metal_nut image AUROC beside ours
    after = file_hashes(folder)
    assert set(after) - set(before) == {"report.html", "comparison.md"}
    assert {k: after[k] for k in before} == before  # the CSVs and best/ are only read


def test_summary_shows_the_seed_interval_of_the_best_setting(tmp_path):
    folder = search_study(tmp_path)
    results = load_results(folder)
    best = best_trial(results)
    mean, half = hand_ci(best.repeats["image_auroc"].tolist())
    text = write_report(folder).read_text(encoding="utf-8")
    assert f"{100 * mean:.2f} ± {100 * half:.2f}" in _sections(text)["summary"]


def test_search_report_notes_missing_ablation_and_paper_overlay(tmp_path):
    spec = search_spec(trials=[t for t in search_spec().trials])
    for trial in spec.trials:  # a pure search: attention fixed, so no switch varies
        trial.params["attention"] = "mixed"
    sections = _sections(write_report(write_study(tmp_path, spec)).read_text(encoding="utf-8"))
    assert "Not available because this is a search study" in sections["ablation"]
    assert "are not MVTec-AD" in sections["paper"] and ", ".join(EMBEDDED_CATEGORIES) in sections["paper"]
    assert "97.2" in sections["paper"]  # the paper's averages, for context


def test_report_of_a_running_study_without_best(tmp_path):
    trials = [TrialSpec("t_run", "running", {"noise_intensity": 1.0, "seed": 0}),
              TrialSpec("t_wait", "pending", {"noise_intensity": 0.5, "seed": 0}, has_metrics=False)]
    spec = search_spec(trials=trials, best_trial_id=None, with_best=False, status="running")
    folder = write_study(tmp_path, spec)
    sections = _sections(write_report(folder).read_text(encoding="utf-8"))
    assert "no trial has finished yet (1 running, 1 pending, 0 failed)" in sections["summary"]
    for name in ("per-category", "search", "pictures", "paper"):
        assert "Not available because" in sections[name], name
    assert "t_run" in sections["trials"]
    assert "t_run (running)" in sections["search"]  # its learning curve is already drawn
    assert (folder / "comparison.md").is_file()


def test_report_when_every_trial_failed(tmp_path):
    trials = [TrialSpec(f"f{i}", "failed", {"noise_intensity": 0.5 + i, "seed": 0}, error=f"RuntimeError: {i}")
              for i in range(2)]
    folder = write_study(tmp_path, search_spec(trials=trials, best_trial_id=None, with_best=False))
    sections = _sections(write_report(folder).read_text(encoding="utf-8"))
    assert "all 2 trial(s) failed" in sections["summary"]
    assert "RuntimeError: 1" in sections["summary"]


def test_report_of_a_single_trial(tmp_path):
    one = [TrialSpec("only", "completed", {"use_ang": True, "use_ffm": True, "attention": "mixed", "seed": 0})]
    folder = write_study(tmp_path, grid_spec(trials=one))
    sections = _sections(write_report(folder).read_text(encoding="utf-8"))
    assert "(1 seed)" in sections["summary"] and "so no interval" in sections["summary"]
    assert "1 finished trial" in sections["search"]
    assert "the full model is the only completed setting" in sections["ablation"]
    assert "no completed setting has ANG=off, FFM=off, mixed attention=off" in sections["ablation"]


def test_report_before_the_first_trial(tmp_path):
    folder = write_study(tmp_path, search_spec(trials=[], best_trial_id=None, with_best=False, status="running"))
    (folder / "trials.csv").unlink()
    (folder / "per_category.csv").unlink()
    (folder / "history.csv").unlink()
    sections = _sections(write_report(folder).read_text(encoding="utf-8"))
    assert "trials.csv lists no trial yet" in sections["trials"]


def test_comparison_of_several_studies(tmp_path):
    grid, search = grid_study(tmp_path), search_study(tmp_path)
    out = write_report(grid, [search])
    assert out == grid / "comparison.html"
    text = out.read_text(encoding="utf-8")
    assert external_references(text) == []
    sections = _sections(text)
    assert set(sections) == {"overview", "summary-0", "summary-1"}
    assert "ablation" in sections["overview"] and "ang" in sections["overview"]
    markdown = (grid / "comparison-studies.md").read_text(encoding="utf-8")
    assert "| category | ablation | ang |" in markdown
    assert "## Study ablation" in markdown and "## Study ang" in markdown
    assert not (grid / "comparison.md").exists()  # the single-study Markdown is not overwritten


def test_markdown_has_the_papers_layout(tmp_path):
    folder = grid_study(tmp_path)
    write_report(folder)
    markdown = (folder / "comparison.md").read_text(encoding="utf-8")
    results = load_results(folder)
    best = best_trial(results)
    raw = pd.read_csv(folder / "per_category.csv")
    row = raw[(raw["trial_id"] == best.trial_id) & (raw["category"] == "Metal Nut")].iloc[0]
    assert (f"| metal_nut | {100 * row['image_auroc']:.1f} | {100 * row['pixel_auroc']:.1f} | 99.8 | 95.8 |"
            in markdown)
    assert "## Ablation" in markdown and "## Trials" in markdown


def test_command_line(tmp_path):
    folder = search_study(tmp_path)
    out = tmp_path / "custom.html"
    done = subprocess.run([sys.executable, "study/report.py", str(folder), "--out", str(out)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == str(out) and out.is_file() and (tmp_path / "custom.md").is_file()
    assert main([str(tmp_path / "missing")]) == 2


def test_space_entries_of_the_space_file_schema():
    space = {"fixed": {"depth": 6}, "search": {"depth": {"type": "int", "low": 2, "high": 8}},
             "grid": {"use_ang": [True, False]}}
    assert find_space_entry(space, "depth") == {"type": "int", "low": 2, "high": 8}
    assert distribution_from_space(find_space_entry(space, "depth")) == IntDistribution(2, 8)
    assert distribution_from_space(find_space_entry(space, "use_ang")) == CategoricalDistribution([True, False])
    assert distribution_from_space({"type": "float", "low": 1e-4, "high": 1e-2, "log": True}) == FloatDistribution(
        1e-4, 1e-2, log=True)
    assert distribution_from_space(6) is None  # a fixed value states no distribution


def test_multi_objective_study_is_judged_by_its_first_metric(tmp_path):
    folder = write_study(tmp_path, search_spec(metric="pixel_auroc", mode="min"))
    study_file = folder / "study.json"
    study = json.loads(study_file.read_text())
    study.update(metric=["pixel_auroc", "image_auroc"], mode=["min", "max"], best_trial_id=None)
    study_file.write_text(json.dumps(study))
    results = load_results(folder)
    assert (results.metric, results.mode) == ("pixel_auroc", "min")
    finished = results.trials_with(("completed", "stopped"), "pixel_auroc")
    assert best_trial(results).trial_id == finished.loc[finished["pixel_auroc"].idxmin(), "trial_id"]
    assert write_report(folder).is_file()
