"""How a trial's training loop talks to the Ray library that runs it: a *channel*.

The loop (:class:`study.tune.trial_worker.TrialWorker`) is the same whoever runs it; what differs is where it
reports, which checkpoint it resumes from, how its ranks agree, and which device and threads it uses:

- :class:`TuneChannel`: a one-worker trial runs its loop in Tune's own trial actor (a function trainable).
  Reports go to ``tune.report`` with the checkpoint folder, a restarted trial resumes from
  ``tune.get_checkpoint()``, there is one rank, and the torch intra-op threads follow the trial's current
  CPUs (``tune.get_context().get_trial_resources()``), which Tune's ``ResourceChangingScheduler`` may raise
  in a study's tail (the trial restarts from its last checkpoint with the new resources).
- :class:`TrainChannel`: each worker of a Ray Train ``TorchTrainer`` (trials of two or more workers, DDP).
  Reports go to ``ray.train.report``, rank 0 decides for all ranks (``broadcast_from_rank_zero``), and models
  are wrapped by ``ray.train.torch.prepare_model``.

Both are built inside the process that trains (they read Ray's context there), so this module imports Ray
and torch only inside them.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol, TypeVar

from study.protocol import RESULT_INTRA_OP_THREADS

T = TypeVar("T")
# Where a one-worker trial stages the checkpoint folder it reports (one per trial, replaced at each report).
STAGING_PREFIX = "maae-trial-staged-"


class TrialChannel(Protocol):
    """What the training loop needs from the library that runs it."""

    rank: int
    world_size: int
    device: Any  # torch.device
    model_wrapper: Callable[[Any], Any] | None  # wraps each model (DDP), or None

    def restored_checkpoint(self) -> Any:
        """A context manager giving the folder of the checkpoint to resume from, or None."""

    def broadcast(self, value: T) -> T:
        """Rank 0's ``value`` on every rank."""

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        """One report of this rank (every rank reports equally often); rank 0's metrics and checkpoint count."""


def threads_for(cpus: float) -> int:
    """Intra-op threads for a trial holding ``cpus`` CPUs: one per whole CPU, at least one."""
    return max(1, math.floor(cpus + 1e-9))


# ------------------------------------------------------------------------------------------ Tune ---

class TuneChannel:
    """A one-worker trial in Tune's trial actor: one rank, Tune's reports and checkpoints."""

    rank = 0
    world_size = 1
    model_wrapper = None  # one rank: no DDP

    def __init__(self) -> None:
        import torch
        from ray import tune

        context = tune.get_context()
        required = context.get_trial_resources().required_resources
        self.cpus = float(required.get("CPU", 0.0))
        self.gpus = float(required.get("GPU", 0.0))
        self.trial_id = context.get_trial_id()
        self.threads = threads_for(self.cpus)
        # Tune restarts the trial in a new actor when its resources change, so this is set once per actor.
        torch.set_num_threads(self.threads)
        # Ray makes only the trial's GPUs visible to its actor, so the first visible one is the trial's.
        self.device = torch.device("cuda" if self.gpus > 0 else "cpu")
        self._staged = Path(tempfile.gettempdir()) / f"{STAGING_PREFIX}{self.trial_id}"

    @contextmanager
    def restored_checkpoint(self) -> Iterator[Path | None]:
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def broadcast(self, value: T) -> T:
        return value

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        from ray import tune

        metrics = {**metrics, RESULT_INTRA_OP_THREADS: self.threads} if metrics else metrics
        if checkpoint_dir is None:
            tune.report(metrics)
            return
        # Tune copies the folder to the trial's storage during the report, then blocks until the study lets
        # the trial go on; if the study pauses the trial there (a resource change) this process ends inside
        # the report. So the folder is moved to one staging place per trial, which the next report replaces.
        shutil.rmtree(self._staged, ignore_errors=True)
        shutil.move(str(checkpoint_dir), self._staged)
        tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(str(self._staged)))
        shutil.rmtree(self._staged, ignore_errors=True)


# ----------------------------------------------------------------------------------------- Train ---

class TrainChannel:
    """One worker of a Ray Train ``TorchTrainer`` (DDP across the trial's workers)."""

    def __init__(self) -> None:
        import ray.train
        import ray.train.torch

        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.model_wrapper = ray.train.torch.prepare_model

    @contextmanager
    def restored_checkpoint(self) -> Iterator[Path | None]:
        import ray.train

        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            yield None
            return
        with checkpoint.as_directory() as folder:
            yield Path(folder)

    def broadcast(self, value: T) -> T:
        if self.world_size == 1:
            return value
        from ray.train.collective import broadcast_from_rank_zero

        return broadcast_from_rank_zero(value)

    def report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        if self.rank == 0 and checkpoint_dir is not None:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)),
                             delete_local_checkpoint_after_upload=True)
        else:
            ray.train.report(metrics)
