"""The training loop of one trial on one Ray Train worker (see :mod:`study.tune.train_loop` for what it does).

The only module of ``study/`` that touches torch, and only through Ray Train's device and DDP helpers.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maae.config import MAAEConfig
from maae.engine import EpochStats, PreparedData, TrainingSession, prepare_data
from maae.evaluation import Evaluation, evaluate, normal_score_reference
from maae.run_folder import load_checkpoint, write_resumable_run, write_run
from study.protocol import (
    MAX_ERROR_CHARS,
    RESULT_EPOCH,
    RESULT_EPOCHS,
    RESULT_ERROR,
    RESULT_EVALUATED,
    RESULT_FINAL,
    RESULT_IMAGES_PER_SECOND,
    RESULT_LOSS,
    RESULT_NOISE_PENALTY,
    RESULT_PER_CATEGORY,
    RESULT_STOPPED,
    RESULT_TRAIN_SECONDS,
    RESULT_WORLD_SIZE,
)
from study.tune.settings import LoopSettings
from study.tune.stopping import stop_requested

# Prefix of the temporary folders rank 0 writes its checkpoints to (Ray Train uploads and deletes them).
CHECKPOINT_PREFIX = "maae-trial-checkpoint-"


def describe_error(error: BaseException) -> str:
    """One line for the results: the exception type and message (never a full traceback)."""
    message = " ".join(str(error).split()) or "(no message)"
    text = f"{type(error).__name__}: {message}"
    return text if len(text) <= MAX_ERROR_CHARS else text[: MAX_ERROR_CHARS - 3] + "..."


class TrialWorker:
    """State of one worker during one trial (one attempt: Ray Train restarts it from its checkpoint)."""

    def __init__(self, settings: LoopSettings) -> None:
        import ray.train
        import ray.train.torch

        self.settings = settings
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world_size = context.get_world_size()
        self.device = ray.train.torch.get_device()
        self.eval_every = settings.eval_every
        self.started = time.perf_counter()
        self.session: TrainingSession | None = None
        self.data: PreparedData | None = None
        self.config: MAAEConfig | None = None
        self._agree_last = ""

    # ---------------------------------------------------------------------------------------- loop ---
    def run(self) -> dict[str, Any] | None:
        _, failure = self._guard(self._setup)
        if self._agree(failure):
            return self._report_failure(self._agree_last)
        assert self.session is not None and self.config is not None
        restored_final = self.session.epoch >= self.config.epochs  # report the final checkpoint again
        while restored_final or self.session.epoch < self.config.epochs:
            step = (lambda: self._finish(None)) if restored_final else self._epoch
            outcome, failure = self._guard(step)
            if self._agree(failure):
                return self._report_failure(self._agree_last)
            outcome = outcome or {}
            self._report(outcome.get("metrics", {}), outcome.get("checkpoint_dir"))
            restored_final = False
            if self.session.epoch < self.config.epochs and self._stop_requested():
                stopped = {RESULT_STOPPED: True, RESULT_EPOCH: self.session.epoch, RESULT_EPOCHS: self.config.epochs}
                self._report(stopped if self.rank == 0 else {}, None)
                return None
        return None

    def _setup(self) -> None:
        config = self.settings.config
        import ray.train
        import ray.train.torch

        data = prepare_data(config, Path(self.settings.data_root), list(self.settings.categories),
                            device=self.device)
        session = TrainingSession(config, data, device=self.device, wrap_model=ray.train.torch.prepare_model)
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                saved = load_checkpoint(Path(folder))
            if not saved.belongs_to(config, data.categories):
                raise RuntimeError(f"checkpoint in {checkpoint.path} belongs to another configuration")
            session.load_state_dict(saved.state)
        self.config, self.data, self.session = config, data, session

    def _epoch(self) -> dict[str, Any]:
        """Train one epoch; on rank 0 also evaluate when due and write the checkpoint folder."""
        assert self.session is not None and self.config is not None
        stats = self.session.train_epoch()
        if self.rank != 0:
            return {}
        if self.session.epoch >= self.config.epochs:
            return self._finish(stats)
        due = self.eval_every > 0 and self.session.epoch % self.eval_every == 0
        evaluation = self._evaluate() if due else None
        folder = self._checkpoint_folder()
        write_resumable_run(folder, self.session)
        return {"metrics": self._metrics(stats, evaluation, final=False), "checkpoint_dir": folder}

    def _finish(self, stats: EpochStats | None) -> dict[str, Any]:
        """After the last epoch: a complete MAAE run folder as the checkpoint, and the final metrics."""
        assert self.session is not None and self.config is not None and self.data is not None
        if self.rank != 0:
            return {}
        evaluation = self._evaluate()
        models = self.session.evaluation_models()
        reference = normal_score_reference(models, self.data, self.config, device=self.device)
        folder = self._checkpoint_folder()
        write_run(folder, self.session, evaluation, normal_reference=reference,
                  seconds=time.perf_counter() - self.started)
        return {"metrics": self._metrics(stats, evaluation, final=True), "checkpoint_dir": folder}

    def _evaluate(self) -> Evaluation:
        assert self.session is not None and self.data is not None and self.config is not None
        models = self.session.evaluation_models()
        return evaluate(models, self.data, self.config, device=self.device)

    def _metrics(self, stats: EpochStats | None, evaluation: Evaluation | None, *, final: bool) -> dict[str, Any]:
        assert self.session is not None and self.config is not None
        metrics: dict[str, Any] = {
            RESULT_EPOCH: self.session.epoch,
            RESULT_EPOCHS: self.config.epochs,
            RESULT_FINAL: final,
            RESULT_EVALUATED: evaluation is not None,
            RESULT_TRAIN_SECONDS: round(time.perf_counter() - self.started, 3),
            RESULT_WORLD_SIZE: self.world_size,
        }
        if stats is not None:
            metrics[RESULT_LOSS] = stats.loss
            if stats.noise_penalty is not None:
                metrics[RESULT_NOISE_PENALTY] = stats.noise_penalty
            metrics[RESULT_IMAGES_PER_SECOND] = stats.images_per_second
        if evaluation is not None:
            metrics.update({name: float(value) for name, value in evaluation.means.items()})
            metrics[RESULT_PER_CATEGORY] = {category: {name: float(value) for name, value in values.items()}
                                            for category, values in evaluation.per_category.items()}
        return metrics

    def _checkpoint_folder(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=CHECKPOINT_PREFIX))

    # ------------------------------------------------------------------------------ coordination ---
    def _guard(self, step: Callable[[], Any]) -> tuple[Any, str | None]:
        """Run ``step``; return (its value, None) or (None, the error line) instead of raising, so that
        all ranks can stop together."""
        try:
            return step(), None
        except Exception as error:  # noqa: BLE001 - every training error becomes a failed trial
            if self.rank == 0:
                traceback.print_exc()
            return None, describe_error(error)

    def _agree(self, local_failure: str | None) -> bool:
        """Whether the trial failed, by rank 0's verdict for every rank (kept in ``_agree_last``).

        A rank that failed alone raises: Ray Train then restarts the worker group from the last checkpoint
        (a problem of that worker, not of the trial's settings).
        """
        verdict = local_failure
        if self.world_size > 1:
            from ray.train.collective import broadcast_from_rank_zero

            verdict = broadcast_from_rank_zero(local_failure)
            if verdict is None and local_failure is not None:
                raise RuntimeError(f"rank {self.rank} failed alone: {local_failure}")
        self._agree_last = verdict or ""
        return verdict is not None

    def _stop_requested(self) -> bool:
        """Whether the scheduler asked this trial to stop (rank 0 asks; every rank gets its answer)."""
        name, trial_id = self.settings.stop_registry, self.settings.trial_id
        if not name or not trial_id:
            return False
        requested = stop_requested(name, trial_id) if self.rank == 0 else False
        if self.world_size > 1:
            from ray.train.collective import broadcast_from_rank_zero

            requested = bool(broadcast_from_rank_zero(requested))
        return requested

    def _report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        import ray.train

        if self.rank == 0 and checkpoint_dir is not None:
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(str(checkpoint_dir)),
                             delete_local_checkpoint_after_upload=True)
        else:
            ray.train.report(metrics)

    def _report_failure(self, failure: str) -> dict[str, Any]:
        epoch = self.session.epoch if self.session is not None else 0
        epochs = self.config.epochs if self.config is not None else None
        metrics: dict[str, Any] = {RESULT_ERROR: failure, RESULT_EPOCH: epoch, RESULT_FINAL: True,
                                   RESULT_EVALUATED: False}
        if epochs is not None:
            metrics[RESULT_EPOCHS] = epochs
        self._report(metrics if self.rank == 0 else {}, None)
        return {RESULT_ERROR: failure}
