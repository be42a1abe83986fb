"""The study's Tuner: one Tune trial per sampled configuration.

Every trial is a Tune *function* trainable (:func:`study.tune.trial.run_trial`). A one-worker trial (the
default) trains in that function, in Tune's own trial actor, and reports each epoch to Tune; a trial of two
or more workers builds and fits a Ray Train ``TorchTrainer`` (DDP) whose ``TuneReportCallback`` turns every
report of rank 0 into one Tune result. Either way ASHA and Optuna see per-epoch metrics, and
:class:`study.tune.callback.StudyCallback` turns Tune's events into the results tables of
:mod:`study.results` while the study runs. This module builds (or restores) the Tuner: the searcher
(Optuna's TPE, told about failed and stopped trials), the scheduler (ASHA whose stops are requests, see
:mod:`study.tune.stopping`; for one-worker trials wrapped in Tune's ``ResourceChangingScheduler``, which
gives CPUs left idle in a study's tail to the running trials, see :mod:`study.tune.resizing`) and the
trainable with its resources.

Fault tolerance, in layers:
- a one-worker trial whose process dies: Tune restarts it from its last checkpoint
  (``tune.FailureConfig(max_failures=worker_retries)``);
- a worker process of a multi-worker trial that dies: Ray Train restarts the worker group from the trial's
  last checkpoint (``ray.train.FailureConfig(max_failures=worker_retries)``);
- a trial whose training raises (NaN loss, a setting only invalid at run time): the worker reports the error
  as the trial's last result and the trial ends normally, recorded as ``failed``; nothing retries it;
- Train's controller cannot place the workers: ``controller_failure_limit`` makes it fail instead of waiting
  forever (the command line also refuses such a study up front);
- the study's driver is killed: ``Tuner.restore`` continues unfinished trials, each from its last
  checkpoint (Tune's own for one-worker trials; for the others their Train run's, named after the trial so
  a restarted trial finds its own run), and keeps finished ones.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from maae.config import MAAEConfig
from study.optuna_storage import TRIAL_ID_ATTR, open_storage
from study.protocol import KIND_SEARCH, RESULT_EPOCH, RESULT_ERROR, RESULT_STOPPED, TUNE_EXPERIMENT
from study.space import SCHEDULER_ASHA, StudySpace, grid_param_space, optuna_distributions
from study.tune.callback import RecorderSettings, StudyCallback, is_finite
from study.tune.checkpoints import CheckpointPruner
from study.tune.cluster import TRIAL_DRIVER_MEMORY_BYTES
from study.tune.resizing import resizing_scheduler
from study.tune.settings import TrialSettings
from study.tune.stopping import request_stop
from study.tune.trial import run_trial, runs_in_trial

# Tune reuses a multi-worker trial's driver process for the next trial (saving a process start and Ray
# Train's imports per trial). That is safe only because Tune never stops a running trial here (see
# GracefulASHA): a function trainable stopped mid-run cannot be reset, and its Train run would keep its CPUs
# (a hang). One-worker trials reuse actors only when they are not resized (TunerPlan.resize_trials): Tune's
# ResourceChangingScheduler refuses actor reuse, since it pauses trials mid-run. A fresh actor costs a trial
# about 3.7 s (a new Ray worker process and its imports; benchmarks/ray_overhead.py measures both ways).
REUSE_TRIAL_ACTORS = True
# Tune keeps every checkpoint of a one-worker trial (num_to_keep=None); study.tune.checkpoints.CheckpointPruner
# deletes them once no saved experiment state can name them (Tune's own num_to_keep could delete the one its
# last saved state named, and --resume then failed the trial).
TUNE_CHECKPOINTS_KEPT = None


class GuardedOptunaSearch(OptunaSearch):
    """OptunaSearch that skips results without the metric (loss-only epochs, failure reports) and tells
    Optuna that a trial which reported an error failed; each Optuna trial names its Tune trial (the user
    attribute ``study.optuna_storage.TRIAL_ID_ATTR``, trials.csv's ``trial_id``)."""

    def suggest(self, trial_id: str) -> dict | None:
        params = super().suggest(trial_id)
        if trial_id in self._ot_trials:
            self._ot_trials[trial_id].set_user_attr(TRIAL_ID_ATTR, trial_id)
        return params

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if all(is_finite(result.get(m)) for m in metrics):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        failed = error or bool(result and result.get(RESULT_ERROR))
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        usable = result if result and all(is_finite(result.get(m)) for m in metrics) else None
        if result and result.get(RESULT_STOPPED):
            usable = None  # stopped early: Optuna records it as pruned
        super().on_trial_complete(trial_id, result=usable, error=failed)


class GracefulASHA(AsyncHyperBandScheduler):
    """ASHA whose STOP verdicts become requests that the trial honours after its current epoch
    (see :mod:`study.tune.stopping`: Tune killing a running Train run leaks its resources in ray 2.60).

    ``stop_last_trials`` is off: a trial that reaches ``max_t`` ends by itself when its epochs are done.
    """

    def __init__(self, registry: str, **asha_options: Any) -> None:
        super().__init__(stop_last_trials=False, **asha_options)
        self.registry = registry
        self.stops_requested: set[str] = set()

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            request_stop(self.registry, trial.trial_id)
            self.stops_requested.add(trial.trial_id)
            return TrialScheduler.CONTINUE
        return decision

    def stop_was_requested(self, trial_id: str) -> bool:
        return trial_id in self.stops_requested


# ---------------------------------------------------------------------------------------- tuner ---

@dataclass(frozen=True)
class TunerPlan:
    """Everything needed to build (or restore) the Tuner of one study."""

    space: StudySpace
    base: MAAEConfig
    trial_settings: TrialSettings
    recorder_settings: RecorderSettings
    ray_storage: str
    max_concurrent: int
    seed: int
    # The Optuna RDB storage URL a search records its trials in (study.optuna_storage); None: in memory.
    optuna_storage: str | None = None
    # One-worker trials: give spare CPUs to running trials (Tune's ResourceChangingScheduler, fresh actors), or
    # keep each trial's CPUs and reuse actors (where no trial could grow, or with --no-resize).
    resize_trials: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def experiment_path(self) -> str:
        return f"{self.ray_storage.rstrip('/')}/{TUNE_EXPERIMENT}"


def trainable(plan: TunerPlan) -> Any:
    with_settings = tune.with_parameters(run_trial, settings=plan.trial_settings)
    return tune.with_resources(with_settings, trial_resources(plan.trial_settings))


def trial_resources(settings: TrialSettings) -> Any:
    """What Tune reserves for one trial: a one-worker trial trains in Tune's actor, which takes the worker's
    CPUs (and GPUs); a multi-worker trial's driver takes only a little memory, its workers are Train's."""
    if runs_in_trial(settings):
        bundle = {"CPU": settings.cpus_per_worker}
        if settings.gpus_per_worker > 0:
            bundle["GPU"] = settings.gpus_per_worker
        return tune.PlacementGroupFactory([bundle])
    return {"memory": TRIAL_DRIVER_MEMORY_BYTES}


def max_epochs(space: StudySpace, base: MAAEConfig) -> int:
    """The most epochs any trial trains (ASHA's ``max_t``)."""
    for param in space.search:
        if param.name == "epochs":
            return int(max(param.choices) if param.choices else param.high)
    if "epochs" in space.grid:
        return int(max(space.grid["epochs"]))
    return base.epochs


def build_tuner(plan: TunerPlan) -> tune.Tuner:
    space = plan.space
    metric: Any = list(space.metrics) if space.multi_objective else space.metric
    mode: Any = list(space.modes) if space.multi_objective else space.mode
    search_alg = None
    param_space: dict[str, Any] = {}
    if space.kind == KIND_SEARCH:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        storage = open_storage(plan.optuna_storage) if plan.optuna_storage else None
        search_alg = GuardedOptunaSearch(space=optuna_distributions(space), metric=metric, mode=mode,
                                         seed=plan.seed, storage=storage,
                                         study_name=space.name if storage is not None else None)
    else:
        param_space = grid_param_space(space)
    asha = None
    if space.scheduler.type == SCHEDULER_ASHA:
        top = max_epochs(space, plan.base)
        asha = GracefulASHA(plan.trial_settings.stop_registry, time_attr=RESULT_EPOCH, metric=space.metric,
                            mode=space.mode, max_t=top, grace_period=min(space.scheduler.grace_period, top),
                            reduction_factor=space.scheduler.reduction_factor)
    in_trial = runs_in_trial(plan.trial_settings)
    resized = in_trial and plan.resize_trials
    scheduler: TrialScheduler | None = asha
    if resized:
        scheduler = resizing_scheduler(asha, asha.stop_was_requested if asha is not None else None)
    # Tune retries a one-worker trial whose process died; a multi-worker trial's retries are Train's.
    trial_retries = plan.trial_settings.worker_retries if in_trial else 0
    return tune.Tuner(
        trainable(plan),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=space.num_samples,
                                    max_concurrent_trials=plan.max_concurrent,
                                    reuse_actors=REUSE_TRIAL_ACTORS and not resized),
        run_config=tune.RunConfig(name=TUNE_EXPERIMENT, storage_path=plan.ray_storage,
                                  callbacks=[StudyCallback(plan.recorder_settings), CheckpointPruner()],
                                  failure_config=tune.FailureConfig(max_failures=trial_retries),
                                  checkpoint_config=tune.CheckpointConfig(num_to_keep=TUNE_CHECKPOINTS_KEPT),
                                  verbose=0),
    )


def can_restore(plan: TunerPlan) -> bool:
    return tune.Tuner.can_restore(plan.experiment_path)


def restore_tuner(plan: TunerPlan) -> tune.Tuner:
    """The interrupted study's Tuner: unfinished trials continue, errored ones run again, finished ones stay."""
    return tune.Tuner.restore(plan.experiment_path, trainable=trainable(plan), resume_unfinished=True,
                              resume_errored=True)

