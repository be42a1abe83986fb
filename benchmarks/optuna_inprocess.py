"""Benchmark: the study platform against its peer, plain Optuna in one process, on the same trials.

A user with one machine could skip Ray and run ``optuna.create_study(...).optimize(objective, n_jobs=CPUs)``
around ``maae.engine.train_step`` (:mod:`benchmarks.optuna_peer`). Both sides run the same search
(``benchmarks/optuna_peer.yaml``: the default demo's ANG space, no early stopping), the same number of trials
and epochs, with the same TPE seed, on the same CPUs:

- platform: ``python study/run.py --space benchmarks/optuna_peer.yaml --epochs E --seed S`` with its defaults
  (as many one-CPU trials at once as there are CPUs; idle CPUs in the tail go to the trials still running);
- peer: ``python benchmarks/optuna_peer.py --space ... --epochs E --seed S --n-jobs CPUs`` (threads, one
  intra-op thread each).

- platform, ``--no-resize``: the same command keeping each trial's CPU, which lets Tune reuse its trial actors
  (Tune refuses actor reuse under the ResourceChangingScheduler of the default): what a new trial process per
  trial costs the default, measured side by side.

All are timed as whole commands (interpreter start, Ray's start-up on the platform side), alternating over
``rounds``, compared by their medians: ``optuna_inprocess_ratio`` = platform / peer. The benchmark also checks
that both trained the same trials (TPE's seeded start-up proposes the same parameters on both sides) and
reports how far their metrics are apart (the peer's threads share torch's random generator, so its trainings
are not bit-for-bit the platform's). The frozen-backbone features are warm on both sides, and so is the patch
baseline the platform's final report shows (its one-off fill is reported).

In ``--tiny`` mode Ray is not started: the peer runs in this process on the tiny data (2 trials of 1 epoch),
the study's command line is only validated, and the ratio is ``null`` with the reason.
"""

from __future__ import annotations

import csv
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks.common import (
    PYTHON,
    REPO_ROOT,
    TINY_CONFIG,
    Outcome,
    Settings,
    at_most,
    info,
    interleave,
    median,
    run_command,
    warm_report_baseline,
)
from maae.features import FEATURE_CACHE_ENV

NAME = "optuna_inprocess"
SPACE_FILE = Path(__file__).resolve().parent / "optuna_peer.yaml"
PEER_SCRIPT = Path(__file__).resolve().parent / "optuna_peer.py"
STUDY_SCRIPT = REPO_ROOT / "study" / "run.py"
TARGET_RATIO = 1.05
SEED = 0
COMMAND_TIMEOUT_S = 3600
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
RATIO_METRIC = "platform / plain Optuna wall time (same trials)"
NO_RESIZE = "--no-resize"
# Parameters proposed by the same seeded sampler on both sides are equal up to their float text in trials.csv.
SAME_PARAM_TOLERANCE = 1e-9


@dataclass(frozen=True)
class Sizes:
    trials: int | None  # None: the space's num_samples
    epochs: int
    rounds: int


# The space's 4 trials of 20 epochs on all categories: about 80 s of training each on one core of the 2-core
# machine, so that Ray's fixed costs are weighed against trials of a realistic length.
FULL = Sizes(trials=None, epochs=20, rounds=1)
TINY = Sizes(trials=2, epochs=1, rounds=1)


def _cpus() -> int:
    return os.cpu_count() or 1


def _tiny_sets(settings: Settings) -> list[str]:
    """The tiny model as ``--set`` arguments (epochs go through ``--epochs``)."""
    if not settings.tiny:
        return []
    return [arg for name, value in TINY_CONFIG.items() if name != "epochs" for arg in ("--set", f"{name}={value}")]


def study_command(settings: Settings, sizes: Sizes, results: Path, name: str, *extra: str) -> list[str]:
    command = [PYTHON, str(STUDY_SCRIPT), "--space", str(SPACE_FILE), "--data", str(settings.data_root),
               "--epochs", str(sizes.epochs), "--seed", str(SEED), "--results", str(results), "--name", name,
               "--no-examples", *extra, *_tiny_sets(settings)]
    return command + (["--num-samples", str(sizes.trials)] if sizes.trials else [])


def peer_command(settings: Settings, sizes: Sizes, out: Path) -> list[str]:
    command = [PYTHON, str(PEER_SCRIPT), "--space", str(SPACE_FILE), "--data", str(settings.data_root),
               "--epochs", str(sizes.epochs), "--seed", str(SEED), "--n-jobs", str(_cpus()), "--out", str(out),
               *_tiny_sets(settings)]
    return command + (["--num-samples", str(sizes.trials)] if sizes.trials else [])


class _Runner:
    def __init__(self, settings: Settings, sizes: Sizes) -> None:
        self.settings = settings
        self.sizes = sizes
        self.folder = settings.scratch(NAME)
        self.env = {FEATURE_CACHE_ENV: str(settings.feature_cache_dir)}
        self.count = 0
        self.studies: list[Path] = []
        self.peers: list[Path] = []

    def platform(self) -> float:
        return self._study()

    def platform_no_resize(self) -> float:
        return self._study(NO_RESIZE)

    def _study(self, *extra: str) -> float:
        self.count += 1
        name = f"platform-{self.count}"
        done = run_command(study_command(self.settings, self.sizes, self.folder, name, *extra), env=self.env,
                           unset=THREAD_VARIABLES, timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"study/run.py {' '.join(extra)} exited with {done.returncode}: {done.tail()}")
        if not extra:
            self.studies.append(self.folder / name)
        return done.seconds

    def peer(self) -> float:
        self.count += 1
        out = self.folder / f"peer-{self.count}.json"
        done = run_command(peer_command(self.settings, self.sizes, out), env=self.env, unset=THREAD_VARIABLES,
                           timeout=COMMAND_TIMEOUT_S)
        if done.returncode != 0:
            raise RuntimeError(f"optuna_peer.py exited with {done.returncode}: {done.tail()}")
        self.peers.append(out)
        return done.seconds


def _warm_features(settings: Settings, sizes: Sizes) -> float:
    """Fill the feature cache both sides read, and the report's patch baseline (the platform's final report
    shows it), before anything is timed; returns the baseline's one-off fill seconds."""
    import torch

    from maae.config import parse_set_arguments
    from maae.engine import prepare_data
    from study.space import base_config, load_space

    overrides = {**parse_set_arguments(_tiny_sets(settings)[1::2]), "epochs": sizes.epochs}
    base = base_config(load_space(SPACE_FILE), overrides=overrides)
    prepare_data(base, settings.data_root, None, device=torch.device("cpu"))
    if settings.tiny:
        return 0.0
    return warm_report_baseline(base, settings.data_root, None, settings.scratch(NAME) / "report-baseline")


def _platform_trials(study_dir: Path) -> list[dict[str, Any]]:
    with open(study_dir / "trials.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def compare_trials(platform_rows: list[dict[str, Any]], peer: dict[str, Any], names: list[str],
                   metric: str) -> dict[str, Any]:
    """Whether both sides trained the same parameter sets, and how far their metrics are apart."""
    def key(values: dict[str, Any]) -> tuple[float, ...]:
        return tuple(float(values[name]) for name in names)

    platform = sorted((key(row), float(row[metric]) if row.get(metric) else math.nan) for row in platform_rows)
    others = sorted((key(trial["params"]), float(trial["value"]) if trial["value"] is not None else math.nan)
                    for trial in peer["trials"])
    same = len(platform) == len(others) and all(
        math.isclose(a, b, rel_tol=SAME_PARAM_TOLERANCE, abs_tol=SAME_PARAM_TOLERANCE)
        for (left, _), (right, _) in zip(platform, others, strict=True) for a, b in zip(left, right, strict=True))
    gaps = [abs(a - b) for (_, a), (_, b) in zip(platform, others, strict=False) if math.isfinite(a - b)]
    return {"same_parameters": same, "platform": [list(p) for p, _ in platform], "peer": [list(p) for p, _ in others],
            "metric": metric, "platform_values": [v for _, v in platform], "peer_values": [v for _, v in others],
            "max_abs_metric_difference": max(gaps) if gaps else None}


def _validate_study(settings: Settings, sizes: Sizes) -> str:
    from study.cli import build_parser, validate

    for extra in ((), (NO_RESIZE,)):
        command = study_command(settings, sizes, settings.scratch(NAME), "validate-only", *extra)
        plan = validate(build_parser().parse_args(command[2:]))
    return f"validated, with and without {NO_RESIZE}: {plan.space.total_trials} trials of {plan.space.name}"


def run(settings: Settings) -> Outcome:
    from study.space import load_space

    sizes = TINY if settings.tiny else FULL
    space = load_space(SPACE_FILE)
    names = list(space.searched)
    runner = _Runner(settings, sizes)
    baseline_fill = _warm_features(settings, sizes)
    details: dict[str, Any] = {
        "space_file": str(SPACE_FILE), "seed": SEED, "epochs": sizes.epochs, "rounds": sizes.rounds,
        "trials": sizes.trials or space.num_samples, "cpus": _cpus(), "report_baseline_fill_seconds": baseline_fill,
        "commands": {"platform": " ".join(study_command(settings, sizes, Path("RESULTS"), "NAME")),
                     "peer": " ".join(peer_command(settings, sizes, Path("OUT.json")))},
    }
    if settings.tiny:
        from benchmarks.optuna_peer import run_peer

        peer = run_peer(SPACE_FILE, settings.data_root, None, sizes.epochs, _tiny_sets(settings)[1::2], SEED, _cpus(),
                        sizes.trials)
        peer_s = peer["seconds_total"]
        try:
            status = _validate_study(settings, sizes)
            reason = "not run in --tiny mode: Ray start-up alone exceeds the smoke budget (" + status + ")"
        except Exception as err:  # noqa: BLE001 - the study platform is another module; report why it failed
            reason = f"study/run.py is not runnable: {type(err).__name__}: {err}"
        details.update({"ratio_null_reason": reason, "peer_seconds": peer_s, "peer": peer})
        return Outcome({"optuna_inprocess_ratio": None},
                       [at_most(NAME, RATIO_METRIC, None, TARGET_RATIO, "x"),
                        info(NAME, "plain Optuna (tiny)", peer_s, "s")], details)

    samples = interleave({"platform": runner.platform, "peer": runner.peer,
                          "platform --no-resize": runner.platform_no_resize}, sizes.rounds)
    platform_s, peer_s = median(samples["platform"]), median(samples["peer"])
    no_resize_s = median(samples["platform --no-resize"])
    ratio = platform_s / peer_s
    peer = json.loads(runner.peers[-1].read_text())
    same = compare_trials(_platform_trials(runner.studies[-1]), peer, names, space.metric)
    details.update({"seconds": samples,
                    "median_seconds": {"platform": platform_s, "peer": peer_s, "platform --no-resize": no_resize_s},
                    "ratio_no_resize": no_resize_s / peer_s,
                    "peer_phases_seconds": {"prepare": peer["seconds_prepare"], "optimize": peer["seconds_optimize"]},
                    "same_trials": same})
    checks = [at_most(NAME, RATIO_METRIC, ratio, TARGET_RATIO, "x"),
              info(NAME, "platform: study/run.py (defaults)", platform_s, "s"),
              info(NAME, f"plain Optuna, one process, n_jobs={_cpus()}", peer_s, "s"),
              info(NAME, "platform --no-resize (actors reused) / plain Optuna", no_resize_s / peer_s, "x"),
              info(NAME, "same trials on both sides (1 = yes)", float(same["same_parameters"])),
              info(NAME, "max abs difference of the trials' metric", same["max_abs_metric_difference"])]
    return Outcome({"optuna_inprocess_ratio": ratio}, checks, details)
