"""The results tables (no Ray): statuses, the three CSVs, reloading for ``--resume``, and the contract with
the report: what :class:`study.results.StudyRecorder` writes is what :mod:`study.report.load` reads."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pandas as pd
import pytest

from study import protocol
from study.report.load import load_results
from study.results import StudyRecorder, TrialSnapshot

METRICS = {name: 0.5 for name in protocol.METRIC_NAMES}


def recorded_study(folder: Path) -> StudyRecorder:
    """A recorder that saw one trial of every status."""
    recorder = StudyRecorder(folder, metric="image_auroc", mode="max", hyper_columns=["lr", "seed"],
                             hyper_values=lambda p: {"lr": p["lr"], "seed": 0})
    recorder.observe(TrialSnapshot("a", "RUNNING", {"lr": 0.1}))
    recorder.add_result("a", {"epoch": 1, "epochs": 2, "loss": 1.0, "evaluated": False})
    recorder.add_result("a", {"epoch": 2, "epochs": 2, "loss": 0.5, "evaluated": True, "final": True,
                              **{**METRICS, "image_auroc": 0.9},
                              "per_category": {"x": METRICS, "y": METRICS}, "time_total_s": 12.0})
    recorder.observe(TrialSnapshot("a", "TERMINATED", {"lr": 0.1}))
    recorder.observe(TrialSnapshot("b", "RUNNING", {"lr": 10.0}))
    recorder.add_result("b", {"error": "NonFiniteLossError: reconstruction loss is nan", "epoch": 0})
    recorder.observe(TrialSnapshot("b", "TERMINATED", {"lr": 10.0}))
    recorder.add_result("c", {"epoch": 1, "epochs": 2, "loss": 0.7, "evaluated": True, **METRICS,
                              "per_category": {"x": METRICS}})
    recorder.add_result("c", {"stopped": True, "epoch": 1, "epochs": 2})  # ended early by ASHA
    recorder.observe(TrialSnapshot("c", "TERMINATED", {"lr": 0.2}))
    recorder.observe(TrialSnapshot("d", "PENDING", {"lr": 0.3}))
    recorder.add_result("e", {"epoch": 1, "epochs": 2, "loss": 0.9, "evaluated": False})
    recorder.observe(TrialSnapshot("e", "TERMINATED", {"lr": 0.4}))  # cut off by Ctrl-C: resumable
    recorder.write()
    return recorder


STATUSES = {"a": "completed", "b": "failed", "c": "stopped", "d": "pending", "e": "pending"}


def test_recorder_statuses_tables_and_reload(tmp_path: Path) -> None:
    recorder = recorded_study(tmp_path)
    assert recorder.best().trial_id == "a"
    trials = pd.read_csv(tmp_path / protocol.TRIALS_FILE, dtype={"trial_id": str, "error": str})
    assert list(trials.columns) == ["trial_id", "status", "lr", "seed", *protocol.TRIAL_RESULT_COLUMNS]
    assert dict(zip(trials.trial_id, trials.status, strict=True)) == STATUSES
    assert "nan" in trials.set_index("trial_id").loc["b", "error"]
    assert trials.set_index("trial_id").loc["a", "epochs_done"] == 2
    history = pd.read_csv(tmp_path / protocol.HISTORY_FILE, dtype={"trial_id": str})
    assert len(history) == 4 and math.isnan(history.iloc[0]["image_auroc"])
    assert len(pd.read_csv(tmp_path / protocol.PER_CATEGORY_FILE)) == 3

    again = StudyRecorder(tmp_path, metric="image_auroc", mode="max", hyper_columns=["lr", "seed"],
                          hyper_values=dict)
    again.load_existing()
    assert again.best().trial_id == "a"
    assert {r.trial_id: r.status for r in again.trials.values()} == STATUSES
    assert again.trials["a"].history[2]["loss"] == pytest.approx(0.5)


def test_hyperparameters_are_derived_once_per_distinct_parameters(tmp_path: Path) -> None:
    derived: list[dict] = []

    def hyper_values(params: dict) -> dict:
        derived.append(dict(params))
        return {"lr": params["lr"], "seed": 0}

    recorder = StudyRecorder(tmp_path, metric="image_auroc", mode="max", hyper_columns=["lr", "seed"],
                             hyper_values=hyper_values)
    for status in ("PENDING", "RUNNING", "RUNNING", "TERMINATED"):  # Tune reports a trial on every event
        recorder.observe(TrialSnapshot("a", status, {"lr": 0.1}))
    assert derived == [{"lr": 0.1}]
    recorder.observe(TrialSnapshot("a", "RUNNING", {"lr": 0.2}))  # new parameters: derived again
    assert derived == [{"lr": 0.1}, {"lr": 0.2}] and recorder.trials["a"].params == {"lr": 0.2, "seed": 0}


def test_what_the_recorder_writes_the_report_reads(tmp_path: Path) -> None:
    recorded_study(tmp_path)
    (tmp_path / protocol.STUDY_FILE).write_text(json.dumps({"name": "contract", "metric": "image_auroc",
                                                            "mode": "max", "kind": protocol.KIND_SEARCH}))
    results = load_results(tmp_path)
    assert results.param_columns == ["lr", "seed"]  # every other column is a result column of the contract
    assert dict(zip(results.trials.trial_id, results.trials.status, strict=True)) == STATUSES
    assert results.status_counts() == {status: list(STATUSES.values()).count(status)
                                       for status in protocol.STATUSES}
    assert results.trials.set_index("trial_id").loc["a", "image_auroc"] == pytest.approx(0.9)
    assert sorted(results.per_category.category) == ["x", "x", "y"]


def seeds_result(epoch: int, values: dict[str, float], *, final: bool = False) -> dict:
    """A result of a trial with seeds 4 and 5 whose categories x and y score ``values[seed_category]``."""
    per_seed = {seed: {cat: {**METRICS, "image_auroc": values[f"{seed}{cat}"]} for cat in ("x", "y")}
                for seed in ("4", "5")}
    seed_means = {seed: sum(per_seed[seed][c]["image_auroc"] for c in ("x", "y")) / 2 for seed in per_seed}
    per_category = {cat: {**METRICS, "image_auroc": (per_seed["4"][cat]["image_auroc"]
                                                     + per_seed["5"][cat]["image_auroc"]) / 2} for cat in ("x", "y")}
    return {"epoch": epoch, "epochs": 2, "loss": 0.5, "evaluated": True, "final": final, "seeds": [4, 5],
            "n_seeds": 2, **METRICS, "image_auroc": sum(seed_means.values()) / 2, "per_category": per_category,
            "seed_per_category": per_seed,
            "seed_metrics": {seed: {**METRICS, "image_auroc": mean} for seed, mean in seed_means.items()}}


def test_seed_repeats_write_means_and_one_row_per_seed_and_category(tmp_path: Path) -> None:
    recorder = StudyRecorder(tmp_path, metric="image_auroc", mode="max", hyper_columns=["lr", "seed"],
                             hyper_values=lambda p: {"lr": p["lr"], "seed": 4})
    recorder.observe(TrialSnapshot("a", "RUNNING", {"lr": 0.1}))
    recorder.add_result("a", {"epoch": 1, "epochs": 2, "loss": 0.9, "evaluated": False, "seeds": [4, 5],
                              "n_seeds": 2})
    recorder.add_result("a", seeds_result(2, {"4x": 0.2, "4y": 0.4, "5x": 0.6, "5y": 1.0}, final=True))
    recorder.observe(TrialSnapshot("a", "TERMINATED", {"lr": 0.1}))
    recorder.observe(TrialSnapshot("b", "PENDING", {"lr": 0.2}))
    recorder.write()

    trials = pd.read_csv(tmp_path / protocol.TRIALS_FILE, dtype={"trial_id": str, "error": str}).set_index("trial_id")
    assert trials.loc["a", "image_auroc"] == pytest.approx(0.55)  # the mean over seeds and categories
    assert trials.loc["a", "n_seeds"] == 2 and trials.loc["a", "seeds"] == "4;5" and trials.loc["a", "seed"] == 4
    assert math.isnan(trials.loc["b", "n_seeds"])  # not reported yet
    assert "2.0" not in (tmp_path / protocol.TRIALS_FILE).read_text()  # counts and seeds written as integers
    per_category = pd.read_csv(tmp_path / protocol.PER_CATEGORY_FILE, dtype={"trial_id": str})
    assert list(per_category.columns) == list(protocol.PER_CATEGORY_COLUMNS)
    assert list(zip(per_category.seed, per_category.category, per_category.image_auroc, strict=True)) == [
        (4, "x", 0.2), (4, "y", 0.4), (5, "x", 0.6), (5, "y", 1.0)]
    history = pd.read_csv(tmp_path / protocol.HISTORY_FILE, dtype={"trial_id": str})
    assert list(history.columns) == list(protocol.HISTORY_COLUMNS)  # history holds the means only
    assert history.set_index("epoch").loc[2, "image_auroc"] == pytest.approx(0.55)

    again = StudyRecorder(tmp_path, metric="image_auroc", mode="max", hyper_columns=["lr", "seed"],
                          hyper_values=dict)
    again.load_existing()
    record = again.trials["a"]
    assert record.seeds == [4, 5] and record.status == "completed"
    assert record.seed_per_category[5]["y"]["image_auroc"] == pytest.approx(1.0)
    assert record.per_category["x"]["image_auroc"] == pytest.approx(0.4)  # category means over the seeds
    again.write()  # a resumed study rewrites the same tables
    assert pd.read_csv(tmp_path / protocol.PER_CATEGORY_FILE, dtype={"trial_id": str}).equals(per_category)


def test_a_trial_without_seed_repeats_has_one_seed(tmp_path: Path) -> None:
    """A result without seeds (a study written before seed repeats, or a grid's seed axis) is the trial's
    own seed: n_seeds stays empty, and per_category.csv takes the seed from the trial's parameters."""
    recorded_study(tmp_path)
    per_category = pd.read_csv(tmp_path / protocol.PER_CATEGORY_FILE, dtype={"trial_id": str})
    assert set(per_category.seed) == {0}
    old_layout = per_category.drop(columns="seed")  # as written before per_category.csv had a seed column
    old_layout.to_csv(tmp_path / protocol.PER_CATEGORY_FILE, index=False)
    again = StudyRecorder(tmp_path, metric="image_auroc", mode="max", hyper_columns=["lr", "seed"],
                          hyper_values=dict)
    again.load_existing()
    assert again.trials["a"].per_category["y"]["image_auroc"] == pytest.approx(0.5)
    again.write()
    assert set(pd.read_csv(tmp_path / protocol.PER_CATEGORY_FILE).seed) == {0}


def test_history_records_the_threads_every_epoch_trained_with_and_keeps_them_on_resume(tmp_path: Path) -> None:
    """A resized one-worker trial's epochs, each with the intra-op threads it trained with; a Ray Train trial
    reports none (empty cells). Written as integers, and read back by ``--resume``; a history written before
    the column existed still loads."""
    recorder = StudyRecorder(tmp_path, metric="image_auroc", mode="max", hyper_columns=["lr"],
                             hyper_values=lambda p: {"lr": p["lr"]})
    recorder.observe(TrialSnapshot("grown", "RUNNING", {"lr": 0.1}))
    for epoch, threads in ((1, 1), (2, 1), (3, 2)):
        recorder.add_result("grown", {"epoch": epoch, "epochs": 4, "loss": 1.0 / epoch, "evaluated": False,
                                      protocol.RESULT_INTRA_OP_THREADS: threads})
    recorder.observe(TrialSnapshot("ddp", "RUNNING", {"lr": 0.2}))
    recorder.add_result("ddp", {"epoch": 1, "epochs": 4, "loss": 0.5, "evaluated": False, "world_size": 2})
    recorder.write()
    written = (tmp_path / protocol.HISTORY_FILE).read_text()
    assert [line.rsplit(",", 1)[1] for line in written.splitlines()[1:]] == ["1", "1", "2", ""]  # integers
    history = pd.read_csv(tmp_path / protocol.HISTORY_FILE, dtype={"trial_id": str})
    grown = history[history.trial_id == "grown"]
    assert list(zip(grown.epoch, grown[protocol.INTRA_OP_THREADS], strict=True)) == [(1, 1), (2, 1), (3, 2)]
    assert history[history.trial_id == "ddp"][protocol.INTRA_OP_THREADS].isna().all()

    again = StudyRecorder(tmp_path, metric="image_auroc", mode="max", hyper_columns=["lr"], hyper_values=dict)
    again.load_existing()
    assert [again.trials["grown"].history[epoch][protocol.INTRA_OP_THREADS] for epoch in (1, 2, 3)] == [1, 1, 2]
    history.drop(columns=protocol.INTRA_OP_THREADS).to_csv(tmp_path / protocol.HISTORY_FILE, index=False)
    older = StudyRecorder(tmp_path, metric="image_auroc", mode="max", hyper_columns=["lr"], hyper_values=dict)
    older.load_existing()
    assert sorted(older.trials["grown"].history) == [1, 2, 3]
    assert protocol.INTRA_OP_THREADS not in older.trials["grown"].history[3]
