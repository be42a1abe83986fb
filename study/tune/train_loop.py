"""The Ray Train loop of one trial of two or more workers: what every worker of its ``TorchTrainer`` runs.

(A one-worker trial runs the same loop in Tune's own trial actor, without Ray Train: see
:func:`study.tune.trial.run_trial`; only the channel differs, :mod:`study.tune.channel`.)

It is MAAE's own training, unchanged: :class:`maae.engine.TrainingSession` calls ``maae.engine.train_step``,
with each model wrapped by ``ray.train.torch.prepare_model`` (DDP when the trial has several workers, gloo on
CPU and NCCL on GPU; with several workers the session shards the data with a DistributedSampler, with one it
shuffles exactly as ``python -m maae train`` does).

Every epoch all ranks call ``ray.train.report`` once (Ray Train requires equal counts); rank 0 adds the
metrics (the keys of :mod:`study.protocol`), and a checkpoint that is a MAAE run folder. Every ``eval_every``
epochs (0: never before the end) and after the last one, rank 0 evaluates on the test set so the scheduler
(ASHA) can stop bad trials early; the last checkpoint is a complete run folder (``config.json``,
``checkpoint.pt``, ``metrics.json``, ``per_category.csv``, ``scores.csv``) that ``python -m maae predict``
reads.

Early stopping: after each epoch rank 0 asks whether the scheduler wants the trial stopped
(:mod:`study.tune.stopping`); if so every rank reports once more with ``stopped`` and returns, so Ray Train
frees the workers itself.

Failures: an exception of the training code (a NaN loss, a setting that is only invalid at run time) is
*reported* as a result with an ``error`` field and the loop returns normally, so Ray Train does not retry
what would fail again; rank 0 decides for all ranks (``broadcast_from_rank_zero``), so they stop together.
A worker process that dies is not an exception here: Ray Train restarts the worker group from the last
checkpoint (``FailureConfig.max_failures``).

This module is imported wherever the train function is unpickled (Tune's trial process, Train's controller),
so it imports nothing heavy (no Ray, no torch): the loop itself lives in :mod:`study.tune.trial_worker`, imported on the
workers only.
"""

from __future__ import annotations

from typing import Any

from study.tune.settings import SETTINGS_KEY


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train entry point. ``loop_config[SETTINGS_KEY]`` is the trial's
    :class:`~study.tune.settings.LoopSettings`. Returns
    ``{"error": ...}`` on rank 0 when the trial failed, else ``None``."""
    from study.tune.channel import TrainChannel
    from study.tune.trial_worker import TrialWorker

    return TrialWorker(loop_config[SETTINGS_KEY], TrainChannel()).run()
