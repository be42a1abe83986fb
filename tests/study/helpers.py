"""What the study platform's tests share: the study command, its arguments, and reading a study folder."""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from study.protocol import (
    HISTORY_FILE,
    PER_CATEGORY_FILE,
    RAY_DIR,
    STUDY_FILE,
    TRAIN_RUNS,
    TRIALS_FILE,
    TUNE_EXPERIMENT,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
# The study command as a user types it (a script run from the repository root).
RUN = [sys.executable, str(REPO_ROOT / "study" / "run.py")]
CATEGORIES = "brick,hex_nut"
# The session's local Ray (tests/study/conftest.py): 2 CPUs, as the machine the platform was built on.
SESSION_CPUS = 2
CLI_TIMEOUT_S = 300
# The status Tune saves for a trial that ended (completed, or stopped by the scheduler).
TUNE_TERMINATED = "TERMINATED"


def study_args(space: Path, data: Path, results_root: Path, *extra: str) -> list[str]:
    return ["--space", str(space), "--data", str(data), "--categories", CATEGORIES, "--results",
            str(results_root), "--no-examples", *extra]


def read_tables(folder: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """study.json, trials.csv, per_category.csv and history.csv of a study folder."""
    study = json.loads((folder / STUDY_FILE).read_text())
    trials = pd.read_csv(folder / TRIALS_FILE, dtype={"trial_id": str, "error": str})
    per_category = pd.read_csv(folder / PER_CATEGORY_FILE, dtype={"trial_id": str})
    history = pd.read_csv(folder / HISTORY_FILE, dtype={"trial_id": str})
    return study, trials, per_category, history


def final_run_folder(folder: Path, trial_id: str) -> Path:
    """The trial's own last checkpoint: the MAAE run folder its rank 0 wrote."""
    runs = sorted(p for p in (folder / RAY_DIR / TRAIN_RUNS / trial_id).glob("checkpoint_*") if p.is_dir())
    assert runs, f"no checkpoint for trial {trial_id}"
    return runs[-1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def run_cli(args: list[str], env: dict[str, str], cwd: Path = REPO_ROOT) -> subprocess.CompletedProcess:
    """``python study/run.py ARGS`` in a subprocess."""
    return subprocess.run([*RUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=CLI_TIMEOUT_S)


def assert_usage_error(out: subprocess.CompletedProcess, *fragments: str) -> None:
    """Exit code 2 and exactly one line on stderr, holding every fragment."""
    assert out.returncode == 2, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, out.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def kill_study_after_first_completed_trial(args: list[str], env: dict[str, str], folder: Path, log_path: Path,
                                           wait_s: float) -> pd.DataFrame:
    """Run ``study/run.py ARGS`` and ``kill -9`` it as soon as ``trials.csv`` shows a completed trial that Tune's
    saved experiment state marks terminated too (killing then, rather than once the next trial trains, keeps a
    fast machine from finishing the study between two polls; killing before Tune saved the trial as terminated
    would have ``--resume`` report that trial once more, and a search tell Optuna about a finished trial
    twice); returns the completed trials as the killed study recorded them."""
    with log_path.open("w") as log:
        driver = subprocess.Popen([*RUN, *args], cwd=REPO_ROOT, env=env, stdout=log, stderr=log)
        try:
            deadline = time.monotonic() + wait_s
            finished = pd.DataFrame()
            while time.monotonic() < deadline and driver.poll() is None:
                time.sleep(0.25)
                if (folder / TRIALS_FILE).is_file():
                    trials = pd.read_csv(folder / TRIALS_FILE, dtype={"trial_id": str})
                    finished = trials[trials.status == "completed"]
                    if len(finished) >= 1 and all(tune_state_terminated(folder, t) for t in finished.trial_id):
                        break
            assert driver.poll() is None, log_path.read_text()[-3000:]
            assert len(finished) >= 1, log_path.read_text()[-3000:]
            driver.send_signal(signal.SIGKILL)
            driver.wait(timeout=60)
        finally:
            if driver.poll() is None:
                driver.kill()
    return finished


def saved_trial_state(experiment: Path, trial_id: str) -> tuple[dict, dict] | None:
    """The trial's entry (its settings, its run metadata) in the experiment state Tune saved last in
    ``experiment``; None before Tune saved one with the trial, or while Tune rewrites the file."""
    states = list(experiment.glob("experiment_state-*.json"))
    if not states:
        return None
    try:  # Tune replaces the file whole; a read racing a write is retried at the next poll
        saved = json.loads(max(states, key=lambda p: p.stat().st_mtime).read_text())
        for trial_json, metadata_json in saved.get("trial_data", []):
            trial = json.loads(trial_json)
            if trial.get("trial_id") == trial_id:
                return trial, json.loads(metadata_json)
    except (OSError, ValueError):
        return None
    return None


def tune_state_terminated(folder: Path, trial_id: str) -> bool:
    """Whether the experiment state Tune saved last for the study in ``folder`` marks the trial terminated
    (a restore of the study then never runs or reports it again)."""
    entry = saved_trial_state(folder / RAY_DIR / TUNE_EXPERIMENT, trial_id)
    return entry is not None and entry[0].get("status") == TUNE_TERMINATED


def saved_epochs(experiment: Path, trial_id: str) -> int:
    """The last epoch that Tune's saved experiment state records for the trial (0 when none).

    Every epoch reports with its checkpoint, and Tune registers the checkpoint with the result before it saves
    its state, so a restore of the study resumes the trial from this epoch's checkpoint at the latest. A test
    that kills the driver waits for this rather than for the newest checkpoint on disk: Tune saves its state
    every 2 s, and a tiny trial checkpoints several times in between (the state then never catches up with
    the newest checkpoint, which made the driver-death test wait for a moment that never came).
    """
    entry = saved_trial_state(experiment, trial_id)
    if entry is None:
        return 0
    epoch = (entry[1].get("last_result") or {}).get("epoch")
    return int(epoch) if isinstance(epoch, int | float) else 0
