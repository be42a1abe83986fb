"""One trial: the Tune function trainable that trains one sampled configuration.

- **One worker** (``--workers-per-trial 1``, the default): the trial trains in Tune's own trial actor, without
  Ray Train (:func:`run_in_trial`): no controller, placement-group cleaner, synchronisation actor or worker to
  start, so a trial costs what its training costs. It reports every epoch with a checkpoint through
  ``tune.report``; Tune's ``FailureConfig`` restarts a trial whose process died from that checkpoint, and
  Tune's ``ResourceChangingScheduler`` restarts it from there with more CPUs when the study has spare ones.
- **Two or more workers**: the trial is the driver of a Ray Train ``TorchTrainer`` (DDP across its workers,
  :func:`fit_trainer`), whose workers run :func:`study.tune.train_loop.train_loop_per_worker`.

Both run the same loop (:class:`study.tune.trial_worker.TrialWorker`); only the channel to Ray differs
(:mod:`study.tune.channel`). Tune runs :func:`run_trial` in a process of its own for every trial, and Ray
Train's controller unpickles what the trainer holds; so this module (like :mod:`study.tune.train_loop`)
imports only light things at the top. The trial's configuration travels as one validated
:class:`~maae.config.MAAEConfig`: the study's base config, shipped once, with the trial's sampled parameters
merged by :meth:`MAAEConfig.replace`.
"""

from __future__ import annotations

from typing import Any

from ray import tune

from maae.errors import MAAEError
from study.protocol import RESULT_EPOCH, RESULT_ERROR
from study.space import trial_config
from study.tune.settings import SETTINGS_KEY, LoopSettings, TrialSettings
from study.tune.train_loop import train_loop_per_worker

# Process-group timeout of a trial's workers: bounds how long a rank can wait for one that stopped.
PROCESS_GROUP_TIMEOUT_S = 600
# Train controller failures (e.g. workers that cannot be placed) before the trial fails instead of waiting.
CONTROLLER_FAILURE_LIMIT = 2
# How long a finished Train run waits for its placement-group cleaner to stop (Ray's default: 12 s).
CLEANER_STOP_TIMEOUT_S = 0.2


def _trainer_class() -> type:
    """``TorchTrainer`` without the per-run costs a study's trials do not need.

    - At the end of every run, Train's controller asks its placement-group cleaner to stop and waits up to
      12 s for it; on a busy small machine the cleaner's state-API poll often makes it wait all of that, per
      trial. The cleaner's stop flag is set before that wait, so waiting less changes nothing but the time
      (the controller removes the workers' placement group itself, before this).
    - Train's datasets callback starts a Ray Data manager actor for every run and sends Ray Data's context to
      every worker, which makes each worker import Ray Data; MAAE's workers read their own data, so without
      ``datasets`` the callback is left out.

    If a future Ray renames these private pieces, the trainer simply keeps Ray's defaults.
    """
    from ray.train.torch import TorchTrainer

    class StudyTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self) -> list:
            kept = []
            for callback in super()._create_default_callbacks():
                name = type(callback).__name__
                if name == "DatasetsCallback" and not getattr(self, "datasets", None):
                    continue
                if name == "PlacementGroupCleanerCallback" and hasattr(callback, "_stop_timeout"):
                    callback._stop_timeout = CLEANER_STOP_TIMEOUT_S
                kept.append(callback)
            return kept

    return StudyTorchTrainer


def run_trial(params: dict[str, Any], settings: TrialSettings) -> None:
    """One trial (a Tune function trainable): its loop here (one worker) or a ``TorchTrainer`` (several)."""
    try:
        config = trial_config(settings.base_config, params)
    except MAAEError as err:  # an invalid combination of sampled values: a failed trial, not a crash
        tune.report({RESULT_ERROR: str(err), RESULT_EPOCH: 0})
        return
    loop = LoopSettings(config=config, data_root=settings.data_root, categories=settings.categories,
                        eval_every=settings.eval_every, trial_id=tune.get_context().get_trial_id(),
                        stop_registry=settings.stop_registry, repeats=settings.repeats)
    if runs_in_trial(settings):
        run_in_trial(loop)
    else:
        fit_trainer(loop, settings)


def runs_in_trial(settings: TrialSettings) -> bool:
    """Whether the trial trains in Tune's own trial actor (one worker) rather than through Ray Train."""
    return settings.workers == 1


def run_in_trial(loop: LoopSettings) -> None:
    """Train in this process, Tune's trial actor, with the trial's current resources."""
    from study.tune.channel import TuneChannel
    from study.tune.trial_worker import TrialWorker

    TrialWorker(loop, TuneChannel()).run()


def fit_trainer(loop: LoopSettings, settings: TrialSettings) -> None:
    """Build and fit the trial's ``TorchTrainer``: ``settings.workers`` DDP workers."""
    import ray.train
    from ray.train.torch import TorchConfig
    from ray.tune.integration.ray_train import TuneReportCallback

    use_gpu = settings.gpus_per_worker > 0
    per_worker = {"CPU": settings.cpus_per_worker}
    if use_gpu:
        per_worker["GPU"] = settings.gpus_per_worker
    trainer = _trainer_class()(
        train_loop_per_worker,
        train_loop_config={SETTINGS_KEY: loop},
        torch_config=TorchConfig(timeout_s=PROCESS_GROUP_TIMEOUT_S),
        scaling_config=ray.train.ScalingConfig(num_workers=settings.workers, use_gpu=use_gpu,
                                               resources_per_worker=per_worker),
        run_config=ray.train.RunConfig(
            name=loop.trial_id,
            storage_path=settings.train_storage,
            callbacks=[TuneReportCallback()],
            failure_config=ray.train.FailureConfig(max_failures=settings.worker_retries,
                                                   controller_failure_limit=CONTROLLER_FAILURE_LIMIT),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=1),
            logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        ),
    )
    trainer.fit()
