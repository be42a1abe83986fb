"""comparisons.csv (one-switch pairs, paired Wilcoxon, Holm, P(B > A)) and the flag of searched parameters
whose effect stays within the seed-to-seed spread."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from study.report import write_report
from study.report.comparisons import COLUMNS, comparisons_table, one_switch_pairs
from study.report.load import load_results
from study.report.sensitivity import parameter_effects, pooled_seed_spread
from study.report.settings import study_settings
from study.report.stats import TEST_ALL_ZERO, holm
from tests.study.report.fixtures import (
    TrialSpec,
    grid_spec,
    grid_study,
    repeats_spec,
    report_sections,
    search_study,
    write_study,
)


def inert_axis_study(root):
    """use_ang x lambda_ang x 3 seeds, where lambda_ang changes nothing (its rows copy lambda 0.6's), as the
    issue found for ANG's common scale under Adam."""
    trials = [TrialSpec(f"a{int(ang)}_l{lam}_s{seed}", "completed",
                        {"use_ang": ang, "lambda_ang": lam, "seed": seed})
              for ang in (False, True) for lam in (0.6, 0.9) for seed in (0, 1, 2)]
    space = {"name": "inert", "grid": {"use_ang": [False, True], "lambda_ang": [0.6, 0.9], "seed": [0, 1, 2]}}
    folder = write_study(root, grid_spec(name="inert", trials=trials, space=space,
                                         searched=["use_ang", "lambda_ang", "seed"], fixed={}))
    per_category = pd.read_csv(folder / "per_category.csv")
    for ang in (0, 1):
        for seed in (0, 1, 2):
            source = per_category["trial_id"] == f"a{ang}_l0.6_s{seed}"
            target = per_category["trial_id"] == f"a{ang}_l0.9_s{seed}"
            per_category.loc[target, per_category.columns[2:]] = per_category.loc[source,
                                                                                 per_category.columns[2:]].to_numpy()
    per_category.to_csv(folder / "per_category.csv", index=False)
    return folder


def test_pairs_differ_in_exactly_one_switch_and_b_is_on(tmp_path):
    results = load_results(grid_study(tmp_path))
    settings = study_settings(results)
    pairs = one_switch_pairs(results, settings)
    # Table 3's six rows: attention twice without ANG/with it, ANG twice, FFM twice, attention with FFM.
    assert len(pairs) == 7
    assert sorted(p.parameter for p in pairs) == ["attention"] * 3 + ["use_ang"] * 2 + ["use_ffm"] * 2
    for pair in pairs:
        assert pair.value_b in (True, "mixed") and pair.value_a in (False, "spatial")
    table = comparisons_table(results, settings)
    assert list(table.columns) == COLUMNS and len(table) == 7 * 6


def test_a_comparison_is_scipys_wilcoxon_on_the_per_seed_per_category_differences(tmp_path):
    folder = grid_study(tmp_path)
    results = load_results(folder)
    table = comparisons_table(results, study_settings(results))
    row = table[(table["parameter"] == "use_ffm") & (table["metric"] == "image_auroc")
                & (table["setting_a"] == "use_ang=True, use_ffm=False, attention=mixed")].iloc[0]
    raw = pd.read_csv(folder / "per_category.csv")
    trials = pd.read_csv(folder / "trials.csv").set_index("trial_id")
    raw["seed"] = raw["trial_id"].map(trials["seed"])
    a = raw[raw["trial_id"].str.startswith("grid_04_")].set_index(["seed", "category"])["image_auroc"]
    b = raw[raw["trial_id"].str.startswith("grid_05_")].set_index(["seed", "category"])["image_auroc"]
    differences = (b - a.loc[b.index]).to_numpy()
    assert row["setting_b"] == "use_ang=True, use_ffm=True, attention=mixed" and row["value_b"]
    assert row["n_pairs"] == 12
    assert row["mean_difference"] == pytest.approx(differences.mean())
    assert row["p_value"] == pytest.approx(stats.wilcoxon(differences, method="exact").pvalue)
    assert row["prob_improvement"] == pytest.approx(np.mean(differences > 0) + 0.5 * np.mean(differences == 0))
    image = table[table["metric"] == "image_auroc"]
    assert image["p_holm"].to_numpy() == pytest.approx(holm(image["p_value"].to_numpy()))
    assert (table["significant"] == (table["p_holm"] < 0.05)).all()


def test_repeats_layout_pairs_seeds_inside_trials(tmp_path):
    folder = write_study(tmp_path, repeats_spec(repeats=3))
    results = load_results(folder)
    table = comparisons_table(results, study_settings(results))
    assert len(table) == 7 * 6 and (table["n_pairs"] == 12).all()  # 3 seeds x 4 categories


def test_an_axis_that_changes_nothing_gives_p_one_and_is_flagged(tmp_path):
    folder = inert_axis_study(tmp_path)
    results = load_results(folder)
    settings = study_settings(results)
    table = comparisons_table(results, settings)
    inert = table[table["parameter"] == "lambda_ang"]
    assert len(inert) == 2 * 6
    assert (inert["p_value"] == 1.0).all() and (inert["test"] == TEST_ALL_ZERO).all()
    assert (inert["prob_improvement"] == 0.5).all() and not inert["significant"].any()
    assert (inert["value_a"] == 0.6).all() and (inert["value_b"] == 0.9).all()  # the grid's order
    effects = parameter_effects(results, settings, "image_auroc").set_index("parameter")
    assert effects.loc["lambda_ang", "effect"] == 0.0 and bool(effects.loc["lambda_ang", "within_spread"])
    assert not effects.loc["use_ang", "within_spread"] and effects.loc["use_ang", "how"] == "varied alone"
    sections = report_sections(write_report(folder).read_text(encoding="utf-8"))
    assert "Flagged: lambda_ang" in sections["search"] and "yes: flagged" in sections["search"]
    written = pd.read_csv(folder / "comparisons.csv")
    assert list(written.columns) == COLUMNS and len(written) == len(table)


def test_pooled_seed_spread_by_hand(tmp_path):
    results = load_results(grid_study(tmp_path))
    settings = study_settings(results)
    spread = pooled_seed_spread(settings, "image_auroc")
    stds = settings.table["image_auroc_seed_std"].to_numpy()
    assert spread.settings == 6 and spread.degrees_of_freedom == 12
    assert spread.std == pytest.approx(math.sqrt((2 * stds**2).sum() / 12))


def test_parameters_of_a_search_without_repeated_seeds_are_undetermined(tmp_path):
    """A TPE-like search: both parameters change in every trial, one seed each."""
    trials = [TrialSpec(f"t{i}", "completed", {"noise_intensity": 0.5 + 0.1 * i, "lambda_ang": 0.3 + 0.05 * i,
                                               "seed": 0}) for i in range(5)]
    spec_folder = write_study(tmp_path, grid_spec(name="one_seed", kind="search", trials=trials, space={},
                                                  searched=["noise_intensity", "lambda_ang"], fixed={}))
    results = load_results(spec_folder)
    effects = parameter_effects(results, study_settings(results), "image_auroc")
    assert effects["within_spread"].tolist() == [None, None]
    assert "no completed setting has 2 or more seeds" in effects["note"].iloc[0]
    assert effects["how"].tolist() == ["marginal", "marginal"] and effects["groups"].tolist() == [3, 3]
    means = study_settings(results).table["image_auroc"].to_numpy()  # in noise_intensity order
    bins = [means[:2].mean(), means[2:3].mean(), means[3:].mean()]  # ranks 1..5 cut at tertiles: 2, 1, 2
    assert effects["effect"].iloc[0] == pytest.approx(max(bins) - min(bins))


def test_search_studies_have_no_comparisons(tmp_path):
    folder = search_study(tmp_path)
    results = load_results(folder)
    assert comparisons_table(results, study_settings(results)).empty
    write_report(folder)
    assert list(pd.read_csv(folder / "comparisons.csv").columns) == COLUMNS
