"""The study's Optuna storage: a search records every trial in an RDB database that ``optuna.load_study`` opens,
the same study continues after a kill and ``--resume``, and a storage that cannot be used is one line, exit
code 2, before Ray starts."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import optuna
import pandas as pd
import pytest
from optuna.trial import TrialState

from study import cli
from study.optuna_storage import (
    OPTUNA_DB_FILE,
    STORAGE_KEY,
    STUDY_NAME_KEY,
    TRIAL_ID_ATTR,
    default_storage_url,
    fail_orphaned_trials,
    load_optuna_study,
)
from tests.study.helpers import kill_study_after_first_completed_trial, read_tables, study_args

SEARCH = {"noise_intensity": {"low": 0.5, "high": 2.0, "log": True}}
KILL_WAIT_S = 240


def _sqlite(path: Path) -> str:
    return f"sqlite:///{path}"


@pytest.mark.parametrize("case", ["unopenable", "missing-folder", "taken-name", "grid", "other-on-resume"])
def test_a_storage_that_cannot_be_used_is_one_line_before_ray_starts(
        tmp_path: Path, tiny_data: Path, space_file: Callable[..., Path], case: str, capsys) -> None:
    content = {"grid": {"noise_intensity": [0.5, 1.0]}} if case == "grid" else {"search": SEARCH}
    space = space_file(tmp_path, "store", fixed={"epochs": 1}, **content)
    shared = tmp_path / "shared.db"
    storage, extra, fragments = _sqlite(shared), [], ()
    if case == "unopenable":
        storage, fragments = "nosuchdb://host/db", ("--optuna-storage nosuchdb://host/db", "cannot open")
    elif case == "missing-folder":
        storage, fragments = _sqlite(tmp_path / "nowhere" / "o.db"), ("cannot open", "unable to open database")
    elif case == "taken-name":
        optuna.create_study(study_name="store", storage=storage)
        fragments = ("already holds an Optuna study named 'store'", "--resume")
    elif case == "grid":
        fragments = ("--optuna-storage", "grid")
    else:  # a study folder that records another storage than the one given with --resume
        folder = tmp_path / "results" / "store"
        folder.mkdir(parents=True)
        (folder / "study.json").write_text(json.dumps({STORAGE_KEY: default_storage_url(folder),
                                                       STUDY_NAME_KEY: "store"}))
        extra, fragments = ["--resume"], ("records its trials in", OPTUNA_DB_FILE)
    capsys.readouterr()
    code = cli.main([*study_args(space, tiny_data, tmp_path / "results"), "--optuna-storage", storage, *extra])
    # One line and nothing else: the study says nothing before Ray starts, so none of its lines came.
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1, lines
    assert all(fragment in lines[0] for fragment in fragments), lines[0]
    if case != "other-on-resume":
        assert not (tmp_path / "results" / "store").exists()


def _completed_trials(study: optuna.Study) -> dict[str, optuna.trial.FrozenTrial]:
    """The study's completed Optuna trials by their Tune trial id (each id once)."""
    completed = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    by_id = {trial.user_attrs[TRIAL_ID_ATTR]: trial for trial in completed}
    assert len(by_id) == len(completed), "a Tune trial was recorded as complete twice"
    return by_id


def _assert_matches_trials_csv(study: optuna.Study, trials: pd.DataFrame, metric: str) -> None:
    """Every completed row of trials.csv is a completed Optuna trial with the same parameter and value."""
    recorded = _completed_trials(study)
    completed = trials[trials.status == "completed"]
    assert set(recorded) == set(completed.trial_id)
    for row in completed.itertuples():
        trial = recorded[row.trial_id]
        assert trial.value == pytest.approx(getattr(row, metric))
        assert trial.params["noise_intensity"] == pytest.approx(row.noise_intensity)


def test_search_trials_are_in_the_optuna_storage_and_survive_a_kill_and_resume(
        tmp_path: Path, tiny_data: Path, ray_session: str, child_env: dict[str, str],
        space_file: Callable[..., Path]) -> None:
    # Three one-at-a-time trials: after the first completes two are left, so the kill lands mid-study.
    space = space_file(tmp_path, "optunadb", num_samples=3, scheduler="none", eval_every=1, search=SEARCH,
                       fixed={"epochs": 2})
    args = study_args(space, tiny_data, tmp_path / "results", "--address", ray_session, "--max-concurrent", "1")
    folder = tmp_path / "results" / "optunadb"
    completed = kill_study_after_first_completed_trial(args, child_env, folder, tmp_path / "first.log",
                                                       KILL_WAIT_S)
    study_json = json.loads((folder / "study.json").read_text())
    assert study_json[STORAGE_KEY] == default_storage_url(folder) and study_json[STUDY_NAME_KEY] == "optunadb"
    # Killed mid-study: what finished is already in the database, with its value.
    before = optuna.load_study(study_name="optunadb", storage=_sqlite(folder / OPTUNA_DB_FILE))
    metric = study_json["metric"]
    kept = {tid: (trial.number, trial.value) for tid, trial in _completed_trials(before).items()}
    assert set(completed.trial_id) <= set(kept)

    assert cli.main([*args, "--resume"]) == 0
    study_json, trials, _, _ = read_tables(folder)
    assert study_json["status"] == "finished" and set(trials.status) == {"completed"} and len(trials) == 3
    after = optuna.load_study(study_name="optunadb", storage=_sqlite(folder / OPTUNA_DB_FILE))
    _assert_matches_trials_csv(after, trials, metric)
    states = [trial.state for trial in after.get_trials(deepcopy=False)]
    assert states.count(TrialState.COMPLETE) == 3 and TrialState.RUNNING not in states, states
    for tid, (number, value) in kept.items():  # the same Optuna study continued: nothing recorded anew
        assert (_completed_trials(after)[tid].number, _completed_trials(after)[tid].value) == (number, value)
    # The report's entry point reads the same study from the results folder alone.
    loaded = load_optuna_study(folder)
    assert loaded is not None and set(_completed_trials(loaded)) == set(trials.trial_id)


def test_load_optuna_study_is_none_without_a_storage(tmp_path: Path) -> None:
    assert load_optuna_study(tmp_path) is None  # no study.json, no optuna.db
    (tmp_path / "study.json").write_text(json.dumps({"name": "grid", "kind": "grid"}))
    assert load_optuna_study(tmp_path) is None
    assert not (tmp_path / OPTUNA_DB_FILE).exists()  # looking never creates an empty database


def test_trials_a_killed_run_left_running_are_marked_failed(tmp_path: Path) -> None:
    """A trial Optuna proposed just before the study process was killed, which Tune never saved: once the
    resumed study has finished, it is failed rather than shown running forever; finished trials stay."""
    url = _sqlite(tmp_path / OPTUNA_DB_FILE)
    study = optuna.create_study(study_name="orphans", storage=url)
    distribution = {"x": optuna.distributions.FloatDistribution(0.0, 1.0)}
    done = study.ask(distribution)
    study.tell(done, 0.5)
    study.ask(distribution)  # proposed, never told
    assert fail_orphaned_trials(url, "orphans") == 1
    states = [trial.state for trial in optuna.load_study(study_name="orphans", storage=url).trials]
    assert states == [TrialState.COMPLETE, TrialState.FAIL]
    assert fail_orphaned_trials(url, "orphans") == 0
