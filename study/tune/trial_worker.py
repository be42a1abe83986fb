"""The training loop of one trial, in Tune's trial actor (one worker) or on each Ray Train worker (DDP); see
:mod:`study.tune.train_loop` for what it does and :mod:`study.tune.channel` for how it talks to Ray.
"""

from __future__ import annotations

import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from maae.config import MAAEConfig
from maae.engine import EpochStats, PreparedData, prepare_data
from maae.evaluation import Evaluation
from study.protocol import (
    MAX_ERROR_CHARS,
    RESULT_EPOCH,
    RESULT_EPOCHS,
    RESULT_ERROR,
    RESULT_EVALUATED,
    RESULT_FINAL,
    RESULT_NODE_ID,
    RESULT_STOPPED,
    RESULT_TRAIN_SECONDS,
    RESULT_WORLD_SIZE,
)
from study.tune.channel import TrialChannel
from study.tune.cluster import current_node_id
from study.tune.seed_group import SeedGroup, seed_result
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
    """State of one worker during one trial (one attempt: Tune or Ray Train restarts it from its checkpoint)."""

    def __init__(self, settings: LoopSettings, channel: TrialChannel) -> None:
        self.settings = settings
        # Tune's trial actor (one worker) or a Ray Train worker (DDP): see study.tune.channel.
        self.channel = channel
        self.rank = channel.rank
        self.world_size = channel.world_size
        self.device = channel.device
        self.eval_every = settings.eval_every
        self.started = time.perf_counter()
        # The trial's training sessions, one per seed (``repeats``), trained side by side (study.tune.seed_group).
        self.session: SeedGroup | None = None
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
        data = prepare_data(config, Path(self.settings.data_root), list(self.settings.categories),
                            device=self.device)
        session = SeedGroup(config, data, repeats=self.settings.repeats, device=self.device,
                            wrap_model=self.channel.model_wrapper)
        with self.channel.restored_checkpoint() as folder:
            if folder is not None:
                session.load(folder)  # every seed, or an error naming the one that does not belong
        self.config, self.data, self.session = config, data, session

    def _epoch(self) -> dict[str, Any]:
        """Train one epoch of every seed; on rank 0 also evaluate when due and write the checkpoint folder."""
        assert self.session is not None and self.config is not None
        stats = self.session.train_epoch()
        if self.rank != 0:
            return {}
        if self.session.epoch >= self.config.epochs:
            return self._finish(stats)
        due = self.eval_every > 0 and self.session.epoch % self.eval_every == 0
        evaluations = self._evaluate() if due else None
        folder = self._checkpoint_folder()
        self.session.write_resumable(folder)
        return {"metrics": self._metrics(stats, evaluations, final=False), "checkpoint_dir": folder}

    def _finish(self, stats: list[EpochStats] | None) -> dict[str, Any]:
        """After the last epoch: complete MAAE run folders (the first seed's, the others inside it under
        ``seeds/``) as the checkpoint, and the final metrics."""
        assert self.session is not None and self.config is not None and self.data is not None
        if self.rank != 0:
            return {}
        folder = self._checkpoint_folder()
        evaluations = self.session.finish(folder, seconds=time.perf_counter() - self.started)
        return {"metrics": self._metrics(stats, evaluations, final=True), "checkpoint_dir": folder}

    def _evaluate(self) -> list[Evaluation]:
        assert self.session is not None
        return self.session.evaluate()

    def _metrics(self, stats: list[EpochStats] | None, evaluations: list[Evaluation] | None, *,
                 final: bool) -> dict[str, Any]:
        """The epoch's result: the means over the seeds (what Optuna and ASHA see) and each seed's values."""
        assert self.session is not None and self.config is not None
        metrics: dict[str, Any] = {
            RESULT_EPOCH: self.session.epoch,
            RESULT_EPOCHS: self.config.epochs,
            RESULT_FINAL: final,
            RESULT_EVALUATED: evaluations is not None,
            RESULT_TRAIN_SECONDS: round(time.perf_counter() - self.started, 3),
            RESULT_WORLD_SIZE: self.world_size,
            RESULT_NODE_ID: current_node_id(),  # trials.csv node_id: where the trial ran (or resumed)
        }
        metrics.update(seed_result(self.session.seeds, stats, evaluations))
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
        verdict = self.channel.broadcast(local_failure)
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
        return bool(self.channel.broadcast(requested))

    def _report(self, metrics: dict[str, Any], checkpoint_dir: Path | None) -> None:
        self.channel.report(metrics, checkpoint_dir)

    def _report_failure(self, failure: str) -> dict[str, Any]:
        epoch = self.session.epoch if self.session is not None else 0
        epochs = self.config.epochs if self.config is not None else None
        metrics: dict[str, Any] = {RESULT_ERROR: failure, RESULT_EPOCH: epoch, RESULT_FINAL: True,
                                   RESULT_EVALUATED: False}
        if epochs is not None:
            metrics[RESULT_EPOCHS] = epochs
        self._report(metrics if self.rank == 0 else {}, None)
        return {RESULT_ERROR: failure}
