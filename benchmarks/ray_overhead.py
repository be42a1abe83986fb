"""Benchmark 2: what running trainings through the study platform (Ray Tune + Ray Train) costs.

The same four tiny trainings (the quick preset on one category, seeds 0-3, grid file
``benchmarks/ray_overhead.yaml``) run as

- four sequential ``python -m maae train --set seed=N`` commands, and
- one ``python study/run.py --space benchmarks/ray_overhead.yaml`` command (Ray start-up included),

both timed as whole commands, alternating, and compared by their medians. To compare like with like, both
give each training the same number of threads (``OMP_NUM_THREADS`` of the plain runs = the study's
``--cpus-per-worker``) and run one training at a time (``--max-concurrent 1``); the frozen-backbone features
are read from the same warm cache. The full run also times the study with Ray's own concurrency (as many
trials at once as the CPUs hold) once, and checks that the study and the plain runs got the same metrics.

In ``--tiny`` mode Ray is not started (its start-up alone exceeds the smoke budget): the study's command
line is only validated, and the ratio is ``null`` with the reason.
"""

from __future__ import annotations

import csv
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    FEATURE_CACHE_ENV,
    PYTHON,
    REPO_ROOT,
    CommandResult,
    Outcome,
    Settings,
    at_most,
    info,
    interleave,
    median,
    run_command,
)
from maae.data import resolve_categories

NAME = "ray_overhead"
SPACE_FILE = Path(__file__).resolve().parent / "ray_overhead.yaml"
STUDY_SCRIPT = REPO_ROOT / "study" / "run.py"
TRIALS = 4
TARGET_RATIO = 1.15
COMMAND_TIMEOUT_S = 1200
COMPARED_METRIC = "image_auroc"
# Metrics of the same seed may differ by float noise between processes, not more.
SAME_METRIC_TOLERANCE = 1e-6
RESULTS_NOTE = ("a trial runs under torch.distributed (Ray Train initialises it even for one worker), where maae's "
                "TrainingSession shuffles with a DistributedSampler instead of the plain run's RandomSampler: the "
                "data order, and so the metrics, can differ from the second epoch on")


@dataclass(frozen=True)
class Sizes:
    epochs: int
    rounds: int
    concurrent_run: bool


FULL = Sizes(epochs=2, rounds=2, concurrent_run=True)


class StudyFailedError(RuntimeError):
    """The study command did not finish: the benchmark reports null with this reason."""


def _train_command(data: Path, category: str, epochs: int, seed: int, out: Path) -> list[str]:
    return [PYTHON, "-m", "maae", "train", "--data", str(data), "--preset", "quick", "--categories", category,
            "--set", f"epochs={epochs}", "--set", f"seed={seed}", "--out", str(out)]


def _study_command(data: Path, category: str, epochs: int, results: Path, name: str, threads: int,
                   concurrent: bool) -> list[str]:
    command = [PYTHON, str(STUDY_SCRIPT), "--space", str(SPACE_FILE), "--data", str(data), "--categories",
               category, "--epochs",
               str(epochs), "--results", str(results), "--name", name, "--num-cpus", str(os.cpu_count() or 1),
               "--cpus-per-worker", str(threads), "--no-examples"]
    return command if concurrent else [*command, "--max-concurrent", "1"]


class _Runner:
    """Numbered runs of both commands, each in its own output folder."""

    def __init__(self, settings: Settings, category: str, epochs: int) -> None:
        self.folder = settings.scratch(NAME)
        self.data = settings.data_root
        self.category = category
        self.epochs = epochs
        self.threads = settings.threads
        self.env = {FEATURE_CACHE_ENV: str(settings.feature_cache_dir)}
        self.count = 0
        self.sequential_runs: list[list[Path]] = []
        self.study_runs: list[Path] = []
        self.study_logs: list[str] = []

    def sequential(self) -> float:
        self.count += 1
        outs = [self.folder / f"plain-{self.count}-seed{seed}" for seed in range(TRIALS)]
        total = 0.0
        for seed, out in enumerate(outs):
            done = run_command(_train_command(self.data, self.category, self.epochs, seed, out),
                               env={**self.env, "OMP_NUM_THREADS": str(self.threads)}, timeout=COMMAND_TIMEOUT_S)
            if done.returncode != 0:
                raise RuntimeError(f"python -m maae train failed: {done.tail()}")
            total += done.seconds
        self.sequential_runs.append(outs)
        return total

    def study(self, concurrent: bool = False) -> float:
        self.count += 1
        name = f"ray-overhead-{self.count}"
        command = _study_command(self.data, self.category, self.epochs, self.folder, name, self.threads, concurrent)
        done = run_command(command, env=self.env, timeout=COMMAND_TIMEOUT_S)
        self._check(done)
        self.study_runs.append(self.folder / name)
        self.study_logs.append(done.stderr)
        return done.seconds

    @staticmethod
    def _check(done: CommandResult) -> None:
        if done.returncode != 0:
            raise StudyFailedError(f"study/run.py exited with {done.returncode}: {done.tail()}")


def _study_metrics(study_dir: Path) -> dict[int, float]:
    with open(study_dir / "trials.csv", newline="") as handle:
        return {int(row["seed"]): float(row[COMPARED_METRIC]) for row in csv.DictReader(handle)}


def _trial_seconds(study_dir: Path) -> dict[int, float]:
    """Each trial's own time from its worker's start to its last report (``trials.csv`` column ``seconds``)."""
    with open(study_dir / "trials.csv", newline="") as handle:
        return {int(row["seed"]): float(row["seconds"]) for row in csv.DictReader(handle) if row.get("seconds")}


def _plain_metrics(outs: list[Path]) -> dict[int, float]:
    return {seed: float(json.loads((out / "metrics.json").read_text())[COMPARED_METRIC])
            for seed, out in enumerate(outs)}


def _ray_ready_seconds(log: str) -> float | None:
    """The study's own report of how long starting Ray took ("Ray ready in 6.4s")."""
    marker = "Ray ready in "
    for line in log.splitlines():
        if marker in line:
            try:
                return float(line.split(marker, 1)[1].split("s", 1)[0])
            except ValueError:
                return None
    return None


def _validate_only(settings: Settings, category: str) -> str:
    """Check the study command line without starting Ray (what --tiny does instead of running it)."""
    from study.cli import build_parser, validate

    command = _study_command(settings.data_root, category, 1, settings.scratch(NAME), "ray-overhead-validate",
                             settings.threads, False)
    plan = validate(build_parser().parse_args(command[2:]))
    return f"validated: {plan.space.total_trials} trials of {plan.space.name}"


def run(settings: Settings) -> Outcome:
    category = resolve_categories(settings.data_root, None)[0]
    if settings.tiny:
        try:
            status = _validate_only(settings, category)
            reason = "not run in --tiny mode: Ray start-up alone exceeds the smoke budget (" + status + ")"
        except Exception as err:  # noqa: BLE001 - the study platform is another module; report why it failed
            reason = f"study/run.py is not runnable: {type(err).__name__}: {err}"
        return Outcome({"ray_overhead_ratio": None},
                       [at_most(NAME, "study / sequential wall time", None, TARGET_RATIO, "x")],
                       {"ratio_null_reason": reason, "space_file": str(SPACE_FILE)})

    sizes = FULL
    runner = _Runner(settings, category, sizes.epochs)
    warm_up = run_command(_train_command(settings.data_root, category, sizes.epochs, 0, runner.folder / "warm-up"),
                          env={**runner.env, "OMP_NUM_THREADS": str(settings.threads)}, timeout=COMMAND_TIMEOUT_S)
    details: dict[str, Any] = {
        "trials": TRIALS, "category": category, "epochs": sizes.epochs, "threads_per_training": settings.threads,
        "space_file": str(SPACE_FILE), "warm_up_seconds": warm_up.seconds,
        "commands": {
            "sequential": " ".join(_train_command(settings.data_root, category, sizes.epochs, 0, Path("OUT")))
            + " (x4 seeds)",
            "study": " ".join(_study_command(settings.data_root, category, sizes.epochs, Path("RESULTS"), "NAME",
                                             settings.threads, False)),
        },
    }
    try:
        samples = interleave({"sequential": runner.sequential, "study": runner.study}, sizes.rounds)
    except StudyFailedError as err:
        details["ratio_null_reason"] = str(err)
        return Outcome({"ray_overhead_ratio": None},
                       [at_most(NAME, "study / sequential wall time", None, TARGET_RATIO, "x")], details)
    sequential_s, study_s = median(samples["sequential"]), median(samples["study"])
    ratio = study_s / sequential_s
    overhead = study_s - sequential_s
    details.update({
        "seconds": samples, "median_seconds": {"sequential": sequential_s, "study": study_s},
        "overhead_seconds": overhead, "overhead_seconds_per_trial": overhead / TRIALS,
        "ray_ready_seconds": [_ray_ready_seconds(log) for log in runner.study_logs],
        "extra_training_seconds_per_trial_to_reach_target": max(0.0, (study_s - TARGET_RATIO * sequential_s)
                                                                 / ((TARGET_RATIO - 1) * TRIALS)),
        "extra_training_note": "estimate: how much longer each training would have to be for the ratio to reach "
                               "the target, if the overhead stayed what it is",
    })
    plain = _plain_metrics(runner.sequential_runs[0])
    study = _study_metrics(runner.study_runs[0])
    difference = max(abs(plain[seed] - study[seed]) for seed in range(TRIALS))
    details["same_results"] = {"metric": COMPARED_METRIC, "plain": plain, "study": study,
                               "max_abs_difference": difference, "same": difference <= SAME_METRIC_TOLERANCE,
                               "note": RESULTS_NOTE}
    details["trial_seconds_reported_by_workers"] = _trial_seconds(runner.study_runs[0])
    checks = [at_most(NAME, "study / sequential wall time", ratio, TARGET_RATIO, "x"),
              info(NAME, "sequential (4 x maae train)", sequential_s, "s"),
              info(NAME, "study/run.py (one trial at a time)", study_s, "s")]
    if sizes.concurrent_run:
        concurrent_s = runner.study(concurrent=True)
        details["concurrent_study_seconds"] = concurrent_s
        details["concurrent_ratio"] = concurrent_s / sequential_s
        checks.append(info(NAME, "study/run.py, Ray's concurrency / sequential", concurrent_s / sequential_s, "x"))
    return Outcome({"ray_overhead_ratio": ratio}, checks, details)
