"""Reading a study folder: one line naming the bad file, and the study's metric and mode from study.json."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from maae.errors import DataError
from study.report import write_report
from study.report.best import best_trial
from study.report.load import load_results
from tests.study.report.fixtures import search_spec, search_study, write_study


def test_loading_names_the_bad_file(tmp_path):
    with pytest.raises(DataError, match="study.json"):
        load_results(tmp_path)
    folder = search_study(tmp_path)
    trials = pd.read_csv(folder / "trials.csv")
    trials.loc[0, "status"] = "exploded"
    trials.to_csv(folder / "trials.csv", index=False)
    with pytest.raises(DataError, match=r"trials\.csv: column 'status' has exploded"):
        load_results(folder)


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
