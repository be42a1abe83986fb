"""Ray Tune and Ray Train glue: one Tune trial = one Ray Train ``TorchTrainer`` run of MAAE workers.

Ray Train V2 (the default in ray 2.60) is not a Tune trainable itself: each trial is a small Tune *function*
(:func:`study.trial.run_trial`, the trial's driver) that builds and fits a ``TorchTrainer`` whose workers run
:func:`study.worker.train_loop_per_worker`. ``TuneReportCallback`` turns every report of rank 0 into one Tune
result, so ASHA and Optuna see per-epoch metrics, and :class:`StudyCallback` turns Tune's events into the
results tables of :mod:`study.results` while the study runs.

Fault tolerance, in layers:
- a worker process that dies: Ray Train restarts the worker group from the trial's last checkpoint
  (``ray.train.FailureConfig(max_failures=worker_retries)``);
- a trial whose training raises (NaN loss, a setting only invalid at run time): the worker reports the error
  as the trial's last result and the trial ends normally, recorded as ``failed``; nothing retries it;
- Train's controller cannot place the workers: ``controller_failure_limit`` makes it fail instead of waiting
  forever (the command line also refuses such a study up front);
- the study's driver is killed: ``Tuner.restore`` continues unfinished trials, each from its Train run's
  last checkpoint (Train runs are named after the trial, so a restarted trial finds its own run), and keeps
  finished ones.
"""

from __future__ import annotations

import math
import sys
import threading
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ray import tune
from ray.tune.schedulers import AsyncHyperBandScheduler, TrialScheduler
from ray.tune.search.optuna import OptunaSearch

from maae.config import MAAEConfig
from study import results as res
from study.cluster import TRIAL_DRIVER_MEMORY_BYTES
from study.space import (
    KIND_SEARCH,
    SCHEDULER_ASHA,
    StudySpace,
    grid_param_space,
    optuna_distributions,
    trial_config,
)
from study.stopping import request_stop
from study.trial import TrialSettings, run_trial
from study.worker import RESULT_EPOCH, RESULT_EPOCHS, RESULT_ERROR, RESULT_LOSS, RESULT_STOPPED

TUNE_EXPERIMENT = "tune"
TRAIN_RUNS = "train"
# How often the HTML report is rebuilt while the study runs (the tables are rewritten on every event).
REPORT_INTERVAL_S = 60.0
# Tune reuses a trial driver's process for the next trial (saving a process start and Ray Train's imports per
# trial). That is safe only because Tune never stops a running trial here (see GracefulASHA): a function
# trainable stopped mid-run cannot be reset, and its Train run would keep its CPUs (a hang).
REUSE_TRIAL_ACTORS = True
PROGRESS_PREFIX = "[study]"


class GuardedOptunaSearch(OptunaSearch):
    """OptunaSearch that skips results without the metric (loss-only epochs, failure reports) and tells
    Optuna that a trial which reported an error failed."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        if all(_finite(result.get(m)) for m in metrics):
            super().on_trial_result(trial_id, result)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        failed = error or bool(result and result.get(RESULT_ERROR))
        metrics = self.metric if isinstance(self.metric, list) else [self.metric]
        usable = result if result and all(_finite(result.get(m)) for m in metrics) else None
        if result and result.get(RESULT_STOPPED):
            usable = None  # stopped early: Optuna records it as pruned
        super().on_trial_complete(trial_id, result=usable, error=failed)


class GracefulASHA(AsyncHyperBandScheduler):
    """ASHA whose STOP verdicts become requests that the trial honours after its current epoch
    (see :mod:`study.stopping`: Tune killing a running Train run leaks its resources in ray 2.60).

    ``stop_last_trials`` is off: a trial that reaches ``max_t`` ends by itself when its epochs are done.
    """

    def __init__(self, registry: str, **asha_options: Any) -> None:
        super().__init__(stop_last_trials=False, **asha_options)
        self.registry = registry

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        decision = super().on_trial_result(tune_controller, trial, result)
        if decision == TrialScheduler.STOP:
            request_stop(self.registry, trial.trial_id)
            return TrialScheduler.CONTINUE
        return decision


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# ------------------------------------------------------------------------------------- callback ---

@dataclass(frozen=True)
class RecorderSettings:
    """What the results callback needs (plain values: Tune pickles the callback with the Tuner)."""

    results_dir: str
    metric: str
    mode: str
    base_config: dict[str, Any]
    hyper_columns: tuple[str, ...]
    total_trials: int
    quiet: bool = False


def hyper_values(base_config: Mapping[str, Any], columns: tuple[str, ...], params: Mapping[str, Any]) -> dict:
    config = trial_config(MAAEConfig.from_dict(dict(base_config)), params)
    return {name: getattr(config, name) for name in columns}


class StudyCallback(tune.Callback):
    """Keeps ``trials.csv``, ``per_category.csv``, ``history.csv`` and ``best/`` current while Tune runs,
    rebuilds the report now and then, and prints one progress line per event."""

    def __init__(self, settings: RecorderSettings) -> None:
        self.settings = settings
        self._recorder: res.StudyRecorder | None = None
        self._best_copied: str | None = None
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
        self._refresh(trials)
        self._progress(trial.trial_id, result)

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        # Tune sets the trial's status after its callbacks ran: record the outcome it is about to get.
        self._refresh(trials, ending={trial.trial_id: res.TUNE_TERMINATED})
        self._progress(trial.trial_id, None)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self._refresh(trials, ending={trial.trial_id: res.TUNE_ERROR})
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
                if snapshot.tune_status == res.TUNE_ERROR and snapshot.error is None:
                    snapshot.error = _error_line(trial)
            recorder.observe(snapshot)
        recorder.write()
        self._update_best()
        if self._reports is not None:
            self._reports.request()

    def _update_best(self) -> None:
        best = self.recorder.best()
        if best is None or best.trial_id == self._best_copied or not best.checkpoint_path:
            return
        try:
            res.copy_run_folder(best.checkpoint_path, Path(self.settings.results_dir) / res.BEST_DIR)
            self._best_copied = best.trial_id
        except OSError as err:
            # Mid-study this is usually a checkpoint Train is rotating; the next event retries it.
            if self._ending:
                _say(f"could not copy the best trial's run folder ({err})", self.settings.quiet)

    def _progress(self, trial_id: str, result: dict | None) -> None:
        if self.settings.quiet:
            return
        recorder = self.recorder
        counts = recorder.counts()
        done = counts[res.COMPLETED] + counts[res.STOPPED] + counts[res.FAILED]
        record = recorder.trials.get(trial_id)
        parts = [f"{done}/{self.settings.total_trials} done ({counts[res.COMPLETED]} completed, "
                 f"{counts[res.STOPPED]} stopped, {counts[res.FAILED]} failed), {counts[res.RUNNING]} running"]
        if result is not None and record is not None:
            if result.get(RESULT_ERROR):
                parts.append(f"trial {trial_id} failed: {result[RESULT_ERROR]}")
            elif result.get(RESULT_STOPPED):
                parts.append(f"trial {trial_id} stops early after epoch {result.get(RESULT_EPOCH)} (ASHA)")
            elif RESULT_EPOCH in result:
                text = f"trial {trial_id} epoch {result[RESULT_EPOCH]}/{result.get(RESULT_EPOCHS, '?')}"
                if _finite(result.get(RESULT_LOSS)):
                    text += f" loss {result[RESULT_LOSS]:.4f}"
                if _finite(result.get(self.settings.metric)):
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
    if trial.status == res.TUNE_ERROR:
        record = recorder.trials.get(trial.trial_id)
        if record is None or not record.error:
            error = _error_line(trial)
    last = dict(trial.last_result or {})
    record = recorder.record(trial.trial_id)
    if last.get(res.CHECKPOINT_PATH_KEY):
        record.checkpoint_path = str(last[res.CHECKPOINT_PATH_KEY])
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
    return (line[:600] + where)[:800]


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
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def experiment_path(self) -> str:
        return f"{self.ray_storage.rstrip('/')}/{TUNE_EXPERIMENT}"


def trainable(plan: TunerPlan) -> Any:
    with_settings = tune.with_parameters(run_trial, settings=plan.trial_settings)
    return tune.with_resources(with_settings, {"memory": TRIAL_DRIVER_MEMORY_BYTES})


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
        search_alg = GuardedOptunaSearch(space=optuna_distributions(space), metric=metric, mode=mode,
                                         seed=plan.seed)
    else:
        param_space = grid_param_space(space)
    scheduler = None
    if space.scheduler.type == SCHEDULER_ASHA:
        top = max_epochs(space, plan.base)
        scheduler = GracefulASHA(plan.trial_settings.stop_registry, time_attr=RESULT_EPOCH, metric=space.metric,
                                 mode=space.mode, max_t=top, grace_period=min(space.scheduler.grace_period, top),
                                 reduction_factor=space.scheduler.reduction_factor)
    return tune.Tuner(
        trainable(plan),
        param_space=param_space,
        tune_config=tune.TuneConfig(search_alg=search_alg, scheduler=scheduler, num_samples=space.num_samples,
                                    max_concurrent_trials=plan.max_concurrent, reuse_actors=REUSE_TRIAL_ACTORS),
        run_config=tune.RunConfig(name=TUNE_EXPERIMENT, storage_path=plan.ray_storage,
                                  callbacks=[StudyCallback(plan.recorder_settings)],
                                  failure_config=tune.FailureConfig(max_failures=0), verbose=0),
    )


def can_restore(plan: TunerPlan) -> bool:
    return tune.Tuner.can_restore(plan.experiment_path)


def restore_tuner(plan: TunerPlan) -> tune.Tuner:
    """The interrupted study's Tuner: unfinished trials continue, errored ones run again, finished ones stay."""
    return tune.Tuner.restore(plan.experiment_path, trainable=trainable(plan), resume_unfinished=True,
                              resume_errored=True)
