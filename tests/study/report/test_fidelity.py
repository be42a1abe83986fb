"""One fidelity per comparison: the search plots and importances rank trials measured at the same epoch,
and the rung correlations (Spearman of each evaluated epoch against the final value) match scipy."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from scipy import stats

from study.report import write_report
from study.report.fidelity import FINAL, Fidelity, asha_rungs, choose_fidelity, rung_correlations, values_at
from study.report.load import load_results
from study.report.search import build_search_study, importance_by_rung
from tests.study.report.fixtures import TrialSpec, report_sections, search_spec, write_study

# Hand-made histories: five trials trained all 12 epochs (the last one is their final value), two were
# stopped by ASHA, after epoch 4 and after epoch 8.
FINAL_VALUES = {"c1": 0.90, "c2": 0.85, "c3": 0.95, "c4": 0.80, "c5": 0.88}
EPOCH_4 = {"c1": 0.70, "c2": 0.72, "c3": 0.75, "c4": 0.60, "c5": 0.65, "s1": 0.50, "s2": 0.55}
EPOCH_8 = {"c1": 0.80, "c2": 0.78, "c3": 0.90, "c4": 0.70, "c5": 0.85, "s2": 0.60}
EPOCHS = 12


def asha_study(root, completed=tuple(FINAL_VALUES)):
    trials = [TrialSpec(trial_id, "completed" if trial_id in completed else "stopped",
                        {"noise_intensity": 0.3 + 0.2 * i, "lambda_ang": 0.2 + 0.15 * i,
                         "attention": "mixed", "seed": 0})
              for i, trial_id in enumerate(EPOCH_4)]
    space = {"name": "ang", "search": {"noise_intensity": {"type": "float", "low": 0.1, "high": 2.0},
                                       "lambda_ang": {"type": "float", "low": 0.1, "high": 2.0}},
             "eval_every": 4, "scheduler": {"type": "asha", "grace_period": 4, "reduction_factor": 2}}
    folder = write_study(root, search_spec(trials=trials, space=space, searched=["noise_intensity", "lambda_ang"],
                                           fixed={}))
    study = json.loads((folder / "study.json").read_text())
    study["base_config"] = {"epochs": EPOCHS}
    (folder / "study.json").write_text(json.dumps(study))
    trials_csv = pd.read_csv(folder / "trials.csv")
    last = {**EPOCH_4, **EPOCH_8, **{t: v for t, v in FINAL_VALUES.items() if t in completed}}
    trials_csv["image_auroc"] = trials_csv["trial_id"].map(last)
    trials_csv.to_csv(folder / "trials.csv", index=False)
    rows = [{"trial_id": t, "epoch": epoch, "loss": 0.1, "image_auroc": v}
            for epoch, values in ((4, EPOCH_4), (8, EPOCH_8), (EPOCHS, FINAL_VALUES)) for t, v in values.items()
            if epoch != EPOCHS or t in completed]
    pd.DataFrame(rows).to_csv(folder / "history.csv", index=False)
    return folder


def test_values_at_one_fidelity(tmp_path):
    results = load_results(asha_study(tmp_path))
    assert values_at(results, FINAL, "image_auroc").to_dict() == pytest.approx(FINAL_VALUES)
    assert values_at(results, Fidelity(4), "image_auroc").to_dict() == pytest.approx(EPOCH_4)
    assert values_at(results, Fidelity(8), "image_auroc").to_dict() == pytest.approx(EPOCH_8)


def test_search_study_is_rebuilt_at_one_fidelity(tmp_path):
    results = load_results(asha_study(tmp_path))
    final = build_search_study(results)
    assert final.finished_count == 5  # the stopped trials trained fewer epochs: left out
    assert sorted(t.user_attrs["trial_id"] for t in final.study.trials) == sorted(FINAL_VALUES)
    rung = build_search_study(results, Fidelity(4))
    assert rung.finished_count == 7
    assert {t.user_attrs["trial_id"]: t.value for t in rung.study.trials} == pytest.approx(EPOCH_4)
    table = importance_by_rung(results)
    assert table["fidelity"].tolist() == ["completed (final epoch)", "epoch 4", "epoch 8"]
    assert table["trials"].tolist() == [5, 7, 6]


def test_fidelity_falls_back_to_the_latest_rung_with_enough_trials(tmp_path):
    results = load_results(asha_study(tmp_path, completed=("c1",)))
    assert choose_fidelity(results, "image_auroc", 2)[0] == Fidelity(8)
    assert choose_fidelity(load_results(asha_study(tmp_path / "all")), "image_auroc", 2) == (FINAL, "")


def test_rung_correlations_match_scipy_over_trials_that_reached_both(tmp_path):
    results = load_results(asha_study(tmp_path))
    table = rung_correlations(results, "image_auroc").set_index("epoch")
    assert table.index.tolist() == [4, 8, 12]
    finals = [FINAL_VALUES[t] for t in FINAL_VALUES]
    for epoch, values in ((4, EPOCH_4), (8, EPOCH_8)):
        expected = stats.spearmanr([values[t] for t in FINAL_VALUES], finals)
        assert table.loc[epoch, "n_trials"] == 5  # the stopped trials never reached the final epoch
        assert table.loc[epoch, "spearman"] == pytest.approx(expected.statistic)
        assert table.loc[epoch, "p_value"] == pytest.approx(expected.pvalue)
        assert table.loc[epoch, "asha_rung"]
    assert table.loc[12, "spearman"] == pytest.approx(1.0) and not table.loc[12, "asha_rung"]


def test_rung_correlations_with_too_few_trials_say_why(tmp_path):
    results = load_results(asha_study(tmp_path, completed=("c1", "c2")))
    table = rung_correlations(results, "image_auroc")
    assert table["spearman"].isna().all() and table["note"].str.contains("at least 3").all()


def test_asha_rungs_are_rays_milestones():
    class Results:
        study = {"space": {"name": "x", "search": {"noise_intensity": {"low": 0.1, "high": 1.0}}, "eval_every": 4,
                           "scheduler": {"type": "asha", "grace_period": 4, "reduction_factor": 2}},
                 "base_config": {"epochs": 60}}
        metric = "image_auroc"

    assert asha_rungs(Results()) == [4, 8, 16, 32]  # 64 > 60: Ray places no rung there
    Results.study = {"space": {"name": "x", "grid": {"seed": [0, 1]}}}
    assert asha_rungs(Results()) == []  # a grid runs no ASHA


def test_report_states_the_fidelity_and_writes_the_correlations(tmp_path):
    folder = asha_study(tmp_path)
    sections = report_sections(write_report(folder).read_text(encoding="utf-8"))
    assert "One fidelity" in sections["search"] and "the 5 completed trial(s), at their final epoch" in sections[
        "search"]
    assert "Importance one fidelity at a time" in sections["search"]
    assert "Rank correlation per rung" in sections["search"]
    written = pd.read_csv(folder / "rung_correlations.csv")
    assert written["epoch"].tolist() == [4, 8, 12] and not math.isnan(written["spearman"].iloc[0])
    assert "Rank correlation of each evaluated epoch" in (folder / "comparison.md").read_text(encoding="utf-8")
