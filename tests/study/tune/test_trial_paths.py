"""One-worker trials train in Tune's own trial actor (no Ray Train), against a real local Ray (2 CPUs):

- they compute exactly what ``python -m maae train`` computes with the same settings and threads;
- a trial whose process is killed is restarted by Tune from its last checkpoint and still ends exactly where
  an uninterrupted run ends;
- CPUs left idle when a trial ends go to the trial still running (Tune's ResourceChangingScheduler), which
  restarts from its checkpoint with more intra-op threads and goes on from the next epoch (and still honours a
  stop request);
- the resource changes happen only where they cost no work (checkpointed results that do not end a trial,
  never for a trial asked to stop) and a trial grows only when its remaining epochs pay for the restart.

The DDP path (two workers, Ray Train) is tested in ``test_driver.py``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import yaml

from study import cli
from study.protocol import INTRA_OP_THREADS, METRIC_NAMES, RAY_DIR, RESULT_INTRA_OP_THREADS, TRAIN_RUNS, TUNE_EXPERIMENT
from study.tune.stopping import registry_name, request_stop
from tests.study.helpers import CATEGORIES, REPO_ROOT, RUN, SESSION_CPUS, read_tables, study_args

KILL_WAIT_S = 240
TRAIN_TIMEOUT_S = 300
# Both CPUs of the session for one trial: its threads are then 2 from the start and never change, and the
# plain run it is compared with gets the same 2 threads.
WHOLE_SESSION = ("--cpus-per-worker", str(SESSION_CPUS))
TRIAL_ACTOR_CLASS = "ImplicitFunc"  # the class Tune gives a function trainable's actor
ALL_CATEGORIES = "bottle_cap,brick,capsule,grass,gravel,hex_nut"


def tune_results(folder: Path) -> dict[str, list[dict[str, Any]]]:
    """Every trial's reported results (Tune's result.json), by trial id."""
    found = {}
    for result_file in (folder / RAY_DIR / TUNE_EXPERIMENT).glob("*/result.json"):
        reported = [json.loads(line) for line in result_file.read_text().splitlines() if line.strip()]
        if reported:
            found[reported[0]["trial_id"]] = reported
    return found


def plain_train(data: Path, overrides: dict[str, Any], out: Path, threads: int) -> dict[str, float]:
    """``python -m maae train`` with the same settings and ``threads`` intra-op threads; its metrics."""
    sets = [arg for name, value in overrides.items() for arg in ("--set", f"{name}={value}")]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    done = subprocess.run([sys.executable, "-m", "maae", "train", "--data", str(data), "--categories", CATEGORIES,
                           "--preset", "quick", *sets, "--out", str(out)], cwd=REPO_ROOT, env=env,
                          capture_output=True, text=True, timeout=TRAIN_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "metrics.json").read_text())


def test_a_one_worker_trial_computes_exactly_what_maae_train_computes(
        tmp_path: Path, tiny_data: Path, ray_session: str, space_file: Callable[..., Path],
        tiny_config: dict[str, Any]) -> None:
    space = space_file(tmp_path, "plain", grid={"seed": [3]}, eval_every=1)
    assert cli.main(study_args(space, tiny_data, tmp_path / "results", *WHOLE_SESSION)) == 0
    folder = tmp_path / "results" / "plain"
    study, trials, _, history = read_tables(folder)
    assert study["status"] == "finished" and list(trials.status) == ["completed"]
    plain = plain_train(tiny_data, {**tiny_config, "seed": 3}, tmp_path / "plain-run", SESSION_CPUS)
    best = json.loads((folder / "best" / "metrics.json").read_text())
    row = trials.iloc[0]
    for name in METRIC_NAMES:
        assert best[name] == plain[name], name  # exactly: same shuffling, noise and threads
        assert row[name] == pytest.approx(plain[name])
    # trained in Tune's actor: one rank, the trial's 2 CPUs as threads, a Tune checkpoint each epoch, no Train run
    [reported] = tune_results(folder).values()
    assert [r["epoch"] for r in reported] == list(range(1, tiny_config["epochs"] + 1))
    assert all(r["world_size"] == 1 and r[RESULT_INTRA_OP_THREADS] == SESSION_CPUS for r in reported)
    assert all(r["checkpoint_dir_name"] for r in reported)
    assert not (folder / RAY_DIR / TRAIN_RUNS).exists()
    assert sorted(history.epoch) == [1, 2]


def test_a_killed_trial_process_is_restarted_from_its_checkpoint_and_ends_exactly_as_uninterrupted(
        tmp_path: Path, tiny_data: Path, ray_session: str, child_env: dict[str, str],
        space_file: Callable[..., Path], tiny_config: dict[str, Any]) -> None:
    from ray.util.state import list_actors

    epochs = 20  # tiny epochs take about 0.1 s: a window of about 2 s after the second one
    space = space_file(tmp_path, "killed", grid={"seed": [5]}, fixed={"epochs": epochs}, eval_every="final")
    folder = tmp_path / "results" / "killed"
    args = study_args(space, tiny_data, tmp_path / "results", "--address", ray_session, *WHOLE_SESSION)
    log = (tmp_path / "study.log").open("w")
    driver = subprocess.Popen([*RUN, *args], cwd=REPO_ROOT, env=child_env, stdout=log, stderr=log)
    killed_at = None
    try:
        # The trial actor's PID is found while it starts (the state API takes up to a second to answer, and a
        # tiny epoch takes a tenth of that); the kill then waits only for the second epoch in history.csv.
        deadline = time.monotonic() + KILL_WAIT_S
        pid = None
        while time.monotonic() < deadline and driver.poll() is None and pid is None:
            time.sleep(0.2)
            actors = [a for a in list_actors(address=ray_session, filters=[("state", "=", "ALIVE")])
                      if a.class_name.endswith(TRIAL_ACTOR_CLASS)]  # sometimes qualified: wrap_function.<locals>.
            assert len(actors) <= 1, actors
            pid = actors[0].pid if actors else None
        while time.monotonic() < deadline and driver.poll() is None and pid is not None and killed_at is None:
            time.sleep(0.02)
            if not (folder / "history.csv").is_file():
                continue
            done = pd.read_csv(folder / "history.csv").epoch.max()
            if done >= 2:
                os.kill(pid, signal.SIGKILL)
                killed_at = done
        assert killed_at is not None and killed_at < epochs, (tmp_path / "study.log").read_text()[-3000:]
        assert driver.wait(timeout=KILL_WAIT_S) == 0, (tmp_path / "study.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    study, trials, _, history = read_tables(folder)
    assert study["status"] == "finished" and list(trials.status) == ["completed"]
    assert history.epoch.max() == epochs and set(history.epoch) == set(range(1, epochs + 1))
    [reported] = tune_results(folder).values()
    assert reported[-1]["final"] and reported[-1]["epoch"] == epochs
    plain = plain_train(tiny_data, {**tiny_config, "epochs": epochs, "seed": 5}, tmp_path / "plain-run",
                        SESSION_CPUS)
    best = json.loads((folder / "best" / "metrics.json").read_text())
    for name in METRIC_NAMES:
        assert best[name] == plain[name], name  # resumed with its shuffling and noise generators


def test_idle_cpus_go_to_the_trial_still_running(
        tmp_path: Path, tiny_data: Path, ray_session: str, child_env: dict[str, str],
        tiny_config: dict[str, Any]) -> None:
    # Two trials side by side, one CPU each; the short one leaves the long one alone. The long one is long
    # enough that its remaining epochs pay for a restart (study.tune.resizing.RESTART_PAYBACK times its
    # start-up, which imports torch): all six categories and batches of one make each epoch 48 steps. Once it
    # reports from its second CPU, the test asks it to stop (two threads on a machine shared with other jobs
    # can be slow).
    long_epochs = 100
    space = tmp_path / "tail.yaml"
    fixed = {name: value for name, value in tiny_config.items() if name != "epochs"} | {"batch_size": 1}
    space.write_text(yaml.safe_dump({"name": "tail", "fixed": fixed, "eval_every": "final",
                                     "grid": {"epochs": [1, long_epochs]}}), encoding="utf-8")
    folder = tmp_path / "results" / "tail"
    args = study_args(space, tiny_data, tmp_path / "results", "--categories", ALL_CATEGORIES, "--address",
                      ray_session)
    log = (tmp_path / "study.log").open("w")
    driver = subprocess.Popen([*RUN, *args], cwd=REPO_ROOT, env=child_env, stdout=log, stderr=log)
    grown = None
    try:
        deadline = time.monotonic() + KILL_WAIT_S
        while time.monotonic() < deadline and driver.poll() is None and grown is None:
            time.sleep(0.2)
            for trial_id, reported in tune_results(folder).items():
                if reported[-1].get(RESULT_INTRA_OP_THREADS) == SESSION_CPUS:
                    grown = trial_id
        assert grown is not None, (tmp_path / "study.log").read_text()[-3000:]
        request_stop(registry_name(str(folder.resolve())), grown)
        assert driver.wait(timeout=KILL_WAIT_S) == 0, (tmp_path / "study.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    study, trials, _, history = read_tables(folder)
    assert study["status"] == "finished"
    assert trials.set_index("trial_id").loc[grown, "epochs"] == long_epochs  # the long trial grew
    assert set(trials.status) == {"completed", "stopped"}
    # The study's own record of every report: restarted from its checkpoint, no epoch lost or repeated, and
    # the threads of every epoch, from one CPU to both.
    grown_history = history[history.trial_id == grown]
    epochs = list(grown_history.epoch)
    assert epochs == list(range(1, len(epochs) + 1))
    threads = list(grown_history[INTRA_OP_THREADS])
    assert threads[0] == 1 and threads[-1] == SESSION_CPUS and threads == sorted(threads)
    # Tune's result.json is not a full record across a resize: when Tune restarts the trial it replaces the file
    # with its last uploaded copy (ray.tune.logger.JsonLoggerCallback), which loses the results in between (seen
    # in CI: epochs 1, 3, 4, 5 there; another time every result before the restart). It must only never repeat
    # or go back.
    reported = [r for r in tune_results(folder)[grown] if not r.get("stopped")]
    logged = [r["epoch"] for r in reported]
    assert logged == sorted(set(logged)) and set(logged) <= set(epochs) and logged[-1] == epochs[-1]


def test_resources_change_only_at_checkpointed_results_that_do_not_end_the_trial() -> None:
    from ray.tune.result import SHOULD_CHECKPOINT

    from study.tune.resizing import SpareCPUs

    asked = {"t-stop"}
    allocate = SpareCPUs(stop_requested=asked.__contains__)
    trial = type("Trial", (), {"trial_id": "t-run"})()
    # Each of these returns before the controller is consulted (None: keep the trial's resources).
    for result in ({"epoch": 3},  # no checkpoint: a restart would lose the epoch
                   {"epoch": 3, SHOULD_CHECKPOINT: True, "final": True},
                   {"epoch": 3, SHOULD_CHECKPOINT: True, "stopped": True},
                   {"epoch": 3, SHOULD_CHECKPOINT: True, "error": "NonFiniteLossError: ..."}):
        assert allocate(None, trial, result, None) is None, result
    stopping = type("Trial", (), {"trial_id": "t-stop"})()
    assert allocate(None, stopping, {"epoch": 3, SHOULD_CHECKPOINT: True}, None) is None
    assert allocate.increase_by == {"CPU": 1} and not allocate.add_bundles


def test_a_trial_grows_only_when_its_remaining_epochs_pay_for_a_restart() -> None:
    from study.tune.resizing import RESTART_PAYBACK, worth_a_restart

    # 30 s so far over 3 iterations whose epochs take 5 s: 15 s went to start-up and evaluations
    outside = 30.0 - 3 * 5.0
    needed_epochs = RESTART_PAYBACK * outside / 5.0
    at = {"time_this_iter_s": 5.0, "time_total_s": 30.0, "training_iteration": 3, "epoch": 3}
    assert worth_a_restart({**at, "epochs": 3 + needed_epochs})
    assert not worth_a_restart({**at, "epochs": 3 + needed_epochs - 1})
    # the first result mixes the start-up into its epoch: too early to tell
    assert not worth_a_restart({"time_this_iter_s": 20.0, "time_total_s": 20.0, "training_iteration": 1,
                                "epoch": 1, "epochs": 1000})


def test_trials_that_are_not_resized_reuse_one_actor_and_compute_the_same(
        tmp_path: Path, tiny_data: Path, ray_session: str, child_env: dict[str, str],
        tiny_config: dict[str, Any]) -> None:
    # One trial at a time, --no-resize: each trial after the first starts in the actor the previous one
    # left (Tune's actor reuse), which saves a new Ray worker process and its imports; the metrics are those
    # of fresh actors (the same grid with resizing, where every trial gets its own actor).
    grid = {"noise_intensity": [0.5, 1.0, 2.0]}
    space = tmp_path / "reuse.yaml"
    space.write_text(yaml.safe_dump({"name": "reuse", "fixed": tiny_config, "eval_every": "final", "grid": grid}),
                     encoding="utf-8")
    common = ("--address", ray_session, "--max-concurrent", "1")
    runs = {"reused": ("--no-resize",), "fresh": ()}
    metrics, pids = {}, {}
    for label, extra in runs.items():
        args = study_args(space, tiny_data, tmp_path / label, *common, *extra)
        done = subprocess.run([*RUN, *args], cwd=REPO_ROOT, env=child_env, capture_output=True, text=True,
                              timeout=KILL_WAIT_S, check=False)
        assert done.returncode == 0, done.stderr[-3000:]
        folder = tmp_path / label / "reuse"
        _, trials, _, _ = read_tables(folder)
        metrics[label] = trials.set_index("noise_intensity")[list(METRIC_NAMES)].sort_index()
        pids[label] = {reported[-1]["pid"] for reported in tune_results(folder).values()}
        if label == "reused":
            assert "reuse Ray's trial actors (--no-resize)" in done.stderr
    assert len(pids["reused"]) == 1, pids  # three trials, one actor process
    assert len(pids["fresh"]) == len(grid["noise_intensity"]), pids
    pd.testing.assert_frame_equal(metrics["reused"], metrics["fresh"], check_exact=True)


def test_trials_grow_only_where_a_node_has_a_cpu_more_than_a_trial_takes() -> None:
    from study.tune.cluster import ClusterResources, WorkerShape, trials_can_grow

    def on(node_cpus: float, cpus: float = 2 * 1.0) -> ClusterResources:
        return ClusterResources(cpus=cpus, gpus=0.0, node_cpus=node_cpus, node_gpus=0.0, memory=1e9)

    one_cpu_trial = WorkerShape(workers=1, cpus=1.0, gpus=0.0)
    assert trials_can_grow(one_cpu_trial, on(node_cpus=2.0))
    assert not trials_can_grow(one_cpu_trial, on(node_cpus=1.0))  # two 1-CPU nodes: a bundle spans no nodes
    assert not trials_can_grow(WorkerShape(workers=1, cpus=2.0, gpus=0.0), on(node_cpus=2.0))
    assert not trials_can_grow(WorkerShape(workers=2, cpus=1.0, gpus=0.0), on(node_cpus=4.0, cpus=4.0))  # Train
