"""Which of a one-worker trial's checkpoints may go: :class:`CheckpointPruner`, a Tune callback.

A one-worker trial reports a checkpoint (a whole MAAE run folder) every epoch. ``--resume`` restores each
unfinished trial from the checkpoint that Tune's last saved experiment state names, so that one must still
exist. Tune's own ``CheckpointConfig(num_to_keep=K)`` cannot promise it: Tune deletes the oldest kept
checkpoint while it registers the new one and saves its state only afterwards (it forces a save once a trial
has made K checkpoints since the last one, and the upload of the state file runs in the background). A
driver killed in between left a state that named a deleted checkpoint, and ``--resume`` failed that trial
("Could not recover from checkpoint as it does not exist on storage anymore"; seen with epochs of a fraction
of a second, when K checkpoints come faster than Tune's 2-s state saves).

So the study lets Tune keep every checkpoint and deletes them itself, by time: a checkpoint goes once a newer
one of the same trial has been registered for :data:`KEEP_AFTER_SUPERSEDED_S`. Tune saves its experiment
state every ``TUNE_GLOBAL_CHECKPOINT_S`` (2 s, see :mod:`study.tune.cluster`), so by then a saved state names
the newer checkpoint or a later one, and no saved state still needs the old one. The newest checkpoint of a
trial is never deleted. Checkpoints a killed study left behind are found in the trial's folder when the
trial checkpoints again after ``--resume``, and go the same way.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs
from ray import tune

from study.tune.cluster import STUDY_ENV

logger = logging.getLogger(__name__)

CHECKPOINT_PREFIX = "checkpoint_"
# Tune's state-save period in the study (seconds), and how many such periods a superseded checkpoint waits:
# ten leave room for a save that waits for a slow upload or a busy driver.
STATE_SAVE_PERIOD_S = float(STUDY_ENV["TUNE_GLOBAL_CHECKPOINT_S"])
KEEP_AFTER_SUPERSEDED_S = 10 * STATE_SAVE_PERIOD_S


@dataclass
class _Kept:
    """One trial's checkpoints still on storage, oldest first, and when each was superseded."""

    filesystem: Any
    paths: list[str] = field(default_factory=list)
    superseded_at: dict[str, float] = field(default_factory=dict)  # path -> when a newer one was registered


class CheckpointPruner(tune.Callback):
    """Deletes a one-worker trial's checkpoints once a newer one has been registered long enough that Tune's
    saved experiment state no longer names them (see the module docstring)."""

    def __init__(self, keep_after_superseded_s: float = KEEP_AFTER_SUPERSEDED_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.keep_after_superseded_s = keep_after_superseded_s
        self.clock = clock
        self._trials: dict[str, _Kept] = {}

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its callbacks with the Tuner; what was kept is found again on disk after --resume.
        return {"keep_after_superseded_s": self.keep_after_superseded_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["keep_after_superseded_s"])

    # Tune hooks ---------------------------------------------------------------------------------
    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        self.register(trial.trial_id, checkpoint.filesystem, str(checkpoint.path))  # pruned at the step's end

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        self.prune()

    # the rule -----------------------------------------------------------------------------------
    def register(self, trial_id: str, filesystem: Any, path: str) -> None:
        """A new checkpoint of the trial: every older one it knows (or finds in the trial's folder, left by
        an earlier run of the study) is superseded from now on."""
        now = self.clock()
        kept = self._trials.get(trial_id)
        if kept is None:
            kept = self._trials[trial_id] = _Kept(filesystem, _older_checkpoints(filesystem, path))
        for older in kept.paths:
            kept.superseded_at.setdefault(older, now)
        if path not in kept.paths:
            kept.paths.append(path)

    def prune(self) -> list[str]:
        """Delete every checkpoint superseded for long enough; returns their paths."""
        now = self.clock()
        deleted = []
        for kept in self._trials.values():
            for path in list(kept.paths[:-1]):  # never the newest
                since = kept.superseded_at.get(path)
                if since is None or now - since < self.keep_after_superseded_s:
                    continue
                try:
                    kept.filesystem.delete_dir(path)
                except FileNotFoundError:
                    pass  # already gone (deleted by hand, or a restarted study's leftovers)
                except OSError as err:  # a storage hiccup: try again at the next step
                    logger.warning("could not delete the superseded checkpoint %s: %s", path, err)
                    continue
                kept.paths.remove(path)
                kept.superseded_at.pop(path, None)
                deleted.append(path)
        return deleted

    def kept(self, trial_id: str) -> list[str]:
        """The trial's checkpoints that are still on storage, oldest first."""
        kept = self._trials.get(trial_id)
        return list(kept.paths) if kept else []


def _older_checkpoints(filesystem: Any, path: str) -> list[str]:
    """Checkpoint folders beside ``path`` in its trial folder with a lower index (oldest first)."""
    parent, _, name = path.rstrip("/").rpartition("/")
    try:
        infos = filesystem.get_file_info(pafs.FileSelector(parent, allow_not_found=True))
    except OSError:
        return []
    return sorted(info.path for info in infos if info.type == pafs.FileType.Directory
                  and info.base_name.startswith(CHECKPOINT_PREFIX) and info.base_name < name)


__all__ = ["KEEP_AFTER_SUPERSEDED_S", "CheckpointPruner"]
