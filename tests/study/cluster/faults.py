"""Faults injected into studies on a local multi-node cluster, and what came out of them.

Shared by the cluster tests (which assert on an :class:`Outcome`) and ``benchmarks/reliability.py`` (which
runs each fault several times and counts). Every study runs as a user runs it, ``python study/run.py`` in a
subprocess; faults are injected by PID: every process of a worker node or of the head node at once
(:meth:`LocalCluster.kill_node`: a machine that vanishes), or the study's own process (``kill -9``).

What "between epochs" means here: the fault is injected as soon as the study's tables show the trial with
at least :data:`KILL_AFTER_EPOCHS` epochs reported (each with its checkpoint), while it trains the next one.
"""

from __future__ import annotations

import json
import math
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from study.protocol import METRIC_NAMES
from study.tune.local_cluster import LocalCluster, Node
from tests.conftest import TINY_CONFIG
from tests.study.helpers import REPO_ROOT, RUN, saved_epochs, study_args

# The grid of the undisturbed reference and the node-death study: five one-CPU trials, two at a time on the two
# worker nodes. Five, so that after a node dies, its trial resumes on the survivor and the replacement joins,
# trials are still waiting to start (the replacement takes a few seconds to join, a trial about ten to run).
GRID = {"noise_intensity": [0.25, 0.5, 1.0, 2.0, 4.0]}
# The undisturbed reference: the first four (two rounds of two trials; a fault hits one of the first three).
REFERENCE_GRID = {"noise_intensity": GRID["noise_intensity"][:4]}
# The driver- and head-death studies: one trial finishes, one runs when the driver dies, one waits.
SHORT_GRID = {"noise_intensity": GRID["noise_intensity"][:3]}
# Enough epochs that a fault lands while a trial trains (an epoch of the tiny model takes a fraction of a second).
EPOCHS = 16
# A custom resource of the head node only, for the placement groups the leak test leaves behind (they must
# never take a worker's CPU).
LEAK_RESOURCE = "leak_probe"
LEAK_RESOURCE_UNITS = 4


def write_space(folder: Path, name: str, *, grid: dict | None = None, epochs: int = EPOCHS) -> Path:
    """A grid space on the tiny model: one checkpoint per epoch, evaluated after the last one, no ASHA."""
    path = folder / f"{name}.yaml"
    content = {"name": name, "fixed": {**TINY_CONFIG, "epochs": epochs}, "grid": grid or GRID,
               "eval_every": "final", "scheduler": "none"}
    path.write_text(yaml.safe_dump(content), encoding="utf-8")
    return path


def cluster_args(space: Path, data: Path, results: Path, cluster: LocalCluster, storage: Path,
                 *extra: str) -> list[str]:
    """The study's command line against the cluster, with the shared storage folder."""
    return study_args(space, data, results, "--address", cluster.address, "--storage", str(storage), *extra)


KILL_AFTER_EPOCHS = 2
# The environment change of a study whose driver is killed: Tune saves its state at every step. A tiny trial's
# 16 epochs can take a second, less than the study's 2-s save period, and the kill must land while a saved
# state knows a checkpoint of a running trial (see driver_killed).
SAVE_STATE_EVERY_STEP = {"TUNE_GLOBAL_CHECKPOINT_S": "0"}
POLL_S = 0.05
STUDY_TIMEOUT_S = 300
GRID_KEY = "noise_intensity"


def read_trials(folder: Path) -> pd.DataFrame:
    """``trials.csv`` of a study folder (node ids as text); empty before the study wrote it."""
    path = folder / "trials.csv"
    if not path.is_file():
        return pd.DataFrame()
    return pd.read_csv(path, dtype={"trial_id": str, "error": str, "node_id": str})


def tune_results(experiment: Path) -> dict[str, list[dict[str, Any]]]:
    """Every result Tune recorded, per trial id, in order (``<storage>/<name>/tune/*/result.json``)."""
    found: dict[str, list[dict[str, Any]]] = {}
    for path in sorted(experiment.glob("*/result.json")):
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            found.setdefault(rows[0]["trial_id"], []).extend(rows)
    return found


@dataclass
class StudyRun:
    """A study command running in the background, its results folder and its shared storage."""

    process: subprocess.Popen
    folder: Path
    experiment: Path  # Tune's experiment folder in the shared storage
    log_path: Path

    def trials(self) -> pd.DataFrame:
        return read_trials(self.folder)

    def wait(self, timeout_s: float = STUDY_TIMEOUT_S) -> int:
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()  # by its PID: the study we started
            self.process.wait(timeout=60)
            raise

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.is_file() else ""

    def wait_for(self, condition: Callable[[pd.DataFrame], Any], what: str,
                 timeout_s: float = STUDY_TIMEOUT_S) -> Any:
        """Poll ``trials.csv`` until ``condition`` returns something truthy (returned); fails if the study
        ends first or the time runs out, with the end of its log."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AssertionError(f"study ended (code {self.process.returncode}) before {what}:\n"
                                     f"{self.log()[-3000:]}")
            trials = self.trials()
            found = condition(trials) if len(trials) else None
            if found is not None and found is not False and not (isinstance(found, pd.DataFrame) and found.empty):
                return found
            time.sleep(POLL_S)
        raise AssertionError(f"timed out waiting for {what}:\n{self.log()[-3000:]}")


def start_study(args: list[str], env: dict[str, str], folder: Path, experiment: Path,
                log_path: Path) -> StudyRun:
    log = log_path.open("w")
    process = subprocess.Popen([*RUN, *args], cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return StudyRun(process, folder, experiment, log_path)


@dataclass
class Outcome:
    """What a study that met a fault ended with (see :func:`node_dies`, :func:`driver_killed`, ...)."""

    fault: str
    exit_code: int
    status: str  # study.json's, "" when there is none
    grid: list[float]  # the values of the study's grid: one trial each
    trials: pd.DataFrame  # the final trials.csv, indexed by the grid's parameter
    results: dict[str, list[dict[str, Any]]]  # every Tune result per trial id
    fault_time: float  # time.time() when the fault was injected
    victims: list[str] = field(default_factory=list)  # the trials that were running when it hit
    finished_before: list[str] = field(default_factory=list)  # trials completed before the fault
    seconds_to_exit: float | None = None  # from the fault to the study's exit
    last_line: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def completed(self) -> bool:
        return self.exit_code == 0 and self.status == "finished"

    def lost(self) -> int:
        """Trials of the study's grid that it does not have as completed."""
        done = set(self.trials.index[self.trials.status == "completed"]) if len(self.trials) else set()
        return sum(1 for key in self.grid if key not in done)

    def rerun(self) -> list[str]:
        """Trials that trained again what they had trained: one that reported its first epoch twice (restarted
        from scratch), or one completed before the fault that trained after it.

        A completed trial whose only report after the fault is its final epoch again was not trained: Tune
        had not saved that it ended (the driver died in between) and restarted it from its final checkpoint,
        which the trial reports as it is (see ``TrialWorker.run``).
        """
        again = []
        for trial_id, rows in self.results.items():
            trained = [r["epoch"] for r in rows if "epoch" in r and not r.get("error")]
            after = [r["epoch"] for r in rows if r.get("timestamp", 0) > self.fault_time and "epoch" in r]
            re_reported_final = len(after) == 1 and trained and after[0] == max(trained)
            if trained.count(1) > 1 or (trial_id in self.finished_before and after and not re_reported_final):
                again.append(trial_id)
        return again

    def epochs_repeated(self) -> int:
        """Epochs trained twice: reported again after a resume from a checkpoint older than the last report
        (a final epoch reported again from its own checkpoint is not counted, see :meth:`rerun`)."""
        repeated = 0
        for rows in self.results.values():
            epochs = [r["epoch"] for r in rows if "epoch" in r and not r.get("error")]
            repeated += len(epochs) - len(set(epochs))
            if len(epochs) >= 2 and epochs[-1] == epochs[-2] == max(epochs):
                repeated -= 1
        return repeated

    def equal_metrics(self, reference: pd.DataFrame) -> bool:
        """Every completed trial that the reference ran too (same grid value, same seed) ends with the
        reference's final metrics, to the last digit; the trials the fault hit must be among them."""
        done = self.trials[self.trials.status == "completed"] if len(self.trials) else self.trials
        done = done[done.index.isin(reference.index)]
        hit = set(self.victims)
        if not len(done) or not hit <= set(done.trial_id):
            return False
        return all(done.loc[key, name] == reference.loc[key, name] or
                   (math.isnan(done.loc[key, name]) and math.isnan(reference.loc[key, name]))
                   for key in done.index for name in METRIC_NAMES)

    def nodes_of(self, trial_id: str) -> list[str]:
        """The node ids of a trial's reports, in order, without repeats."""
        seen: list[str] = []
        for row in self.results.get(trial_id, []):
            node = row.get("node_id")
            if node and (not seen or seen[-1] != node):
                seen.append(node)
        return seen


def outcome_of(fault: str, run: StudyRun, code: int, fault_time: float, **extra: Any) -> Outcome:
    """The :class:`Outcome` of a study that has ended, from its tables, ``study.json`` and Tune's results."""
    trials = run.trials()
    study_file = run.folder / "study.json"
    study = json.loads(study_file.read_text()) if study_file.is_file() else {}
    grid = list((study.get("space") or {}).get("grid", {}).get(GRID_KEY, []))
    lines = [line for line in run.log().splitlines() if line.strip()]
    return Outcome(fault=fault, exit_code=code, status=study.get("status", ""), grid=grid,
                   trials=trials.set_index(GRID_KEY) if len(trials) else trials,
                   results=tune_results(run.experiment), fault_time=fault_time,
                   last_line=lines[-1] if lines else "", **extra)


def _running_on(trials: pd.DataFrame, node_ids: set[str], epochs: int) -> pd.DataFrame:
    """Running trials on one of ``node_ids`` with at least KILL_AFTER_EPOCHS epochs and some left."""
    if "node_id" not in trials.columns:
        return pd.DataFrame()
    mask = ((trials.status == "running") & trials.node_id.isin(node_ids)
            & (trials.epochs_done >= KILL_AFTER_EPOCHS) & (trials.epochs_done < epochs - 1))
    return trials[mask]


# -------------------------------------------------------------------------------------------- faults ---

def node_dies(cluster: LocalCluster, run: StudyRun, epochs: int) -> Outcome:
    """Kill every process of the worker node a running trial is on (by PID), the trial's own process with
    them; once the trial has resumed on a surviving node, start a replacement node; wait for the study to end.

    Not the raylet alone: a trial process whose raylet died keeps training and reporting for up to ten
    seconds before it notices, so on a fast machine it could finish its last epochs on the dead node and the
    fault would miss the trial (a CI failure of this test).
    """
    workers = {node.node_id: node for node in cluster.workers()}
    victim_row = run.wait_for(lambda t: _running_on(t, set(workers), epochs), "a trial to run on a worker")
    victim_id = str(victim_row.trial_id.iloc[0])
    victim_node: Node = workers[str(victim_row.node_id.iloc[0])]
    finished = list(run.trials().query("status == 'completed'").trial_id)
    epochs_at_kill = int(victim_row.epochs_done.iloc[0])
    fault_time = time.time()
    cluster.kill_node(victim_node)
    survivors = {node_id for node_id in workers if node_id != victim_node.node_id}

    def resumed(trials: pd.DataFrame) -> bool:
        row = trials[trials.trial_id == victim_id]
        return bool(len(row)) and row.node_id.iloc[0] in survivors and row.epochs_done.iloc[0] > epochs_at_kill

    run.wait_for(resumed, "the trial to resume on the surviving node")
    # The replacement joins while trials still wait for a CPU (the grid has more trials than nodes).
    replacement = cluster.add_worker()
    joined = time.time()
    code = run.wait()
    return outcome_of("worker node killed mid-trial", run, code, fault_time, victims=[victim_id],
                      finished_before=finished,
                      details={"victim_node": victim_node.node_id, "survivors": sorted(survivors),
                               "replacement": replacement.node_id, "replacement_joined": joined,
                               "epochs_at_kill": epochs_at_kill})


def driver_killed(run: StudyRun, resume_args: list[str], env: dict[str, str], epochs: int,
                  log_path: Path) -> Outcome:
    """``kill -9`` the study once a trial completed and another one trains; then ``--resume`` it from
    another process and wait for it to end."""
    def ready(trials: pd.DataFrame) -> pd.DataFrame | None:
        if not (trials.status == "completed").any():
            return None
        running = trials[(trials.status == "running") & (trials.epochs_done >= KILL_AFTER_EPOCHS)
                         & (trials.epochs_done < epochs - 1)]
        # Tune's saved state knows a checkpoint of the trial, so --resume continues it rather than restarting
        running = running[[saved_epochs(run.experiment, tid) >= KILL_AFTER_EPOCHS for tid in running.trial_id]]
        return running if len(running) else None

    victims = run.wait_for(ready, "one completed and one running trial")
    finished = list(run.trials().query("status == 'completed'").trial_id)
    fault_time = time.time()
    run.process.send_signal(signal.SIGKILL)
    run.process.wait(timeout=60)
    resumed = start_study(resume_args, env, run.folder, run.experiment, log_path)
    code = resumed.wait()
    return outcome_of("driver killed with kill -9, then --resume", resumed, code, fault_time,
                      victims=list(victims.trial_id), finished_before=finished,
                      details={"killed_exit_code": run.process.returncode})


def head_dies(cluster: LocalCluster, run: StudyRun) -> Outcome:
    """SIGKILL every process of the head node (by PID) while a trial trains; the study must end by itself."""
    run.wait_for(lambda t: len(t) and (t.epochs_done >= 1).any() and (t.status == "running").any(),
                 "a trial to train")
    fault_time = time.time()
    cluster.kill_node(cluster.head)
    started = time.monotonic()
    code = run.wait()
    return outcome_of("head node killed mid-study", run, code, fault_time,
                      seconds_to_exit=time.monotonic() - started)
