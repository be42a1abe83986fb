"""The Ray Train loop of one trial: what every worker of a trial's ``TorchTrainer`` runs.

It is MAAE's own training, unchanged: :class:`maae.engine.TrainingSession` calls ``maae.engine.train_step``,
with each model wrapped by ``ray.train.torch.prepare_model`` (DDP when the trial has several workers, gloo on
CPU and NCCL on GPU; with several workers the session shards the data with a DistributedSampler, with one it
shuffles exactly as ``python -m maae train`` does).

Every epoch all ranks call ``ray.train.report`` once (Ray Train requires equal counts); rank 0 adds the
metrics, and a checkpoint that is a MAAE run folder. Every ``eval_every`` epochs (0: never before the end)
and after the last one,
rank 0 evaluates on the test set so the scheduler (ASHA) can stop bad trials early; the last checkpoint is a
complete run folder (``config.json``, ``checkpoint.pt``, ``metrics.json``, ``per_category.csv``,
``scores.csv``) that ``python -m maae predict`` reads.

Early stopping: after each epoch rank 0 asks whether the scheduler wants the trial stopped
(:mod:`study.stopping`); if so every rank reports once more with ``stopped`` and returns, so Ray Train frees
the workers itself.

Failures: an exception of the training code (a NaN loss, a setting that is only invalid at run time) is
*reported* as a result with an ``error`` field and the loop returns normally, so Ray Train does not retry
what would fail again; rank 0 decides for all ranks (``broadcast_from_rank_zero``), so they stop together.
A worker process that dies is not an exception here: Ray Train restarts the worker group from the last
checkpoint (``FailureConfig.max_failures``).

This module is imported wherever the train function is unpickled (Tune's trial process, Train's controller),
so it imports nothing heavy: the loop itself lives in :mod:`study.trial_worker`, imported on the workers only.
"""

from __future__ import annotations

from typing import Any

# Keys of the per-epoch result (besides the metric names and ``per_category``).
RESULT_EPOCH = "epoch"
RESULT_EPOCHS = "epochs"
RESULT_LOSS = "loss"
RESULT_ERROR = "error"
RESULT_FINAL = "final"
RESULT_EVALUATED = "evaluated"
RESULT_PER_CATEGORY = "per_category"
RESULT_TRAIN_SECONDS = "train_seconds"
RESULT_WORLD_SIZE = "world_size"
RESULT_STOPPED = "stopped"
# Longest error text carried in a result (a traceback's last lines are enough to act on).
MAX_ERROR_CHARS = 800


def describe_error(error: BaseException) -> str:
    """One line for the results: the exception type and message (never a full traceback)."""
    message = " ".join(str(error).split()) or "(no message)"
    text = f"{type(error).__name__}: {message}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


def train_loop_per_worker(loop_config: dict[str, Any]) -> dict[str, Any] | None:
    """Ray Train entry point. ``loop_config``: ``config`` (MAAEConfig dict), ``data_root``, ``categories``,
    ``eval_every``, ``trial_id`` and ``stop_registry`` (see :mod:`study.stopping`). Returns
    ``{"error": ...}`` on rank 0 when the trial failed, else ``None``."""
    from study.trial_worker import TrialWorker

    return TrialWorker(loop_config).run()
