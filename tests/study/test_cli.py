"""The study's command line on bad input: one line naming the flag, file or field, exit code 2, nothing
written under the results folder, and Ray never started."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from study.cli import build_parser
from study.tune import cluster
from tests.study.helpers import assert_usage_error, run_cli, study_args


@pytest.mark.parametrize(("extra", "fragments"), [
    # (an --address where no Ray answers is exit code 3, not 2: tests/study/cluster/test_unreachable.py)
    (["--address", "not-an-address"], ("--address", "host:port")),
    (["--workers-per-trial", "64"], ("--workers-per-trial", "CPUs")),
    (["--categories", "brick,unicorn"], ("unicorn",)),
])
def test_bad_command_lines_are_one_line_exit_2_and_leave_nothing(
        tmp_path: Path, tiny_data: Path, child_env: dict[str, str], space_file: Callable[..., Path],
        extra: list[str], fragments: tuple[str, ...]) -> None:
    space = space_file(tmp_path, "bad", fixed={"epochs": 1})
    args = study_args(space, tiny_data, tmp_path / "results")
    if "--categories" in extra:
        index = args.index("--categories")
        del args[index:index + 2]
    assert_usage_error(run_cli([*args, *extra], child_env), *fragments)
    assert not (tmp_path / "results" / "bad").exists()


def test_data_folder_that_does_not_exist_or_holds_no_category(
        tmp_path: Path, child_env: dict[str, str], space_file: Callable[..., Path]) -> None:
    space = space_file(tmp_path, "nodata", fixed={"epochs": 1})
    assert_usage_error(run_cli(["--space", str(space), "--data", str(tmp_path / "nowhere"), "--results",
                                str(tmp_path / "r")], child_env), "--data", "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(run_cli(["--space", str(space), "--data", str(empty), "--results", str(tmp_path / "r")],
                               child_env), str(empty), "category")
    assert not (tmp_path / "r" / "nodata").exists()


@pytest.mark.parametrize(("content", "extra", "fragments"), [
    ({}, ["--repeats", "0"], ("--repeats", "integer >= 1", "got 0")),
    ({}, ["--repeats", "two"], ("--repeats", "integer >= 1", "'two'")),
    ({"repeats": 1.5}, [], ("repeats", "integer >= 1", "1.5")),
    ({"repeats": 2, "grid": {"seed": [0, 1]}}, [], ("repeats", "grid.seed")),
    ({"grid": {"seed": [0, 1]}}, ["--repeats", "3"], ("--repeats", "grid.seed")),
], ids=["flag-zero", "flag-text", "file-float", "file-with-seed-axis", "flag-with-seed-axis"])
def test_bad_repeats_are_one_line_exit_2_and_leave_nothing(
        tmp_path: Path, tiny_data: Path, child_env: dict[str, str], space_file: Callable[..., Path],
        content: dict, extra: list[str], fragments: tuple[str, ...]) -> None:
    space = space_file(tmp_path, "badrepeats", **content)
    assert_usage_error(run_cli([*study_args(space, tiny_data, tmp_path / "results"), *extra], child_env),
                       *fragments)
    assert not (tmp_path / "results" / "badrepeats").exists()


def test_only_trials_of_several_workers_start_the_local_dashboard() -> None:
    # Ray Train's clean-up of a multi-worker trial asks the dashboard's state API; one-worker trials do not.
    assert not cluster.needs_dashboard(cluster.WorkerShape(workers=1, cpus=2.0, gpus=1.0))
    assert cluster.needs_dashboard(cluster.WorkerShape(workers=2, cpus=1.0, gpus=0.0))
    parser = build_parser()
    assert not parser.parse_args(["--space", "s.yaml"]).dashboard
    assert parser.parse_args(["--space", "s.yaml", "--dashboard"]).dashboard


def test_resume_refuses_a_preset_whose_settings_changed_and_names_the_preset_that_has_them(
        tmp_path: Path, tiny_data: Path, space_file: Callable[..., Path]) -> None:
    """A study started when ``quick`` meant today's ``sweep`` settings: resuming it as ``quick`` would train
    its remaining trials at other settings, so --resume says which preset has the saved ones."""
    import json

    from maae.errors import ConfigError
    from study.cli import STUDY_FILE, _study_identity, validate
    from study.space import as_plain

    space = space_file(tmp_path, "renamed", fixed={"epochs": 1})
    args = study_args(space, tiny_data, tmp_path / "results")
    started = validate(build_parser().parse_args([*args, "--preset", "sweep"]))
    started.results_dir.mkdir(parents=True)
    record = {**_study_identity(started), "preset": "quick", "base_config": as_plain(started.base.to_dict())}
    (started.results_dir / STUDY_FILE).write_text(json.dumps(record), encoding="utf-8")

    with pytest.raises(ConfigError) as refused:
        validate(build_parser().parse_args([*args, "--resume"]))
    message = str(refused.value)
    assert "\n" not in message and "lr_schedule was 'constant', now 'cosine'" in message
    assert "resume with --preset sweep" in message
    assert validate(build_parser().parse_args([*args, "--resume", "--preset", "sweep"])).base == started.base


def test_the_state_save_period_is_the_studys_unless_the_user_sets_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from study.cli import study_environment

    monkeypatch.delenv("TUNE_GLOBAL_CHECKPOINT_S", raising=False)
    assert study_environment(local=True)["TUNE_GLOBAL_CHECKPOINT_S"] == cluster.STUDY_ENV["TUNE_GLOBAL_CHECKPOINT_S"]
    monkeypatch.setenv("TUNE_GLOBAL_CHECKPOINT_S", "0")
    assert study_environment(local=True)["TUNE_GLOBAL_CHECKPOINT_S"] == "0"
    monkeypatch.setenv("RAY_AIR_NEW_OUTPUT", "1")  # not a setting the user overrides
    assert study_environment(local=True)["RAY_AIR_NEW_OUTPUT"] == cluster.STUDY_ENV["RAY_AIR_NEW_OUTPUT"]
