"""What a trial is given: its driver's settings (:class:`TrialSettings`) and its workers' (:class:`LoopSettings`).

Both are frozen dataclasses that Ray pickles: the driver's settings once per study through the object store
(``tune.with_parameters``), the workers' once per trial with the train function, in ``train_loop_config``.
The configuration inside them is a validated :class:`~maae.config.MAAEConfig`, shipped whole. This module is
imported wherever they are unpickled (Tune's trial processes, Train's controller, the workers), so it imports
nothing heavy.
"""

from __future__ import annotations

from dataclasses import dataclass

from maae.config import MAAEConfig

# Restarts of a trial's worker group after a worker process died.
DEFAULT_WORKER_RETRIES = 2
# Key of ``train_loop_config`` (Ray Train hands its workers a dict) that holds the LoopSettings.
SETTINGS_KEY = "settings"


@dataclass(frozen=True)
class TrialSettings:
    """What every trial's driver needs besides its sampled parameters (shipped once via the object store)."""

    base_config: MAAEConfig  # the study's configuration; a trial's parameters are merged into it
    data_root: str
    categories: tuple[str, ...]
    eval_every: int  # epochs between evaluations; 0: only after the last epoch
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    train_storage: str  # where the trials' Ray Train runs keep their checkpoints
    stop_registry: str  # the actor through which the scheduler asks trials to stop (study.tune.stopping)
    worker_retries: int = DEFAULT_WORKER_RETRIES
    repeats: int = 1  # seeds per trial (a space's ``repeats``): see study.tune.seed_group


@dataclass(frozen=True)
class LoopSettings:
    """What every worker of one trial needs (Ray Train pickles it to each worker with the train function)."""

    config: MAAEConfig  # the trial's configuration: the study's with the trial's parameters
    data_root: str
    categories: tuple[str, ...]
    eval_every: int
    trial_id: str | None = None  # with ``stop_registry``: where the scheduler's stop requests are asked for
    stop_registry: str | None = None
    repeats: int = 1  # seeds trained side by side: config.seed, config.seed + 1, ... (study.tune.seed_group)
