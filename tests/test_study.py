"""The study platform end to end, against real Ray: one local cluster (2 CPUs) for the whole session, plus
one cluster started with ``ray start --head`` that a study joins with ``--address``.

Trials are tiny (64 px, 2 blocks of width 16, 1-2 epochs, 2 categories of a generated data set with 8
training images each) so the file runs in a few minutes on 2 cores. The results tables are checked against
what the trials themselves wrote (their final run folders), not against copies of the same numbers.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml

from maae.metrics import METRIC_NAMES
from study import cli, results
from study.results import StudyRecorder, TrialSnapshot
from study.stopping import registry_name, request_stop, stop_requested

REPO = Path(__file__).resolve().parents[1]
RUN = [sys.executable, str(REPO / "study" / "run.py")]
CATEGORIES = "brick,hex_nut"
TINY = {"epochs": 2, "depth": 2, "residual_every": 1, "hidden_dim": 16, "num_heads": 2, "image_size": 64,
        "batch_size": 4, "eval_batch_size": 8, "anomaly_map_sigma": 1.0}
SESSION_CPUS = 2
KILL_WAIT_S = 240
RUN_FILES = ("config.json", "checkpoint.pt", "metrics.json", "per_category.csv", "scores.csv")


# ------------------------------------------------------------------------------------------ fixtures ---

@pytest.fixture(scope="session")
def caches(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, str]]:
    """Feature and data caches in a temporary folder, for this process and every Ray process."""
    root = tmp_path_factory.mktemp("caches")
    env = {"MAAE_FEATURE_CACHE": str(root / "features"), "MAAE_DATA_CACHE": str(root / "data")}
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    yield env
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory, caches: dict[str, str]) -> Path:
    from maae.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny-data")
    generate_dataset(root, seed=0, train_per_category=8, test_good=3, test_per_defect=2, image_size=64)
    return root


@pytest.fixture(scope="session")
def ray_session(caches: dict[str, str]) -> Iterator[str]:
    """One local Ray for the session (address="local", 2 CPUs, dashboard on 127.0.0.1); yields its address."""
    import ray

    from study import cluster

    env = cli.study_environment(local=True)
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    cluster.start_local(SESSION_CPUS, env)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        cluster.shutdown()


def space_file(folder: Path, name: str, **content: object) -> Path:
    path = folder / f"{name}.yaml"
    fixed = {**TINY, **content.pop("fixed", {})}  # type: ignore[dict-item]
    path.write_text(yaml.safe_dump({"name": name, "fixed": fixed, **content}), encoding="utf-8")
    return path


def study_args(space: Path, data: Path, results_root: Path, *extra: str) -> list[str]:
    return ["--space", str(space), "--data", str(data), "--categories", CATEGORIES, "--results",
            str(results_root), "--no-examples", *extra]


def child_env(caches: dict[str, str]) -> dict[str, str]:
    env = dict(os.environ)
    env.update(caches)
    env.update({k: v for k, v in cli.study_environment(local=True).items()})
    return env


def read_tables(folder: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    study = json.loads((folder / "study.json").read_text())
    trials = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str, "error": str})
    per_category = pd.read_csv(folder / "per_category.csv", dtype={"trial_id": str})
    history = pd.read_csv(folder / "history.csv", dtype={"trial_id": str})
    return study, trials, per_category, history


def final_run_folder(folder: Path, trial_id: str) -> Path:
    """The trial's own last checkpoint: the MAAE run folder its rank 0 wrote."""
    runs = sorted(p for p in (folder / "ray" / "train" / trial_id).glob("checkpoint_*") if p.is_dir())
    assert runs, f"no checkpoint for trial {trial_id}"
    return runs[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# ------------------------------------------------------------------------------ recorder (no Ray) ---

def test_recorder_statuses_tables_and_reload(tmp_path: Path) -> None:
    recorder = StudyRecorder(tmp_path, metric="image_auroc", mode="max", hyper_columns=["lr", "seed"],
                             hyper_values=lambda p: {"lr": p["lr"], "seed": 0})
    metrics = {name: 0.5 for name in METRIC_NAMES}
    recorder.observe(TrialSnapshot("a", "RUNNING", {"lr": 0.1}))
    recorder.add_result("a", {"epoch": 1, "epochs": 2, "loss": 1.0, "evaluated": False})
    recorder.add_result("a", {"epoch": 2, "epochs": 2, "loss": 0.5, "evaluated": True, "final": True,
                              **{**metrics, "image_auroc": 0.9},
                              "per_category": {"x": metrics, "y": metrics}, "time_total_s": 12.0})
    recorder.observe(TrialSnapshot("a", "TERMINATED", {"lr": 0.1}))
    recorder.observe(TrialSnapshot("b", "RUNNING", {"lr": 10.0}))
    recorder.add_result("b", {"error": "NonFiniteLossError: reconstruction loss is nan", "epoch": 0})
    recorder.observe(TrialSnapshot("b", "TERMINATED", {"lr": 10.0}))
    recorder.add_result("c", {"epoch": 1, "epochs": 2, "loss": 0.7, "evaluated": True, **metrics,
                              "per_category": {"x": metrics}})
    recorder.add_result("c", {"stopped": True, "epoch": 1, "epochs": 2})  # ended early by ASHA
    recorder.observe(TrialSnapshot("c", "TERMINATED", {"lr": 0.2}))
    recorder.observe(TrialSnapshot("d", "PENDING", {"lr": 0.3}))
    recorder.add_result("e", {"epoch": 1, "epochs": 2, "loss": 0.9, "evaluated": False})
    recorder.observe(TrialSnapshot("e", "TERMINATED", {"lr": 0.4}))  # cut off by Ctrl-C: resumable
    recorder.write()
    assert recorder.best().trial_id == "a"
    trials = pd.read_csv(tmp_path / "trials.csv", dtype={"trial_id": str, "error": str})
    assert list(trials.columns) == ["trial_id", "status", "lr", "seed", *results.TRIAL_RESULT_COLUMNS]
    assert dict(zip(trials.trial_id, trials.status, strict=True)) == {
        "a": "completed", "b": "failed", "c": "stopped", "d": "pending", "e": "pending"}
    assert "nan" in trials.set_index("trial_id").loc["b", "error"]
    assert trials.set_index("trial_id").loc["a", "epochs_done"] == 2
    history = pd.read_csv(tmp_path / "history.csv", dtype={"trial_id": str})
    assert len(history) == 4 and math.isnan(history.iloc[0]["image_auroc"])
    assert len(pd.read_csv(tmp_path / "per_category.csv")) == 3

    again = StudyRecorder(tmp_path, metric="image_auroc", mode="max", hyper_columns=["lr", "seed"],
                          hyper_values=dict)
    again.load_existing()
    assert again.best().trial_id == "a"
    assert {r.trial_id: r.status for r in again.trials.values()} == {
        "a": "completed", "b": "failed", "c": "stopped", "d": "pending", "e": "pending"}
    assert again.trials["a"].history[2]["loss"] == pytest.approx(0.5)


def test_report_problems_never_break_the_study(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    from study.driver import ReportRefresher, write_report_safely

    assert write_report_safely(tmp_path / "not-a-study", False) is True  # warned once, no exception
    assert "warning" in capsys.readouterr().err
    refresher = ReportRefresher(tmp_path / "not-a-study")
    refresher.request()
    refresher.close()
    assert not (tmp_path / "not-a-study" / "report.html").exists()


# ------------------------------------------------------------------------------------- with Ray ---

def test_study_with_ddp_trials_writes_the_metrics_the_trials_computed(
        tmp_path: Path, tiny_data: Path, ray_session: str) -> None:
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
        assert row.epochs_done == TINY["epochs"]
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
                                str(image), "--out", str(tmp_path / "pred")], cwd=REPO, capture_output=True,
                               text=True, timeout=300)
    assert predicted.returncode == 0, predicted.stderr
    assert (tmp_path / "pred" / "predictions.csv").is_file()


def test_a_nan_trial_is_recorded_as_failed_and_the_study_goes_on(
        tmp_path: Path, tiny_data: Path, ray_session: str) -> None:
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
        tmp_path: Path, tiny_data: Path, ray_session: str, caches: dict[str, str]) -> None:
    # Four one-at-a-time trials: after the first completes, three are left, so the kill lands mid-study
    # however fast this machine is.
    space = space_file(tmp_path, "resume", grid={"noise_intensity": [0.25, 0.5, 1.0, 2.0]}, eval_every=1,
                       fixed={"epochs": 2})
    args = study_args(space, tiny_data, tmp_path / "results", "--address", ray_session, "--max-concurrent", "1")
    folder = tmp_path / "results" / "resume"
    log = (tmp_path / "first.log").open("w")
    driver = subprocess.Popen([*RUN, *args], cwd=REPO, env=child_env(caches), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + KILL_WAIT_S
        finished: pd.DataFrame = pd.DataFrame()
        while time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.25)
            if (folder / "history.csv").is_file() and (folder / "trials.csv").is_file():
                trials = pd.read_csv(folder / "trials.csv", dtype={"trial_id": str})
                history = pd.read_csv(folder / "history.csv", dtype={"trial_id": str})
                finished = trials[trials.status == "completed"]
                later = history[~history.trial_id.isin(finished.trial_id)]
                if len(finished) >= 1 and len(later) >= 1:  # a second trial is training: kill now
                    break
        assert driver.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
        assert len(finished) >= 1, (tmp_path / "first.log").read_text()[-3000:]
        driver.send_signal(signal.SIGKILL)
        driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    before = {tid: sorted(p.name for p in (folder / "ray" / "train" / tid).iterdir())
              for tid in finished.trial_id}
    kept = finished.set_index("trial_id")

    code = cli.main([*args, "--resume"])
    assert code == 0
    study, trials, _, history = read_tables(folder)
    assert study["status"] == "finished"
    assert len(trials) == 4 and set(trials.status) == {"completed"}
    trials = trials.set_index("trial_id")
    for tid in finished.trial_id:
        for name in METRIC_NAMES:
            assert trials.loc[tid, name] == pytest.approx(kept.loc[tid, name])
        assert sorted(p.name for p in (folder / "ray" / "train" / tid).iterdir()) == before[tid]
    assert history.groupby("trial_id").epoch.max().eq(2).all()


def test_study_joins_a_cluster_started_with_ray_start(tmp_path: Path, tiny_data: Path,
                                                      caches: dict[str, str]) -> None:
    port, dashboard = free_port(), free_port()
    env = child_env(caches)
    env["RAY_AUTH_MODE"] = "disabled"
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--block"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.5)
        space = space_file(tmp_path, "joined", fixed={"epochs": 1}, eval_every="final")
        out = subprocess.run([*RUN, *study_args(space, tiny_data, tmp_path / "results", "--address", address)],
                             cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stderr[-3000:]
        study, trials, per_category, _ = read_tables(tmp_path / "results" / "joined")
        assert list(trials.status) == ["completed"] and len(per_category) == 2
        assert "best trial" in out.stdout and "category" in out.stdout
    finally:
        # Stop only this head (its --block process stops what it started), never `ray stop` (machine-wide).
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)


def test_graceful_asha_turns_stop_into_a_request(ray_session: str) -> None:
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from study.driver import GracefulASHA

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


def test_a_trial_asked_to_stop_ends_itself_and_frees_its_workers(
        tmp_path: Path, tiny_data: Path, ray_session: str, caches: dict[str, str]) -> None:
    import ray

    space = space_file(tmp_path, "stop", fixed={"epochs": 200}, eval_every="final")
    args = study_args(space, tiny_data, tmp_path / "results", "--address", ray_session)
    folder = tmp_path / "results" / "stop"
    # Placement groups that hold resources already (a driver killed by an earlier test can leave one behind:
    # Ray 2.60 may register a dying job's last placement group after the job was marked finished).
    held_before = created_placement_groups()
    log = (tmp_path / "stop.log").open("w")
    driver = subprocess.Popen([*RUN, *args], cwd=REPO, env=child_env(caches), stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + KILL_WAIT_S
        trial_id = None
        while time.monotonic() < deadline and driver.poll() is None and trial_id is None:
            time.sleep(0.5)
            if (folder / "history.csv").is_file():
                history = pd.read_csv(folder / "history.csv", dtype={"trial_id": str})
                if len(history) >= 2:
                    trial_id = history.trial_id.iloc[0]
        assert trial_id is not None, (tmp_path / "stop.log").read_text()[-3000:]
        request_stop(registry_name(str(folder.resolve())), trial_id)
        assert driver.wait(timeout=KILL_WAIT_S) == 0, (tmp_path / "stop.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    study, trials, _, _ = read_tables(folder)
    assert study["status"] == "finished"
    row = trials.iloc[0]
    assert row.status == "stopped" and 2 <= row.epochs_done < 200
    deadline = time.monotonic() + 30
    while created_placement_groups().keys() - held_before.keys() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not created_placement_groups().keys() - held_before.keys()  # the stopped trial's workers are gone
    held_cpus = sum(bundle.get("CPU", 0) for pg in held_before.values() for bundle in pg)
    assert ray.available_resources().get("CPU", 0) == SESSION_CPUS - held_cpus


def created_placement_groups() -> dict[str, list[dict[str, float]]]:
    """The cluster's placement groups that hold resources now: id -> bundles."""
    import ray

    return {pg_id: list(pg["bundles"].values()) for pg_id, pg in ray.util.placement_group_table().items()
            if pg["state"] == "CREATED"}


# -------------------------------------------------------------------- bad input via the command line ---

def run_cli(args: list[str], caches: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([*RUN, *args], cwd=REPO, env=child_env(caches), capture_output=True, text=True,
                          timeout=300)


def assert_usage_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.mark.parametrize(("extra", "fragments"), [
    (["--address", "127.0.0.1:1"], ("--address", "127.0.0.1:1")),
    (["--workers-per-trial", "64"], ("--workers-per-trial", "CPUs")),
    (["--categories", "brick,unicorn"], ("unicorn",)),
])
def test_bad_command_lines_are_one_line_exit_2_and_leave_nothing(
        tmp_path: Path, tiny_data: Path, caches: dict[str, str], extra: list[str],
        fragments: tuple[str, ...]) -> None:
    space = space_file(tmp_path, "bad", fixed={"epochs": 1})
    args = study_args(space, tiny_data, tmp_path / "results")
    if "--categories" in extra:
        index = args.index("--categories")
        del args[index:index + 2]
    assert_usage_error(run_cli([*args, *extra], caches), *fragments)
    assert not (tmp_path / "results" / "bad").exists()


def test_data_folder_that_does_not_exist_or_holds_no_category(
        tmp_path: Path, caches: dict[str, str]) -> None:
    space = space_file(tmp_path, "nodata", fixed={"epochs": 1})
    assert_usage_error(run_cli(["--space", str(space), "--data", str(tmp_path / "nowhere"), "--results",
                                str(tmp_path / "r")], caches), "--data", "nowhere")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert_usage_error(run_cli(["--space", str(space), "--data", str(empty), "--results", str(tmp_path / "r")],
                               caches), str(empty), "category")
    assert not (tmp_path / "r" / "nodata").exists()
