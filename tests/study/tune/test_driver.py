"""The study end to end against a real local Ray (2 CPUs): DDP trials (Ray Train), a failing trial, a killed and
resumed study (one-worker trials, in Tune's own actors), and ASHA's stops turned into requests.

Trials are tiny (64 px, 2 blocks of width 16, 1-2 epochs, 2 categories of a generated data set with 8
training images each) so the file runs in a few minutes on 2 cores. The results tables are checked against
what the trials themselves wrote (their final run folders), not against copies of the same numbers.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from study import cli
from study.protocol import METRIC_NAMES
from study.tune.stopping import registry_name, stop_requested
from tests.study.helpers import (
    CATEGORIES,
    REPO_ROOT,
    final_run_folder,
    kill_study_after_first_completed_trial,
    read_tables,
    study_args,
)

KILL_WAIT_S = 240
RUN_FILES = ("config.json", "checkpoint.pt", "metrics.json", "per_category.csv", "scores.csv")


def test_study_with_ddp_trials_writes_the_metrics_the_trials_computed(
        tmp_path: Path, tiny_data: Path, ray_session: str, space_file: Callable[..., Path],
        tiny_config: dict[str, Any]) -> None:
    space = space_file(tmp_path, "tinyddp", num_samples=2, scheduler="none", eval_every=1,
                       search={"noise_intensity": {"low": 0.5, "high": 2.0, "log": True}})
    code = cli.main(study_args(space, tiny_data, tmp_path / "results", "--workers-per-trial", "2"))
    assert code == 0
    folder = tmp_path / "results" / "tinyddp"
    study, trials, per_category, history = read_tables(folder)
    assert study["status"] == "finished" and study["kind"] == "search" and study["ended_at"]
    assert study["searched"] == ["noise_intensity"] and study["categories"] == CATEGORIES.split(",")
    assert len(trials) == 2 and set(trials.status) == {"completed"}
    assert {"noise_intensity", "epochs", "seed"} <= set(trials.columns)
    for row in trials.itertuples():
        run = final_run_folder(folder, row.trial_id)
        computed = json.loads((run / "metrics.json").read_text())
        for name in METRIC_NAMES:
            assert getattr(row, name) == pytest.approx(computed[name]), name
            assert 0.0 <= getattr(row, name) <= 1.0
        assert row.epochs_done == tiny_config["epochs"]
        per_cat = pd.read_csv(run / "per_category.csv").set_index("category")
        mine = per_category[per_category.trial_id == row.trial_id].set_index("category")
        assert sorted(mine.index) == sorted(CATEGORIES.split(","))
        for category in mine.index:
            for name in METRIC_NAMES:
                assert mine.loc[category, name] == pytest.approx(per_cat.loc[category, name])
        assert sorted(history[history.trial_id == row.trial_id].epoch) == [1, 2]
    # both trials ran as 2-worker DDP groups (rank 0 reports the world size)
    for result_file in (folder / "ray" / "tune").glob("*/result.json"):
        reported = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        assert reported and all(r["world_size"] == 2 for r in reported)
    best = trials.loc[trials.image_auroc.idxmax()]
    assert study["best_trial_id"] == best.trial_id
    best_dir = folder / "best"
    assert all((best_dir / name).is_file() for name in RUN_FILES)
    assert json.loads((best_dir / "metrics.json").read_text())["image_auroc"] == pytest.approx(best.image_auroc)
    image = next((tiny_data / "hex_nut" / "test").rglob("*.png"))
    predicted = subprocess.run([sys.executable, "-m", "maae", "predict", "--checkpoint", str(best_dir),
                                str(image), "--out", str(tmp_path / "pred")], cwd=REPO_ROOT, capture_output=True,
                               text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    assert (tmp_path / "pred" / "predictions.csv").is_file()


def test_a_nan_trial_is_recorded_as_failed_and_the_study_goes_on(
        tmp_path: Path, tiny_data: Path, ray_session: str, space_file: Callable[..., Path]) -> None:
    space = space_file(tmp_path, "nan", grid={"lr": [1e-3, 1e4]}, eval_every="final")
    code = cli.main(study_args(space, tiny_data, tmp_path / "results"))
    assert code == 0
    folder = tmp_path / "results" / "nan"
    study, trials, per_category, _ = read_tables(folder)
    by_lr = trials.set_index("lr")
    assert by_lr.loc[1e-3, "status"] == "completed"
    assert by_lr.loc[1e4, "status"] == "failed"
    assert "NonFiniteLossError" in by_lr.loc[1e4, "error"]
    assert math.isnan(by_lr.loc[1e4, "image_auroc"])
    assert study["status"] == "finished" and study["best_trial_id"] == by_lr.loc[1e-3, "trial_id"]
    failed_id = by_lr.loc[1e4, "trial_id"]
    assert failed_id not in set(per_category.trial_id)
    # not retried: one error report, last, and no epoch reported twice (a restarted worker group repeats)
    result_file = next(p for p in (folder / "ray" / "tune").glob("*/result.json")
                       if json.loads(p.read_text().splitlines()[0])["trial_id"] == failed_id)
    reported = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
    assert [bool(r.get("error")) for r in reported] == [False] * (len(reported) - 1) + [True]
    epochs = [r["epoch"] for r in reported[:-1]]
    assert epochs == sorted(set(epochs))


def test_killed_study_resumes_without_rerunning_finished_trials(
        tmp_path: Path, tiny_data: Path, ray_session: str, child_env: dict[str, str],
        space_file: Callable[..., Path], capsys: pytest.CaptureFixture[str]) -> None:
    # Four one-at-a-time trials of 3 epochs, killed as soon as the first one has completed: three trials (9
    # epochs) are then left, so the kill lands mid-study however fast this machine is. (Waiting for the second
    # trial's first epoch as well once let a fast CI machine finish the study between two polls.)
    space = space_file(tmp_path, "resume", grid={"noise_intensity": [0.25, 0.5, 1.0, 2.0]}, eval_every=1,
                       fixed={"epochs": 3})
    args = study_args(space, tiny_data, tmp_path / "results", "--address", ray_session, "--max-concurrent", "1")
    folder = tmp_path / "results" / "resume"
    finished = kill_study_after_first_completed_trial(args, child_env, folder, tmp_path / "first.log", KILL_WAIT_S)
    before = {tid: checkpoint_names(folder, tid) for tid in finished.trial_id}
    kept = finished.set_index("trial_id")

    assert json.loads((folder / "study.json").read_text())["resize_trials"] is True  # a cluster study resizes
    capsys.readouterr()
    # --no-resize cannot change a resumed study (Tune restores its scheduler): the study says so and keeps it.
    ctrl_c = signal.getsignal(signal.SIGINT)
    code = cli.main([*args, "--resume", "--no-resize"])
    assert code == 0
    # Tune installs its own Ctrl-C handler for fit and leaves it; the study puts the previous one back, so a
    # Ctrl-C during the examples or the report is not swallowed by a Tune run that has ended.
    assert signal.getsignal(signal.SIGINT) is ctrl_c
    said = capsys.readouterr().err
    assert "a resumed study keeps the mode it started with, spare CPUs going to running trials" in said
    assert "spare CPUs go to running trials (Tune's ResourceChangingScheduler)" in said
    study, trials, _, history = read_tables(folder)
    assert study["status"] == "finished" and study["resize_trials"] is True
    assert len(trials) == 4 and set(trials.status) == {"completed"}
    trials = trials.set_index("trial_id")
    for tid in finished.trial_id:
        for name in METRIC_NAMES:
            assert trials.loc[tid, name] == pytest.approx(kept.loc[tid, name])
        assert checkpoint_names(folder, tid) == before[tid]  # not trained again
    assert history.groupby("trial_id").epoch.max().eq(3).all()


def checkpoint_names(folder: Path, trial_id: str) -> list[str]:
    """The checkpoints Tune keeps of a one-worker trial (in its trial folder, found by its results)."""
    for result_file in (folder / "ray" / "tune").glob("*/result.json"):
        lines = result_file.read_text().splitlines()
        if lines and json.loads(lines[0])["trial_id"] == trial_id:
            return sorted(p.name for p in result_file.parent.glob("checkpoint_*"))
    raise AssertionError(f"no Tune folder for trial {trial_id}")


def test_graceful_asha_turns_stop_into_a_request(ray_session: str) -> None:
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from study.tune.driver import GracefulASHA

    registry = registry_name("/tmp/asha-unit-test")
    scheduler = GracefulASHA(registry, time_attr="epoch", metric="image_auroc", mode="max", max_t=4,
                             grace_period=1, reduction_factor=2)
    trials = [SimpleNamespace(trial_id=f"t{i}") for i in range(3)]
    for trial in trials:
        scheduler.on_trial_add(None, trial)
    decisions = [scheduler.on_trial_result(None, trial, {"epoch": 1, "image_auroc": value})
                 for trial, value in zip(trials, (0.9, 0.8, 0.1), strict=True)]
    assert decisions == [TrialScheduler.CONTINUE] * 3  # never a STOP that would kill the Train run
    # ASHA (rf 2) stops what falls below the median of the rung so far: 0.8 < 0.9 and 0.1 < 0.85
    assert [stop_requested(registry, t.trial_id) for t in trials] == [False, True, True]
    # ... and remembers it, so that the resource changes leave those trials alone (study.tune.resizing)
    assert [scheduler.stop_was_requested(t.trial_id) for t in trials] == [False, True, True]
