"""Seed repeats inside one trial: one configuration trained with several seeds, epoch by epoch, side by side.

A space's ``repeats: k`` makes every trial train its configuration with the seeds ``base, base + 1, ...,
base + k - 1`` (``base`` is the configuration's ``seed``). :class:`SeedGroup` holds one
:class:`~maae.engine.TrainingSession` per seed; every epoch trains each of them one epoch in turn, so a trial
reports once per epoch the mean over the same k seeds at the same epoch: what Optuna and ASHA compare.

Each session keeps its own share of torch's global random generators (:class:`maae.random_state.RandomStream`),
so seed ``s`` of a group trains exactly what ``python -m maae train --set seed=s`` trains alone, whatever
the other seeds do, and a checkpoint holds each seed's own generator state (resumed exactly).

A group's checkpoint is the first seed's MAAE run folder, with every other seed's run folder inside it under
``seeds/seed_<s>/`` (:data:`~study.protocol.SEED_RUNS_DIR`): with one seed it is exactly the run folder a
single session writes, and the study's ``best/`` (a copy of it) stays a folder ``python -m maae predict``
reads.

:func:`seed_result` turns the seeds' epoch statistics and evaluations into the result keys of
:mod:`study.protocol`; it needs no torch, only numbers.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from maae.config import MAAEConfig
from maae.engine import EpochStats, ModelWrapper, PreparedData, TrainingSession
from maae.evaluation import Evaluation, evaluate, evaluate_finished
from maae.random_state import RandomStream
from maae.run_folder import load_checkpoint, write_resumable_run, write_run
from study.protocol import (
    RESULT_IMAGES_PER_SECOND,
    RESULT_LOSS,
    RESULT_N_SEEDS,
    RESULT_NOISE_PENALTY,
    RESULT_PER_CATEGORY,
    RESULT_SEED_METRICS,
    RESULT_SEED_PER_CATEGORY,
    RESULT_SEEDS,
    SEED_RUN_PREFIX,
    SEED_RUNS_DIR,
)

# Where a seed's configuration comes from, in its error messages.
SEED_SOURCE = "seed repeats"


def trial_seeds(base_seed: int, repeats: int) -> list[int]:
    """The seeds of a trial with ``repeats`` seeds starting at ``base_seed``: base, base + 1, ..."""
    return [base_seed + offset for offset in range(repeats)]


def seed_run_folder(folder: Path, seeds: Sequence[int], seed: int) -> Path:
    """Where ``seed``'s run folder is inside a group checkpoint ``folder``: the folder itself for the first
    seed, ``seeds/seed_<s>/`` for the others."""
    return Path(folder) if seed == seeds[0] else Path(folder) / SEED_RUNS_DIR / f"{SEED_RUN_PREFIX}{seed}"


@dataclass
class SeedRun:
    """One seed of a group: its configuration, its training session and its random generators."""

    seed: int
    config: MAAEConfig
    session: TrainingSession
    stream: RandomStream


class SeedGroup:
    """The training sessions of one configuration with ``repeats`` seeds, trained epoch by epoch in turn.

    ``epoch`` is the epochs every session has trained (they advance together), so the trial's loop treats a
    group like one session.
    """

    def __init__(self, config: MAAEConfig, data: PreparedData, *, repeats: int, device: Any,
                 wrap_model: ModelWrapper | None = None) -> None:
        self.config = config
        self.data = data
        self.device = device
        self.runs: list[SeedRun] = []
        for seed in trial_seeds(config.seed, repeats):
            seed_config = config if seed == config.seed else config.replace(SEED_SOURCE, seed=seed)
            session = TrainingSession(seed_config, data, device=device, wrap_model=wrap_model)
            # The session seeded torch's generators and drew its initial weights: its stream starts here.
            self.runs.append(SeedRun(seed, seed_config, session, RandomStream(device)))

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    @property
    def epoch(self) -> int:
        return self.runs[0].session.epoch

    def load(self, folder: Path) -> None:
        """Resume every seed from a group checkpoint ``folder`` (its weights, optimisers and generators)."""
        for run in self.runs:
            saved = load_checkpoint(seed_run_folder(folder, self.seeds, run.seed))
            if not saved.belongs_to(run.config, self.data.categories):
                raise RuntimeError(f"checkpoint {saved.path} belongs to another configuration than seed "
                                   f"{run.seed} of this trial")
            with run.stream.active():  # the checkpoint's generator state becomes this seed's stream
                run.session.load_state_dict(saved.state)
        if len({run.session.epoch for run in self.runs}) > 1:
            raise RuntimeError(f"checkpoint {folder}: its seeds were saved at different epochs")

    def train_epoch(self) -> list[EpochStats]:
        """One epoch of every seed, in seed order; each seed's statistics."""
        stats = []
        for run in self.runs:
            with run.stream.active():
                stats.append(run.session.train_epoch())
        return stats

    def evaluate(self) -> list[Evaluation]:
        """Every seed's evaluation on the test set (the weights it would deploy)."""
        return [evaluate(run.session.evaluation_models(), self.data, run.config, device=self.device)
                for run in self.runs]

    def write_resumable(self, folder: Path) -> None:
        """A checkpoint every seed can resume from (``config.json`` and ``checkpoint.pt`` per seed)."""
        for run in self.runs:
            with run.stream.active():  # the checkpoint saves the generators' state: this seed's
                write_resumable_run(seed_run_folder(folder, self.seeds, run.seed), run.session)

    def finish(self, folder: Path, *, seconds: float) -> list[Evaluation]:
        """Every seed's final evaluation, measured at the thresholds calibrated on its validation split, and its
        complete run folder (checkpoint with the normal reference, metrics, scores); the evaluations, in seed
        order."""
        evaluations = []
        for run in self.runs:
            evaluation, reference = evaluate_finished(run.session.evaluation_models(), self.data, run.config,
                                                      device=self.device)
            with run.stream.active():
                write_run(seed_run_folder(folder, self.seeds, run.seed), run.session, evaluation,
                          normal_reference=reference, seconds=seconds)
            evaluations.append(evaluation)
        return evaluations


# ------------------------------------------------------------------------------------------ results ---

def mean(values: Sequence[float]) -> float:
    """The arithmetic mean (NaN propagates: a metric undefined for one seed is undefined for the mean)."""
    return math.fsum(values) / len(values) if values else math.nan


def _mean_of(rows: Sequence[Mapping[str, float]]) -> dict[str, float]:
    """Key-wise means of several ``name -> value`` mappings with the same keys."""
    return {name: mean([float(row[name]) for row in rows]) for name in rows[0]}


def seed_result(seeds: Sequence[int], stats: Sequence[EpochStats] | None,
                evaluations: Sequence[Evaluation] | None) -> dict[str, Any]:
    """The part of a trial's epoch result that the seeds make: their means under the usual keys, and each
    seed's own values under :data:`~study.protocol.RESULT_SEED_METRICS` and
    :data:`~study.protocol.RESULT_SEED_PER_CATEGORY` (see :mod:`study.protocol`).

    ``stats`` is None when no epoch was trained (a restored final checkpoint reported again), ``evaluations``
    when the epoch was not evaluated. Throughput is all seeds' images over all their seconds.
    """
    keys = [str(seed) for seed in seeds]
    result: dict[str, Any] = {RESULT_SEEDS: list(seeds), RESULT_N_SEEDS: len(seeds)}
    per_seed: dict[str, dict[str, float]] = {key: {} for key in keys}
    if stats is not None:
        result[RESULT_LOSS] = mean([s.loss for s in stats])
        penalties = [s.noise_penalty for s in stats if s.noise_penalty is not None]
        if len(penalties) == len(stats):
            result[RESULT_NOISE_PENALTY] = mean(penalties)
        seconds = math.fsum(s.seconds for s in stats)
        result[RESULT_IMAGES_PER_SECOND] = sum(s.images for s in stats) / seconds if seconds > 0 else math.nan
        for key, epoch_stats in zip(keys, stats, strict=True):
            per_seed[key][RESULT_LOSS] = epoch_stats.loss
    if evaluations is not None:
        means = [{name: float(value) for name, value in e.means.items()} for e in evaluations]
        result.update(_mean_of(means))
        categories = list(evaluations[0].per_category)
        result[RESULT_PER_CATEGORY] = {category: _mean_of([e.per_category[category] for e in evaluations])
                                       for category in categories}
        result[RESULT_SEED_PER_CATEGORY] = {
            key: {category: {name: float(value) for name, value in values.items()}
                  for category, values in e.per_category.items()}
            for key, e in zip(keys, evaluations, strict=True)}
        for key, seed_means in zip(keys, means, strict=True):
            per_seed[key].update(seed_means)
    if stats is not None or evaluations is not None:
        result[RESULT_SEED_METRICS] = per_seed
    return result


__all__ = ["SeedGroup", "SeedRun", "mean", "seed_result", "seed_run_folder", "trial_seeds"]
