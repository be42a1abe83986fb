"""The ablation table: settings mapped onto the paper's Table 3, with their seeds and intervals, and the
report's ablation section with its paired one-switch comparisons."""

from __future__ import annotations

import pytest

from study.report import write_report
from study.report.ablation import ablation_table, is_grid_study, switch_flags
from study.report.load import load_results
from study.report.settings import study_settings
from tests.study.report.fixtures import TrialSpec, grid_spec, grid_study, repeats_spec, report_sections, write_study


def test_ablation_table_maps_switches_onto_table_3(tmp_path):
    results = load_results(grid_study(tmp_path))
    assert is_grid_study(results)
    table = ablation_table(results, study_settings(results)).set_index(["ang", "ffm", "mixed_attention"])
    assert table.loc[(True, True, True), "paper_image_auroc"] == 97.2
    assert table.loc[(True, True, True), "paper_pixel_auroc"] == 96.9
    assert table.loc[(False, False, False), "paper_image_auroc"] == 76.0
    assert table.loc[(True, False, True), "paper_pixel_auroc"] == 96.8
    assert (table["n_seeds"] == 3).all()


def test_a_switch_absent_from_trials_has_its_fixed_or_default_value(tmp_path):
    trials = [TrialSpec(f"l{lam}", "completed", {"lambda_ang": lam, "seed": 0}) for lam in (0.6, 0.9)]
    results = load_results(write_study(tmp_path, grid_spec(trials=trials, fixed={"use_ffm": False})))
    assert switch_flags(results, results.trials.iloc[0]) == (True, False, True)
    table = ablation_table(results, study_settings(results))
    assert table["paper_image_auroc"].tolist() == [93.9, 93.9]  # Table 3's ANG + mixed attention row


def test_ablation_section_with_repeats_shows_intervals_and_paired_tests(tmp_path):
    folder = write_study(tmp_path, repeats_spec(repeats=3))
    sections = report_sections(write_report(folder).read_text(encoding="utf-8"))
    ablation = sections["ablation"]
    assert "Paired comparisons: one switch at a time" in ablation
    assert "Wilcoxon signed-rank" in ablation and "Holm" in ablation
    assert ablation.count("<tr") >= 1 + 6 + 1 + 7 * 2  # headers, 6 settings, 7 pairs x image/pixel AUROC
    assert "97.2" in ablation  # the paper's full model
    markdown = (folder / "comparison.md").read_text(encoding="utf-8")
    assert "### Paired comparisons: one switch at a time" in markdown


def test_one_seed_rows_have_no_interval(tmp_path):
    folder = grid_study(tmp_path, seeds=(0,))
    results = load_results(folder)
    table = ablation_table(results, study_settings(results))
    assert (table["n_seeds"] == 1).all() and table["image_auroc_ci_low"].isna().all()
    sections = report_sections(write_report(folder).read_text(encoding="utf-8"))
    assert sections["ablation"].count("1 seed, no interval") == 6 * 2
    assert table["image_auroc"].tolist() == pytest.approx(results.trials["image_auroc"].tolist())
