"""Benchmark 2: what running trainings through the study platform (Ray Tune; Ray Train for multi-worker trials) costs.

The same four tiny trainings (the sweep preset on one category, seeds 0-3, grid file
``benchmarks/ray_overhead.yaml``) run as four sequential ``python -m maae train --set seed=N`` commands and as
one ``python study/run.py --space benchmarks/ray_overhead.yaml`` command (Ray start-up included), both timed
as whole commands. Two comparisons, each timed side by side:

- **as a user runs them** (the headline ``ray_overhead_ratio``): each command with its defaults. The plain
  trainings use torch's default threads (every core); the study runs as many one-CPU trials at once as the
  CPUs hold (and gives CPUs left idle at its end to the trials still running). Candidates alternate over
  ``rounds`` and are compared by their medians.
- **like for like** (alternating rounds too, medians): the same threads per training on both sides
  (``OMP_NUM_THREADS`` of the plain runs = the study's ``--cpus-per-worker``), one trial at a time
  (``--max-concurrent 1``) and a local Ray
  of exactly those CPUs (``--num-cpus``, so no idle CPU is handed to the trial; with nothing to resize, the
  study then reuses Tune's trial actors, see README "Resizing or actor reuse"). What the study costs beyond
  the plain runs here, less Ray's start-up, is Ray's cost per trial (``ray_cost_per_trial_s``: a Tune trial,
  its actor process with its imports, Tune's per-epoch checkpoints; counted as before, it also carries the
  study's own fixed costs after Ray's start, such as its tables and report, spread over the trials); the
  benchmark reports it and how long a training must be for that cost to stay within the target. This pair
  also checks that the study and the plain runs computed the same metrics.

The frozen-backbone features are read from the same warm cache on both sides, and the patch baseline the
study's final report shows is warm too (as for a user's second study on a data set; its one-off fill is
reported).

In ``--tiny`` mode Ray is not started (its start-up alone exceeds the smoke budget): the study's command
line is only validated, and the ratio is ``null`` with the reason.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    BENCH_PRESET,
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
    warm_report_baseline,
)
from maae.data import resolve_categories
from maae.features import FEATURE_CACHE_ENV
from maae.run_folder import METRICS_FILE

NAME = "ray_overhead"
SPACE_FILE = Path(__file__).resolve().parent / "ray_overhead.yaml"
STUDY_SCRIPT = REPO_ROOT / "study" / "run.py"
TRIALS = 4
TARGET_RATIO = 1.05
TARGET_COST_PER_TRIAL_S = 1.0
COMMAND_TIMEOUT_S = 1200
COMPARED_METRIC = "image_auroc"
# Metrics of the same seed may differ by float noise between processes, not more.
SAME_METRIC_TOLERANCE = 1e-6
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
RATIO_METRIC = "study / sequential wall time (as a user runs them)"
COST_METRIC = "like for like: Ray's cost per trial"


@dataclass(frozen=True)
class Sizes:
    epochs: int
    rounds: int


# 20 epochs of one category: about 10-15 s of training per run on one core of this machine, tiny next to a
# real trial, and long enough that the comparison is about Ray rather than about interpreter start-up.
FULL = Sizes(epochs=20, rounds=2)


class StudyFailedError(RuntimeError):
    """The study command did not finish: the benchmark reports null with this reason."""


def _train_command(data: Path, category: str, epochs: int, seed: int, out: Path) -> list[str]:
    return [PYTHON, "-m", "maae", "train", "--data", str(data), "--preset", BENCH_PRESET, "--categories", category,
            "--set", f"epochs={epochs}", "--set", f"seed={seed}", "--out", str(out)]


def _study_command(data: Path, category: str, epochs: int, results: Path, name: str, threads: int | None) -> list[str]:
    """The study command; ``threads`` None: the defaults (as many one-CPU trials at once as fit), else one trial at
    a time with ``threads`` CPUs per worker."""
    command = [PYTHON, str(STUDY_SCRIPT), "--space", str(SPACE_FILE), "--data", str(data), "--categories",
               category, "--epochs", str(epochs), "--results", str(results), "--name", name, "--no-examples"]
    if threads is None:
        return command
    return [*command, "--num-cpus", str(threads), "--cpus-per-worker", str(threads), "--max-concurrent", "1"]


class _Runner:
    """Numbered runs of both commands, each in its own output folder."""

    def __init__(self, settings: Settings, category: str, epochs: int) -> None:
        self.folder = settings.scratch(NAME)
        self.data = settings.data_root
        self.category = category
        self.epochs = epochs
        self.env = {FEATURE_CACHE_ENV: str(settings.feature_cache_dir)}
        self.count = 0
        self.runs: dict[str, list[Any]] = {}
        self.study_logs: dict[str, list[str]] = {}

    def sequential(self, threads: int | None, label: str) -> float:
        """Four plain trainings one after the other; ``threads`` None: torch's default threads."""
        self.count += 1
        outs = [self.folder / f"plain-{self.count}-seed{seed}" for seed in range(TRIALS)]
        env = dict(self.env) if threads is None else {**self.env, "OMP_NUM_THREADS": str(threads)}
        total = 0.0
        for seed, out in enumerate(outs):
            done = run_command(_train_command(self.data, self.category, self.epochs, seed, out), env=env,
                               unset=THREAD_VARIABLES, timeout=COMMAND_TIMEOUT_S)
            if done.returncode != 0:
                raise RuntimeError(f"python -m maae train failed: {done.tail()}")
            total += done.seconds
        self.runs.setdefault(label, []).append(outs)
        return total

    def study(self, threads: int | None, label: str) -> float:
        self.count += 1
        name = f"ray-overhead-{self.count}"
        command = _study_command(self.data, self.category, self.epochs, self.folder, name, threads)
        done = run_command(command, env=self.env, unset=THREAD_VARIABLES, timeout=COMMAND_TIMEOUT_S)
        self._check(done)
        self.runs.setdefault(label, []).append(self.folder / name)
        self.study_logs.setdefault(label, []).append(done.stderr)
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
    return {seed: float(json.loads((out / METRICS_FILE).read_text())[COMPARED_METRIC])
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

    command = _study_command(settings.data_root, category, 1, settings.scratch(NAME), "ray-overhead-validate", None)
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
        return Outcome({"ray_overhead_ratio": None, "ray_cost_per_trial_s": None}, _null_checks(),
                       {"ratio_null_reason": reason, "space_file": str(SPACE_FILE)})

    sizes = FULL
    runner = _Runner(settings, category, sizes.epochs)
    warm_up = run_command(_train_command(settings.data_root, category, sizes.epochs, 0, runner.folder / "warm-up"),
                          env=runner.env, timeout=COMMAND_TIMEOUT_S)
    baseline_fill = warm_report_baseline(settings.config(), settings.data_root, [category],
                                         settings.scratch(NAME) / "report-baseline")
    details: dict[str, Any] = {
        "trials": TRIALS, "category": category, "epochs": sizes.epochs, "rounds": sizes.rounds,
        "threads_per_training_like_for_like": settings.threads, "space_file": str(SPACE_FILE),
        "warm_up_seconds": warm_up.seconds,
        "report_baseline_fill_seconds": baseline_fill,
        "commands": {
            "sequential": " ".join(_train_command(settings.data_root, category, sizes.epochs, 0, Path("OUT")))
            + " (x4 seeds, one after the other)",
            "study": " ".join(_study_command(settings.data_root, category, sizes.epochs, Path("RESULTS"), "NAME",
                                             None)),
            "study_like_for_like": " ".join(_study_command(settings.data_root, category, sizes.epochs,
                                                           Path("RESULTS"), "NAME", settings.threads)),
        },
    }
    try:
        samples = interleave({"sequential": lambda: runner.sequential(None, "sequential"),
                              "study": lambda: runner.study(None, "study")}, sizes.rounds)
        like = interleave({"sequential": lambda: runner.sequential(settings.threads, "sequential_like"),
                           "study": lambda: runner.study(settings.threads, "study_like")}, sizes.rounds)
    except StudyFailedError as err:
        details["ratio_null_reason"] = str(err)
        return Outcome({"ray_overhead_ratio": None, "ray_cost_per_trial_s": None}, _null_checks(), details)
    sequential_s, study_s = median(samples["sequential"]), median(samples["study"])
    ratio = study_s / sequential_s
    like_sequential_s, like_study_s = median(like["sequential"]), median(like["study"])
    ray_ready = [_ray_ready_seconds(log) for log in runner.study_logs["study_like"]]
    ray_start_s = median([seconds for seconds in ray_ready if seconds is not None]) if any(ray_ready) else 0.0
    per_trial_cost = (like_study_s - like_sequential_s - ray_start_s) / TRIALS
    # A study no slower than the plain runs meets the target at any training length: 0 s.
    needed = max((like_study_s - like_sequential_s) / (TARGET_RATIO - 1) / TRIALS, 0.0)
    plain = _plain_metrics(runner.runs["sequential_like"][0])
    study = _study_metrics(runner.runs["study_like"][0])
    difference = max(abs(plain[seed] - study[seed]) for seed in range(TRIALS))
    spans = [_trials_span_seconds(folder) for folder in runner.runs["study_like"]]
    span = median([seconds for seconds in spans if seconds is not None]) if any(spans) else None
    span_cost = (span - like_sequential_s) / TRIALS if span is not None else None
    details.update({
        "seconds": samples, "median_seconds": {"sequential": sequential_s, "study": study_s},
        "like_for_like_seconds": like,
        "like_for_like_median_seconds": {"sequential": like_sequential_s, "study": like_study_s},
        "like_for_like_ratio": like_study_s / like_sequential_s,
        "ray_ready_seconds": ray_ready,
        "ray_cost_per_trial_seconds": per_trial_cost,
        "trials_span_seconds_like_for_like": span,
        "ray_cost_per_trial_within_span_seconds": span_cost,
        "ray_cost_within_span_note": "(the study's span from its trials' start to their end - the 4 plain "
                                     "commands) / 4: leaves out Ray's start-up, the feature-cache check and the "
                                     "final report, which the headline spreads over the trials",
        "training_seconds_per_trial_like_for_like": like_sequential_s / TRIALS,
        "training_seconds_needed_for_target_like_for_like": needed,
        "training_seconds_needed_note": "how long each plain training (process start included) would have to take "
                                        "for one-at-a-time trials to stay within the target, if Ray's costs stayed "
                                        "what they were here",
        "same_results": {"metric": COMPARED_METRIC, "plain": plain, "study": study,
                         "max_abs_difference": difference, "same": difference <= SAME_METRIC_TOLERANCE},
        "trial_seconds_reported_by_workers": _trial_seconds(runner.runs["study_like"][0]),
    })
    checks = [at_most(NAME, RATIO_METRIC, ratio, TARGET_RATIO, "x"),
              at_most(NAME, COST_METRIC, per_trial_cost, TARGET_COST_PER_TRIAL_S, "s"),
              info(NAME, "sequential (4 x maae train, default threads)", sequential_s, "s"),
              info(NAME, "study/run.py (defaults: trials side by side)", study_s, "s"),
              info(NAME, "like for like: study one at a time / sequential, same threads",
                   like_study_s / like_sequential_s, "x"),
              info(NAME, "like for like: Ray start-up", ray_start_s, "s"),
              info(NAME, "like for like: Ray's cost per trial within the trials' span", span_cost, "s"),
              info(NAME, "like for like: training length for the target", needed, "s"),
              info(NAME, "same metrics as the plain runs (max abs difference)", difference)]
    return Outcome({"ray_overhead_ratio": ratio, "ray_cost_per_trial_s": per_trial_cost}, checks, details)


def _null_checks() -> list:
    return [at_most(NAME, RATIO_METRIC, None, TARGET_RATIO, "x"),
            at_most(NAME, COST_METRIC, None, TARGET_COST_PER_TRIAL_S, "s")]


def _trials_span_seconds(study_dir: Path) -> float | None:
    """From the study's start of its trials to their end (``study.json``'s started_at and ended_at): what the
    study spends around the trials without Ray's start-up, its feature-cache check or its final report."""
    import datetime

    study = json.loads((study_dir / "study.json").read_text())
    try:
        started = datetime.datetime.fromisoformat(study["started_at"])
        ended = datetime.datetime.fromisoformat(study["ended_at"])
    except (KeyError, TypeError, ValueError):
        return None
    return (ended - started).total_seconds()
