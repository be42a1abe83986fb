"""What the study platform's tests share: the study command, its arguments, and reading a study folder."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd

from study.protocol import HISTORY_FILE, PER_CATEGORY_FILE, RAY_DIR, STUDY_FILE, TRAIN_RUNS, TRIALS_FILE

REPO_ROOT = Path(__file__).resolve().parents[2]
# The study command as a user types it (a script run from the repository root).
RUN = [sys.executable, str(REPO_ROOT / "study" / "run.py")]
CATEGORIES = "brick,hex_nut"
# The session's local Ray (tests/study/conftest.py): 2 CPUs, as the machine the platform was built on.
SESSION_CPUS = 2
CLI_TIMEOUT_S = 300


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
