"""Benchmark: the default demo as a user runs it, now and on the baseline commit, and how busy it keeps the CPUs.

The default demo is ``python study/run.py --space search_spaces/ang.yaml`` (5 TPE trials, ASHA, on the embedded
data set), here at the sweep preset on both sides (:data:`PRESET_ARGS`). This benchmark runs it

- from this working tree (now), and
- from commit :data:`BASELINE_COMMIT` (before one-worker trials left Ray Train and before idle CPUs went to
  the running trials), checked out in a temporary ``git worktree`` and run with ``PYTHONPATH`` pointing at it
  (the virtual environment's editable install points at this working tree),

with the same space file (the baseline's ``search_spaces/ang.yaml``, which both versions read, so both run
the same trials), the same seeds, the same data, a warm feature cache on both sides (each side warms it with
its own code before it is timed), a warm cache of the patch baseline that today's final report shows (the
baseline's report has none; a user's second study on a data set reads it in seconds) and a results folder of
its own, one after the other, alternating over
``rounds``. ``demo_speedup_vs_baseline`` = the baseline's wall time / now's (medians). Whether the working
tree's own ``ang.yaml`` has changed since is recorded (``default_space_changed``).

While a demo runs, a sampler reads the machine's CPU times (``psutil.cpu_times()``, every
:data:`SAMPLE_S`): ``demo_cpu_utilisation`` = busy CPU-seconds / (wall time x CPUs) over the whole demo now
(busy: everything but idle and I/O wait). On a shared machine other jobs count too, so the same sampler also
adds up the CPU time of the demo's own process tree (the study and the Ray processes it starts), a lower
bound that other jobs do not inflate.

ASHA decides on results in the order they arrive, so how many epochs a demo trains varies from run to run;
each run's trained epochs are reported, with the speedup per trained epoch beside the plain one.

In ``--tiny`` mode nothing runs: the baseline commit must exist and the demo's command line must validate;
the numbers are ``null`` with the reason.
"""

from __future__ import annotations

import csv
import os
import subprocess
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_PRESET,
    PYTHON,
    REPO_ROOT,
    Outcome,
    Settings,
    at_least,
    info,
    interleave,
    median,
    warm_report_baseline,
)
from maae.config import preset

NAME = "demo"
BASELINE_COMMIT = "eaf7c26"
DEMO_SPACE = Path("search_spaces") / "ang.yaml"  # inside each tree
STUDY_SCRIPT = Path("study") / "run.py"
SAMPLE_S = 1.0
TARGET_UTILISATION = 0.85
TARGET_SPEEDUP = 1.6
ROUNDS = 1
DEMO_TIMEOUT_S = 3600
WARM_TIMEOUT_S = 1200
GIT_TIMEOUT_S = 120
# The preset each side runs. The baseline's quick preset is today's sweep preset (128 px, constant learning rate,
# the trainable FFM), so today's tree runs that one; today's quick preset (192 px) costs 2.2x per epoch and
# would compare two different models.
PRESET_ARGS: dict[str, tuple[str, ...]] = {"baseline": (), "now": ("--preset", BENCH_PRESET)}
# The demo as a user runs it: no thread settings of the caller's shell, no PYTHONPATH but the tree's.
UNSET_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "PYTHONPATH")
# CPU-time fields that are not time of their own: Linux counts guest time inside user time.
GUEST_FIELDS = ("guest", "guest_nice")
IDLE_FIELDS = ("idle", "iowait")


# ------------------------------------------------------------------------------------------ sampling ---

def _busy_and_total(times: Any) -> tuple[float, float]:
    """(busy, total) CPU-seconds of the machine from ``psutil.cpu_times()``."""
    values = times._asdict()
    total = sum(value for name, value in values.items() if name not in GUEST_FIELDS)
    idle = sum(values.get(name, 0.0) for name in IDLE_FIELDS)
    return total - idle, total


@dataclass
class CpuSampler:
    """Samples the machine's CPU times and a process tree's CPU time every ``interval`` seconds, in a thread."""

    root_pid: int
    interval: float = SAMPLE_S
    timeline: list[tuple[float, float]] = field(default_factory=list)  # (seconds since start, busy fraction)
    _tree: dict[tuple[int, float], float] = field(default_factory=dict)  # (pid, created) -> last CPU seconds
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        import psutil

        self._psutil = psutil
        self.cpus = psutil.cpu_count() or 1
        self.started = time.perf_counter()
        self._first = _busy_and_total(psutil.cpu_times())
        self._last = self._first
        self._thread = threading.Thread(target=self._loop, name="cpu-sampler", daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def _sample(self) -> None:
        now = _busy_and_total(self._psutil.cpu_times())
        busy, total = now[0] - self._last[0], now[1] - self._last[1]
        self.timeline.append((round(time.perf_counter() - self.started, 2), busy / total if total > 0 else 0.0))
        self._last = now
        self._sample_tree()

    def _sample_tree(self) -> None:
        psutil = self._psutil
        try:
            root = psutil.Process(self.root_pid)
            processes = [root, *root.children(recursive=True)]
        except psutil.Error:
            return
        for process in processes:
            try:
                with process.oneshot():
                    times = process.cpu_times()
                    self._tree[(process.pid, process.create_time())] = times.user + times.system
            except psutil.Error:
                continue  # ended between the listing and the read: its last sample stays

    def stop(self) -> dict[str, Any]:
        self._sample_tree()
        self._stop.set()
        self._thread.join()
        self._sample()
        wall = time.perf_counter() - self.started
        busy = self._last[0] - self._first[0]
        tree = sum(self._tree.values())
        return {"wall_seconds": wall, "cpus": self.cpus, "busy_cpu_seconds": busy,
                "utilisation": busy / (wall * self.cpus), "process_tree_cpu_seconds": tree,
                "process_tree_utilisation": tree / (wall * self.cpus), "sample_seconds": self.interval,
                "timeline": self.timeline}


# ---------------------------------------------------------------------------------------------- runs ---

def _environment(tree: Path) -> dict[str, str]:
    env = {key: value for key, value in os.environ.items() if key not in UNSET_VARIABLES}
    env["PYTHONPATH"] = str(tree)
    return env


def demo_command(tree: Path, space: Path, results: Path, name: str, preset_args: Sequence[str] = ()) -> list[str]:
    """The default demo of ``tree`` on the space file ``space``, with only its results moved to a scratch
    folder (and ``preset_args``, see :data:`PRESET_ARGS`)."""
    return [PYTHON, str(tree / STUDY_SCRIPT), "--space", str(space), "--results", str(results), "--name", name,
            *preset_args]


def warm_command(tree: Path, space: Path, results: Path, name: str, preset_args: Sequence[str] = ()) -> list[str]:
    """The tree's own code computing the demo's frozen-backbone features (the demo's first step), untimed."""
    args = demo_command(tree, space, results, name, preset_args)[2:]
    code = ("import sys; from study.cli import build_parser, validate, warm_feature_cache; "
            "warm_feature_cache(validate(build_parser().parse_args(sys.argv[1:])))")
    return [PYTHON, "-c", code, *args]


def _trials(study_dir: Path) -> list[dict[str, str]]:
    path = study_dir / "trials.csv"
    if not path.is_file():
        return []
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


class _Runner:
    def __init__(self, settings: Settings, trees: dict[str, Path], space: Path) -> None:
        self.folder = settings.scratch(NAME)
        self.trees = trees
        self.space = space
        self.count = 0
        self.runs: dict[str, list[dict[str, Any]]] = {label: [] for label in trees}

    def warm(self, label: str) -> float:
        tree = self.trees[label]
        started = time.perf_counter()
        done = subprocess.run(warm_command(tree, self.space, self.folder, f"warm-{label}", PRESET_ARGS[label]),
                              cwd=tree,
                              env=_environment(tree),
                              capture_output=True, text=True, timeout=WARM_TIMEOUT_S, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"warming the feature cache ({label}) failed: {done.stderr.strip()[-1500:]}")
        return time.perf_counter() - started

    def demo(self, label: str) -> float:
        tree = self.trees[label]
        self.count += 1
        name = f"demo-{label}-{self.count}"
        log_path = self.folder / f"{name}.log"
        with open(log_path, "w") as log:
            process = subprocess.Popen(demo_command(tree, self.space, self.folder, name, PRESET_ARGS[label]), cwd=tree,
                                       env=_environment(tree), stdout=log, stderr=subprocess.STDOUT)
            sampler = CpuSampler(process.pid)
            try:
                code = process.wait(timeout=DEMO_TIMEOUT_S)
            finally:
                if process.poll() is None:
                    process.kill()
                    process.wait()
                cpu = sampler.stop()
        if code != 0:
            tail = " | ".join(log_path.read_text().splitlines()[-8:])
            raise RuntimeError(f"the demo ({label}) exited with {code}: {tail}")
        trials = _trials(self.folder / name)
        statuses: dict[str, int] = {}
        for row in trials:
            statuses[row["status"]] = statuses.get(row["status"], 0) + 1
        epochs = sum(int(float(row["epochs_done"])) for row in trials if row.get("epochs_done"))
        self.runs[label].append({"name": name, "seconds": cpu["wall_seconds"], "cpu": cpu, "trials": len(trials),
                                 "statuses": statuses, "epochs_trained": epochs, "log": str(log_path)})
        return cpu["wall_seconds"]


# ------------------------------------------------------------------------------------------ baseline ---

def _git(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                          check=False)


def add_baseline_worktree(folder: Path) -> Path:
    """A detached ``git worktree`` of :data:`BASELINE_COMMIT` under ``folder`` (removed by
    :func:`remove_worktree`); the repository's branch, index and working tree are not touched."""
    path = folder / f"baseline-{BASELINE_COMMIT}"
    done = _git("worktree", "add", "--detach", str(path), BASELINE_COMMIT)
    if done.returncode != 0:
        raise RuntimeError(f"git worktree add {BASELINE_COMMIT} failed: {done.stderr.strip()[-500:]}")
    return path


def remove_worktree(path: Path) -> None:
    _git("worktree", "remove", "--force", str(path))
    _git("worktree", "prune")


def _check_tiny(settings: Settings) -> str:
    """What --tiny checks instead of running: the baseline commit exists and the demo on its space validates
    with this working tree's code."""
    from study.cli import build_parser, validate

    found = _git("show", f"{BASELINE_COMMIT}:{DEMO_SPACE.as_posix()}")
    if found.returncode != 0:
        raise RuntimeError(f"baseline commit {BASELINE_COMMIT} (or its {DEMO_SPACE}) is not in this repository")
    space = settings.scratch(NAME) / f"ang-{BASELINE_COMMIT}.yaml"
    space.write_text(found.stdout)
    command = demo_command(REPO_ROOT, space, settings.scratch(NAME), "validate", PRESET_ARGS["now"])
    plan = validate(build_parser().parse_args(command[2:]))
    return (f"baseline {BASELINE_COMMIT} found; the demo on its space validated now: {plan.space.total_trials} "
            f"trials searching {', '.join(plan.space.searched)}")


def _null(reason: str, details: dict[str, Any]) -> Outcome:
    details["null_reason"] = reason
    return Outcome({"demo_cpu_utilisation": None, "demo_speedup_vs_baseline": None},
                   [at_least(NAME, "CPU utilisation over the demo (now)", None, TARGET_UTILISATION),
                    at_least(NAME, f"speedup vs {BASELINE_COMMIT} (wall time)", None, TARGET_SPEEDUP, "x")], details)


def run(settings: Settings) -> Outcome:
    details: dict[str, Any] = {"baseline_commit": BASELINE_COMMIT, "space_file": str(DEMO_SPACE),
                               "command": " ".join(demo_command(Path("TREE"), Path("SPACE"), Path("RESULTS"),
                                                                "NAME", PRESET_ARGS["now"])),
                               "rounds": ROUNDS, "sample_seconds": SAMPLE_S}
    if settings.tiny:
        try:
            reason = "not run in --tiny mode: one demo takes minutes (" + _check_tiny(settings) + ")"
        except Exception as err:  # noqa: BLE001 - report why the check failed
            reason = f"demo not runnable: {type(err).__name__}: {err}"
        return _null(reason, details)

    baseline = add_baseline_worktree(settings.scratch(NAME))
    try:
        space = settings.scratch(NAME) / f"ang-{BASELINE_COMMIT}.yaml"  # outside both trees, read by both
        space.write_text((baseline / DEMO_SPACE).read_text())
        changed = space.read_text() != (REPO_ROOT / DEMO_SPACE).read_text()
        runner = _Runner(settings, {"baseline": baseline, "now": REPO_ROOT}, space)
        details["warm_seconds"] = {label: runner.warm(label) for label in runner.trees}
        details["report_baseline_fill_seconds"] = warm_report_baseline(
            preset(BENCH_PRESET), settings.data_root, None, settings.scratch(NAME) / "report-baseline")
        samples = interleave({label: (lambda label=label: runner.demo(label)) for label in runner.trees}, ROUNDS)
    finally:
        remove_worktree(baseline)
    baseline_s, now_s = median(samples["baseline"]), median(samples["now"])
    speedup = baseline_s / now_s
    epochs = {label: median([run["epochs_trained"] for run in runs]) for label, runs in runner.runs.items()}
    per_epoch = {label: median([run["seconds"] / run["epochs_trained"] for run in runs if run["epochs_trained"]])
                 for label, runs in runner.runs.items()}
    utilisation = {label: median([run["cpu"]["utilisation"] for run in runs]) for label, runs in runner.runs.items()}
    tree_share = {label: median([run["cpu"]["process_tree_utilisation"] for run in runs])
                  for label, runs in runner.runs.items()}
    details.update({"default_space_changed": changed, "seconds": samples, "runs": runner.runs,
                    "median_seconds": {"baseline": baseline_s, "now": now_s}, "epochs_trained": epochs,
                    "seconds_per_trained_epoch": per_epoch, "utilisation": utilisation,
                    "process_tree_utilisation": tree_share})
    checks = [at_least(NAME, "CPU utilisation over the demo (now)", utilisation["now"], TARGET_UTILISATION),
              at_least(NAME, f"speedup vs {BASELINE_COMMIT} (wall time)", speedup, TARGET_SPEEDUP, "x"),
              info(NAME, "demo now", now_s, "s"),
              info(NAME, f"demo at {BASELINE_COMMIT}", baseline_s, "s"),
              info(NAME, "epochs trained now / baseline", epochs["now"] / epochs["baseline"]),
              info(NAME, "speedup per trained epoch", per_epoch["baseline"] / per_epoch["now"], "x"),
              info(NAME, f"CPU utilisation at {BASELINE_COMMIT}", utilisation["baseline"]),
              info(NAME, "CPU share of the demo's own processes (now)", tree_share["now"]),
              info(NAME, f"CPU share of the demo's own processes ({BASELINE_COMMIT})", tree_share["baseline"])]
    return Outcome({"demo_cpu_utilisation": utilisation["now"], "demo_speedup_vs_baseline": speedup}, checks,
                   details)
