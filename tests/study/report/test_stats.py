"""Seed repeats, their confidence intervals and the difference rule, the best trial, per-category means."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from study.report.load import load_results
from study.report.stats import (
    SPREAD_FACTOR,
    Spread,
    best_trial,
    exceeds_spread,
    mean_ci,
    per_category_matrix,
    pooled_std,
    seed_groups,
)
from tests.study.report.fixtures import TrialSpec, grid_study, hand_ci, search_spec, search_study, write_study


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


def test_per_category_matrix_averages_over_a_settings_seeds(tmp_path):
    results = load_results(grid_study(tmp_path))
    ids = ["grid_05_s0", "grid_05_s1", "grid_05_s2"]
    matrix = per_category_matrix(results, "pixel_auroc", {"full": ids})
    raw = pd.read_csv(tmp_path / "ablation" / "per_category.csv")
    expected = raw[raw["trial_id"].isin(ids) & (raw["category"] == "Metal Nut")]["pixel_auroc"].mean()
    assert list(matrix.columns) == ["carpet", "bottle", "cable", "metal_nut"]  # the paper's order
    assert matrix.loc["full", "metal_nut"] == pytest.approx(expected)
