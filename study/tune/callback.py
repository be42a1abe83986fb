"""The study's Tune callback: Tune's trial events become the results tables, ``best/`` and the report.

:class:`StudyCallback` hands every event to a :class:`study.results.StudyRecorder` (which knows nothing of
Ray), rewrites ``trials.csv``, ``per_category.csv`` and ``history.csv``, copies the best trial's run folder
to ``best/``, prints one progress line, and asks a :class:`ReportRefresher` to rebuild the HTML report in the
background now and then.

Where a trial's run folder is: a multi-worker trial's results carry its Ray Train checkpoint's path
(``checkpoint_path``); a one-worker trial reports its checkpoint to Tune itself, which persists it after the
result's callbacks and then tells :meth:`StudyCallback.on_checkpoint` where it is.
"""

from __future__ import annotations

import math
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.result import SHOULD_CHECKPOINT

from maae.config import MAAEConfig
from study import results as res
from study.protocol import (
    BEST_DIR,
    CHECKPOINT_PATH_KEY,
    COMPLETED,
    FAILED,
    MAX_ERROR_CHARS,
    RESULT_EPOCH,
    RESULT_EPOCHS,
    RESULT_ERROR,
    RESULT_LOSS,
    RESULT_STOPPED,
    RUNNING,
    STOPPED,
    TUNE_ERROR,
    TUNE_TERMINATED,
)
from study.space import hyperparameter_values

# How often the HTML report is rebuilt while the study runs (the tables are rewritten on every event).
REPORT_INTERVAL_S = 60.0
PROGRESS_PREFIX = "[study]"
# The longest error line taken from a trial's error trace, and the longest with the trace's path.
ERROR_LINE_CHARS = 600


def is_finite(value: Any) -> bool:
    """Whether ``value`` is a finite number (booleans are not numbers here)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class RecorderSettings:
    """What the results callback needs (plain values: Tune pickles the callback with the Tuner)."""

    results_dir: str
    metric: str
    mode: str
    base_config: MAAEConfig
    hyper_columns: tuple[str, ...]
    total_trials: int
    quiet: bool = False


def hyper_values(base_config: MAAEConfig, columns: tuple[str, ...], params: Mapping[str, Any]) -> dict:
    """A trial's values of the ``trials.csv`` hyperparameter columns: its config's, after the merge (a derived
    parameter such as ``lambda_ratio`` as sampled)."""
    return hyperparameter_values(base_config, columns, params)


class StudyCallback(tune.Callback):
    """Keeps ``trials.csv``, ``per_category.csv``, ``history.csv`` and ``best/`` current while Tune runs,
    rebuilds the report now and then, and prints one progress line per event."""

    def __init__(self, settings: RecorderSettings) -> None:
        self.settings = settings
        self._recorder: res.StudyRecorder | None = None
        self._best_copied: tuple[str, str] | None = None  # (trial id, run folder) copied to best/
        self._ending = False
        self._reports: ReportRefresher | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"settings": self.settings}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["settings"])

    @property
    def recorder(self) -> res.StudyRecorder:
        if self._recorder is None:
            s = self.settings
            recorder = res.StudyRecorder(
                Path(s.results_dir), metric=s.metric, mode=s.mode, hyper_columns=s.hyper_columns,
                hyper_values=lambda params: hyper_values(s.base_config, s.hyper_columns, params))
            recorder.load_existing()  # a resumed study continues its tables (a new one has none yet)
            self._recorder = recorder
        return self._recorder

    # Tune hooks ---------------------------------------------------------------------------------
    def setup(self, **info: Any) -> None:
        _ = self.recorder
        self._reports = ReportRefresher(Path(self.settings.results_dir))

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.recorder.start(trial.trial_id)
        self._refresh(trials)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.recorder.add_result(trial.trial_id, result)
        if result.get(SHOULD_CHECKPOINT) and not result.get(CHECKPOINT_PATH_KEY):
            # A one-worker trial's checkpoint of this result: Tune registers it next (on_checkpoint); until
            # then the trial's last known run folder is an older epoch's, not to be copied to best/.
            self.recorder.record(trial.trial_id).checkpoint_path = None
        self._refresh(trials)
        self._progress(trial.trial_id, result)

    def on_checkpoint(self, iteration: int, trials: list, trial: Any, checkpoint: Any, **info: Any) -> None:
        """A one-worker trial's checkpoint, persisted by Tune: the trial's run folder is now this one."""
        self.recorder.record(trial.trial_id).checkpoint_path = str(checkpoint.path)
        self._update_best()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune sets the trial's status after its callbacks ran: record the outcome it is about to get.
        self._refresh(trials, ending={trial.trial_id: TUNE_TERMINATED})
        self._progress(trial.trial_id, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._refresh(trials, ending={trial.trial_id: TUNE_ERROR})
        self._progress(trial.trial_id, None)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        self._ending = True
        self._refresh(trials)
        if self._reports is not None:
            self._reports.close()  # the study's end writes the final report itself

    # internals ----------------------------------------------------------------------------------
    def _refresh(self, trials: list, ending: Mapping[str, str] | None = None) -> None:
        recorder = self.recorder
        for trial in trials:
            snapshot = _snapshot(trial, recorder)
            if ending and trial.trial_id in ending:
                snapshot.tune_status = ending[trial.trial_id]
                if snapshot.tune_status == TUNE_ERROR and snapshot.error is None:
                    snapshot.error = _error_line(trial)
            recorder.observe(snapshot)
        recorder.write()
        self._update_best()
        if self._reports is not None:
            self._reports.request()

    def _update_best(self) -> None:
        best = self.recorder.best()
        if best is None or not best.checkpoint_path or (best.trial_id, best.checkpoint_path) == self._best_copied:
            return
        try:
            res.copy_run_folder(best.checkpoint_path, Path(self.settings.results_dir) / BEST_DIR)
            self._best_copied = (best.trial_id, best.checkpoint_path)
        except OSError as err:
            # Mid-study this is usually a checkpoint Train is rotating; the next event retries it.
            if self._ending:
                _say(f"could not copy the best trial's run folder ({err})", self.settings.quiet)

    def _progress(self, trial_id: str, result: dict | None) -> None:
        if self.settings.quiet:
            return
        recorder = self.recorder
        counts = recorder.counts()
        done = counts[COMPLETED] + counts[STOPPED] + counts[FAILED]
        record = recorder.trials.get(trial_id)
        parts = [f"{done}/{self.settings.total_trials} done ({counts[COMPLETED]} completed, "
                 f"{counts[STOPPED]} stopped, {counts[FAILED]} failed), {counts[RUNNING]} running"]
        if result is not None and record is not None:
            if result.get(RESULT_ERROR):
                parts.append(f"trial {trial_id} failed: {result[RESULT_ERROR]}")
            elif result.get(RESULT_STOPPED):
                parts.append(f"trial {trial_id} stops early after epoch {result.get(RESULT_EPOCH)} (ASHA)")
            elif RESULT_EPOCH in result:
                text = f"trial {trial_id} epoch {result[RESULT_EPOCH]}/{result.get(RESULT_EPOCHS, '?')}"
                if is_finite(result.get(RESULT_LOSS)):
                    text += f" loss {result[RESULT_LOSS]:.4f}"
                if is_finite(result.get(self.settings.metric)):
                    text += f" {self.settings.metric} {result[self.settings.metric]:.4f}"
                parts.append(text)
        elif record is not None:
            parts.append(f"trial {trial_id} {record.status}" + (f": {record.error}" if record.error else ""))
        best = recorder.best()
        if best is not None:
            parts.append(f"best {self.settings.metric} {best.means[self.settings.metric]:.4f} ({best.trial_id})")
        _say(" | ".join(parts), False)


def _snapshot(trial: Any, recorder: res.StudyRecorder) -> res.TrialSnapshot:
    error = None
    if trial.status == TUNE_ERROR:
        record = recorder.trials.get(trial.trial_id)
        if record is None or not record.error:
            error = _error_line(trial)
    last = dict(trial.last_result or {})
    record = recorder.record(trial.trial_id)
    if last.get(CHECKPOINT_PATH_KEY):
        record.checkpoint_path = str(last[CHECKPOINT_PATH_KEY])
    return res.TrialSnapshot(trial.trial_id, trial.status, dict(trial.config or {}), last, error)


def _error_line(trial: Any) -> str:
    """The most telling line of a trial's error trace (Tune keeps the full trace in error.txt)."""
    try:
        text = trial.get_error() or ""
    except Exception:  # noqa: BLE001 - the message is informative only
        text = ""
    lines = [line.strip() for line in str(text).splitlines() if line.strip()]
    telling = [line for line in lines if "Error" in line.split(":", 1)[0] or "Exception" in line.split(":", 1)[0]]
    line = (telling or lines or ["trial raised an error"])[-1]
    where = f" (trace: {trial.error_file})" if getattr(trial, "error_file", None) else ""
    return (line[:ERROR_LINE_CHARS] + where)[:MAX_ERROR_CHARS]


class ReportRefresher:
    """Rebuilds the HTML report in a background thread, at most every :data:`REPORT_INTERVAL_S`, so that
    Tune's event loop never waits for it (the report only reads the tables, which are replaced atomically).
    """

    def __init__(self, results_dir: Path) -> None:
        self.results_dir = results_dir
        self._wanted = threading.Event()
        self._closed = threading.Event()
        self._warned = False
        self._thread = threading.Thread(target=self._loop, name="study-report", daemon=True)
        self._thread.start()

    def request(self) -> None:
        self._wanted.set()

    def close(self) -> None:
        self._closed.set()
        self._wanted.set()
        self._thread.join(timeout=REPORT_INTERVAL_S)

    def _loop(self) -> None:
        while not self._closed.is_set():
            self._wanted.wait()
            if self._closed.is_set():
                return
            self._wanted.clear()
            self._warned = write_report_safely(self.results_dir, self._warned)
            self._closed.wait(REPORT_INTERVAL_S)


def write_report_safely(results_dir: Path, warned: bool) -> bool:
    """Call ``study.report.write_report`` if it exists; never let the report break the study.

    Returns whether a warning has been printed (so it is printed once).
    """
    try:
        from study.report import write_report
    except Exception as err:  # noqa: BLE001 - the report is optional
        if not warned:
            _say(f"warning: no report (study.report unavailable: {type(err).__name__}: {err})", False)
        return True
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            write_report(results_dir)
    except Exception as err:  # noqa: BLE001 - the report is optional
        if not warned:
            _say(f"warning: report not written ({type(err).__name__}: {err})", False)
        return True
    return warned


def _say(message: str, quiet: bool) -> None:
    if not quiet:
        print(f"{PROGRESS_PREFIX} {message}", file=sys.stderr, flush=True)


