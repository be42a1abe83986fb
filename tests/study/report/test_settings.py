"""Settings: completed trials grouped by everything but the seed, in both layouts of seeds (one trial per
seed, and k seeds inside one trial), with the bootstrap interval over seeds and categories; settings.csv."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from study.report import write_report
from study.report.best import best_trial, trial_per_category
from study.report.load import load_results
from study.report.settings import observations, per_category_matrix, study_settings
from study.report.stats import bootstrap_mean_ci
from tests.study.report.fixtures import (
    TrialSpec,
    grid_study,
    repeats_spec,
    report_sections,
    search_spec,
    search_study,
    write_study,
)

FULL = "use_ang=True, use_ffm=True, attention=mixed"


def hand_matrix(per_category: pd.DataFrame, trial_seed: dict[str, int], metric: str) -> np.ndarray:
    """Seeds x categories of ``metric``, built straight from per_category.csv."""
    frame = per_category.copy()
    if "seed" not in frame.columns:
        frame["seed"] = frame["trial_id"].map(trial_seed)
    return frame.pivot_table(index="seed", columns="category", values=metric).to_numpy()


def test_one_trial_per_seed_is_grouped_into_settings(tmp_path):
    folder = grid_study(tmp_path)
    settings = study_settings(load_results(folder))
    table = settings.table.set_index("setting")
    assert len(table) == 6 and (table["n_seeds"] == 3).all()
    assert set(table["seeds"]) == {"0;1;2"}
    raw = pd.read_csv(folder / "per_category.csv")
    trials = pd.read_csv(folder / "trials.csv")
    mine = trials[trials["use_ang"] & trials["use_ffm"] & (trials["attention"] == "mixed")]
    full = table.loc[FULL]
    assert full["trial_ids"] == ";".join(mine["trial_id"])
    assert full["image_auroc"] == pytest.approx(mine["image_auroc"].mean())  # the mean of the trials' means
    seeds = dict(zip(mine["trial_id"], mine["seed"], strict=True))
    matrix = hand_matrix(raw[raw["trial_id"].isin(mine["trial_id"])], seeds, "image_auroc")
    expected = bootstrap_mean_ci(matrix)
    assert (full["image_auroc_ci_low"], full["image_auroc_ci_high"]) == pytest.approx((expected.low, expected.high))
    assert full["image_auroc_seed_std"] == pytest.approx(mine["image_auroc"].std(ddof=1))


def test_k_seeds_inside_one_trial_give_the_same_kind_of_setting(tmp_path):
    folder = write_study(tmp_path, repeats_spec(repeats=3))
    results = load_results(folder)
    assert "n_seeds" not in results.param_columns and "seeds" not in results.param_columns
    settings = study_settings(results)
    table = settings.table.set_index("setting")
    assert len(table) == 6 and (table["n_seeds"] == 3).all() and set(table["seeds"]) == {"0;1;2"}
    trials = pd.read_csv(folder / "trials.csv").set_index("trial_id")
    raw = pd.read_csv(folder / "per_category.csv")
    full = table.loc[FULL]
    assert full["trial_ids"] == "rep_05"
    assert full["pixel_auroc"] == pytest.approx(trials.loc["rep_05", "pixel_auroc"])  # the trial's seed mean
    expected = bootstrap_mean_ci(hand_matrix(raw[raw["trial_id"] == "rep_05"], {}, "pixel_auroc"))
    assert (full["pixel_auroc_ci_low"], full["pixel_auroc_ci_high"]) == pytest.approx((expected.low, expected.high))
    # the per-category view of a trial averages its seeds
    own, _ = trial_per_category(results, "rep_05")
    rows = raw[(raw["trial_id"] == "rep_05") & (raw["category"] == "carpet")]
    assert own.set_index("category").loc["carpet", "image_auroc"] == pytest.approx(rows["image_auroc"].mean())
    assert len(own) == 4


def test_seed_comes_from_trials_csv_when_per_category_has_none(tmp_path):
    results = load_results(grid_study(tmp_path))
    frame = observations(results)
    assert set(frame["seed"]) == {"0", "1", "2"}
    assert frame.groupby("key")["run"].nunique().eq(3).all()


def test_only_completed_trials_make_settings(tmp_path):
    settings = study_settings(load_results(search_study(tmp_path)))
    assert settings.table["n_seeds"].tolist() == [3, 1, 1, 1, 1]
    listed = ";".join(settings.table["trial_ids"])
    for unfinished in ("ang_stop", "ang_fail", "ang_run", "ang_wait"):
        assert unfinished not in listed


def test_a_setting_with_one_seed_has_no_interval(tmp_path):
    settings = study_settings(load_results(search_study(tmp_path)))
    single = settings.table.iloc[1]
    assert single["n_seeds"] == 1 and math.isnan(single["image_auroc_ci_low"])
    assert math.isnan(single["image_auroc_seed_std"])


def test_settings_csv_is_written_with_every_metric(tmp_path):
    folder = grid_study(tmp_path)
    write_report(folder)
    written = pd.read_csv(folder / "settings.csv")
    assert list(written.columns[:7]) == ["setting", "use_ang", "use_ffm", "attention", "n_seeds", "seeds",
                                         "trial_ids"]
    for metric in ("image_auroc", "pixel_auroc", "aupro", "image_ap", "pixel_ap", "pixel_f1_max"):
        assert {metric, f"{metric}_ci_low", f"{metric}_ci_high", f"{metric}_seed_std"} <= set(written.columns)
    assert (written["image_auroc_ci_low"] <= written["image_auroc"]).all()
    assert (written["image_auroc"] <= written["image_auroc_ci_high"]).all()


def test_best_trial_is_study_json_choice_with_its_setting(tmp_path):
    results = load_results(search_study(tmp_path))
    best = best_trial(results)
    assert best.trial_id == results.study["best_trial_id"] and not best.provisional
    assert best.n_seeds == 3 and best.seeds == "0;1;2"
    trials = results.trials[results.trials["trial_id"].isin(["ang_s0", "ang_s1", "ang_s2"])]
    assert best.interval("image_auroc").mean == pytest.approx(trials["image_auroc"].mean())


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


def test_per_category_matrix_averages_over_a_settings_seeds(tmp_path):
    results = load_results(grid_study(tmp_path))
    ids = ["grid_05_s0", "grid_05_s1", "grid_05_s2"]
    matrix = per_category_matrix(results, "pixel_auroc", {"full": ids})
    raw = pd.read_csv(tmp_path / "ablation" / "per_category.csv")
    expected = raw[raw["trial_id"].isin(ids) & (raw["category"] == "Metal Nut")]["pixel_auroc"].mean()
    assert list(matrix.columns) == ["carpet", "bottle", "cable", "metal_nut"]  # the paper's order
    assert matrix.loc["full", "metal_nut"] == pytest.approx(expected)


def test_report_shows_the_interval_of_the_best_setting(tmp_path):
    folder = write_study(tmp_path, repeats_spec(repeats=3))
    results = load_results(folder)
    interval = best_trial(results).interval("image_auroc")
    sections = report_sections(write_report(folder).read_text(encoding="utf-8"))
    text = f"{100 * interval.mean:.2f} [{100 * interval.low:.2f}, {100 * interval.high:.2f}]"
    assert text in sections["summary"] and text in sections["trials"] and text in sections["ablation"]
    assert text in (folder / "comparison.md").read_text(encoding="utf-8")
