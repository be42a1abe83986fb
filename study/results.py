"""A study's results folder (``docs/results-format.md``): trial rows, per-category and per-epoch tables,
``study.json``, and the best trial's run folder. Every file is written atomically.

:class:`StudyRecorder` knows nothing of Ray: the Tune callback in :mod:`study.tune.callback` hands it plain
:class:`TrialSnapshot` values and each reported result. It keeps what it has seen, and reads back what an
earlier (killed) run of the same study wrote, so ``--resume`` continues the tables instead of starting over.

With seed repeats (``repeats: k``) a trial reports the means over its k seeds and each seed's own values
(:mod:`study.protocol`): ``trials.csv`` and ``history.csv`` hold the means (and ``n_seeds``, ``seeds``),
``per_category.csv`` one row per trial, seed and category.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from maae.io import write_csv_atomic, write_json_atomic
from study.protocol import (
    CATEGORY,
    CHECKPOINT_PATH_KEY,
    COMPLETED,
    EPOCH,
    EPOCHS_DONE,
    ERROR,
    FAILED,
    HISTORY_COLUMNS,
    HISTORY_FILE,
    INTRA_OP_THREADS,
    LOSS,
    METRIC_NAMES,
    MODE_MAX,
    N_SEEDS,
    NODE_ID,
    PENDING,
    PER_CATEGORY_COLUMNS,
    PER_CATEGORY_FILE,
    RESULT_EPOCH,
    RESULT_EPOCHS,
    RESULT_ERROR,
    RESULT_EVALUATED,
    RESULT_FINAL,
    RESULT_INTRA_OP_THREADS,
    RESULT_LOSS,
    RESULT_NODE_ID,
    RESULT_PER_CATEGORY,
    RESULT_SEED_PER_CATEGORY,
    RESULT_SEEDS,
    RESULT_STOPPED,
    RUNNING,
    SECONDS,
    SEED_COLUMN,
    SEED_SEPARATOR,
    SEEDS,
    STATUS,
    STATUSES,
    STOPPED,
    STUDY_FILE,
    TRIAL_ID,
    TRIAL_RESULT_COLUMNS,
    TRIALS_FILE,
    TUNE_ERROR,
    TUNE_PENDING,
    TUNE_RUNNING,
    TUNE_TERMINATED,
    TUNE_TIME_TOTAL,
)


@dataclass
class TrialSnapshot:
    """What Tune knows about a trial at one moment, in plain values."""

    trial_id: str
    tune_status: str
    params: dict[str, Any]
    last_result: dict[str, Any] | None = None
    error: str | None = None


@dataclass
class TrialRecord:
    """Everything the results tables hold about one trial."""

    trial_id: str
    params: dict[str, Any] = field(default_factory=dict)
    tune_status: str = TUNE_PENDING
    history: dict[int, dict[str, Any]] = field(default_factory=dict)
    means: dict[str, float] = field(default_factory=dict)  # over categories and seeds
    per_category: dict[str, dict[str, float]] = field(default_factory=dict)  # category -> means over seeds
    seeds: list[int] = field(default_factory=list)  # the seeds the means are over (empty: not reported yet)
    # seed -> category -> that seed's metrics; a result without seeds is the trial's own seed (params' seed).
    seed_per_category: dict[int | None, dict[str, dict[str, float]]] = field(default_factory=dict)
    loss: float | None = None
    epochs_done: int = 0
    epochs: int | None = None
    seconds: float | None = None
    error: str | None = None
    final: bool = False
    stopped: bool = False  # the trial ended early at the scheduler's request (ASHA)
    checkpoint_path: str | None = None
    node_id: str | None = None  # the Ray node of the last report (trials.csv ``node_id``)
    # The raw parameters ``params`` was derived from: a trial's hyperparameter values are derived once per
    # distinct set of parameters, not on every Tune event.
    raw_params: dict[str, Any] | None = field(default=None, repr=False)

    @property
    def status(self) -> str:
        """``failed`` (error), ``completed`` (its last epoch reported), ``stopped`` (ended early by ASHA),
        ``running``, or ``pending`` (not started, or cut off by an interruption: ``--resume`` continues it)."""
        if self.error:
            return FAILED
        if self.final:
            return COMPLETED
        if self.stopped:
            return STOPPED
        if self.tune_status == TUNE_RUNNING:
            return RUNNING
        if self.tune_status == TUNE_ERROR:
            return FAILED
        return PENDING


class StudyRecorder:
    """The tables of one study, kept in memory and written to ``results_dir`` on :meth:`write`."""

    def __init__(self, results_dir: Path, *, metric: str, mode: str, hyper_columns: Sequence[str],
                 hyper_values: Callable[[Mapping[str, Any]], dict[str, Any]]) -> None:
        self.results_dir = Path(results_dir)
        self.metric = metric
        self.mode = mode
        self.hyper_columns = list(hyper_columns)
        self.hyper_values = hyper_values
        self.trials: dict[str, TrialRecord] = {}

    # ---------------------------------------------------------------------------------- updates ---
    def record(self, trial_id: str) -> TrialRecord:
        if trial_id not in self.trials:
            self.trials[trial_id] = TrialRecord(trial_id)
        return self.trials[trial_id]

    def observe(self, snapshot: TrialSnapshot) -> None:
        """Update a trial's status, parameters and (for Tune errors) its error message."""
        record = self.record(snapshot.trial_id)
        record.tune_status = snapshot.tune_status
        if snapshot.params and snapshot.params != record.raw_params:
            record.params = self._hyper(snapshot.params)
            record.raw_params = dict(snapshot.params)
        if snapshot.tune_status == TUNE_ERROR and not record.error:
            record.error = snapshot.error or "trial raised an error (see Ray's error.txt under ray/)"
        if snapshot.last_result and TUNE_TIME_TOTAL in snapshot.last_result:
            record.seconds = float(snapshot.last_result[TUNE_TIME_TOTAL])

    def start(self, trial_id: str) -> None:
        """A trial (re)starts: forget an error or a final flag an earlier attempt left."""
        record = self.record(trial_id)
        record.error = None
        record.final = False
        record.stopped = False

    def add_result(self, trial_id: str, result: Mapping[str, Any]) -> None:
        """One reported epoch (or a failure) of a trial."""
        record = self.record(trial_id)
        if RESULT_ERROR in result and result[RESULT_ERROR]:
            record.error = str(result[RESULT_ERROR])
        if TUNE_TIME_TOTAL in result:
            record.seconds = float(result[TUNE_TIME_TOTAL])
        if RESULT_EPOCHS in result:
            record.epochs = int(result[RESULT_EPOCHS])
        if result.get(RESULT_SEEDS):
            record.seeds = [int(seed) for seed in result[RESULT_SEEDS]]
        if result.get(CHECKPOINT_PATH_KEY):
            record.checkpoint_path = str(result[CHECKPOINT_PATH_KEY])
        if result.get(RESULT_NODE_ID):
            record.node_id = str(result[RESULT_NODE_ID])
        if result.get(RESULT_STOPPED):
            record.stopped = True
        if RESULT_EPOCH not in result or result.get(RESULT_ERROR) or result.get(RESULT_STOPPED):
            return
        epoch = int(result[RESULT_EPOCH])
        record.epochs_done = max(record.epochs_done, epoch)
        row: dict[str, Any] = {TRIAL_ID: trial_id, EPOCH: epoch, LOSS: _number(result.get(RESULT_LOSS)),
                               INTRA_OP_THREADS: _number(result.get(RESULT_INTRA_OP_THREADS))}
        if result.get(RESULT_LOSS) is not None:
            record.loss = _number(result[RESULT_LOSS])
        if result.get(RESULT_EVALUATED):
            means = {name: _number(result.get(name)) for name in METRIC_NAMES}
            row.update(means)
            record.means = means
            record.per_category = _metric_table(result.get(RESULT_PER_CATEGORY) or {})
            by_seed = result.get(RESULT_SEED_PER_CATEGORY)
            record.seed_per_category = ({int(seed): _metric_table(table) for seed, table in by_seed.items()}
                                        if by_seed else {None: record.per_category})
        previous = record.history.get(epoch, {})
        record.history[epoch] = {**previous, **{k: v for k, v in row.items() if v is not None}}
        if result.get(RESULT_FINAL):
            record.final = True

    def _hyper(self, params: Mapping[str, Any]) -> dict[str, Any]:
        try:
            return self.hyper_values(params)
        except Exception:  # noqa: BLE001 - an invalid combination still gets a row (it fails as a trial)
            return {name: params.get(name) for name in self.hyper_columns}

    # ----------------------------------------------------------------------------------- tables ---
    def trials_frame(self) -> pd.DataFrame:
        rows = []
        for record in self.trials.values():
            row: dict[str, Any] = {TRIAL_ID: record.trial_id, STATUS: record.status}
            row.update({name: record.params.get(name) for name in self.hyper_columns})
            row.update({name: record.means.get(name) for name in METRIC_NAMES})
            row.update({LOSS: record.loss, EPOCHS_DONE: record.epochs_done, SECONDS: _round(record.seconds),
                        N_SEEDS: len(record.seeds) or None, SEEDS: format_seeds(record.seeds),
                        ERROR: record.error or "", NODE_ID: record.node_id or ""})
            rows.append(row)
        frame = pd.DataFrame(rows, columns=[TRIAL_ID, STATUS, *self.hyper_columns, *TRIAL_RESULT_COLUMNS])
        return _integer_columns(frame, (N_SEEDS, SEED_COLUMN))

    def per_category_frame(self) -> pd.DataFrame:
        """One row per trial, seed and category (each seed's own metrics)."""
        rows = [{TRIAL_ID: record.trial_id, SEED_COLUMN: record.params.get(SEED_COLUMN) if seed is None else seed,
                 CATEGORY: category, **values}
                for record in self.trials.values() for seed, table in record.seed_per_category.items()
                for category, values in table.items()]
        return _integer_columns(pd.DataFrame(rows, columns=list(PER_CATEGORY_COLUMNS)), (SEED_COLUMN,))

    def history_frame(self) -> pd.DataFrame:
        rows = [record.history[epoch] for record in self.trials.values() for epoch in sorted(record.history)]
        return _integer_columns(pd.DataFrame(rows, columns=list(HISTORY_COLUMNS)), (INTRA_OP_THREADS,))

    def write(self) -> None:
        """Write ``trials.csv``, ``per_category.csv`` and ``history.csv`` (each atomically)."""
        write_csv_atomic(self.results_dir / TRIALS_FILE, self.trials_frame())
        write_csv_atomic(self.results_dir / PER_CATEGORY_FILE, self.per_category_frame())
        write_csv_atomic(self.results_dir / HISTORY_FILE, self.history_frame())

    # ------------------------------------------------------------------------------------- best ---
    def best(self) -> TrialRecord | None:
        """The completed trial with the best value of the study's metric (first one on ties)."""
        candidates = [r for r in self.trials.values()
                      if r.status == COMPLETED and _finite(r.means.get(self.metric))]
        if not candidates:
            return None
        sign = 1.0 if self.mode == MODE_MAX else -1.0
        return max(candidates, key=lambda r: sign * float(r.means[self.metric]))

    def counts(self) -> dict[str, int]:
        counts = dict.fromkeys(STATUSES, 0)
        for record in self.trials.values():
            counts[record.status] += 1
        return counts

    # ---------------------------------------------------------------------------------- restore ---
    def load_existing(self) -> None:
        """Read the tables an earlier run of this study wrote (for ``--resume``)."""
        trials = _read(self.results_dir / TRIALS_FILE)
        for row in trials.to_dict("records"):
            record = self.record(str(row[TRIAL_ID]))
            record.params = {name: _clean(row.get(name)) for name in self.hyper_columns}
            record.means = {name: _number(row.get(name)) for name in METRIC_NAMES}
            record.loss = _number(row.get(LOSS))
            record.epochs_done = int(_number(row.get(EPOCHS_DONE)) or 0)
            record.seeds = parse_seeds(row.get(SEEDS))
            record.seconds = _number(row.get(SECONDS))
            error = row.get(ERROR)
            record.error = str(error) if isinstance(error, str) and error else None
            node_id = row.get(NODE_ID)
            record.node_id = str(node_id) if isinstance(node_id, str) and node_id else None
            status = str(row.get(STATUS))
            record.final = status == COMPLETED
            record.stopped = status == STOPPED
            record.tune_status = {COMPLETED: TUNE_TERMINATED, STOPPED: TUNE_TERMINATED}.get(status, TUNE_PENDING)
        for row in _read(self.results_dir / PER_CATEGORY_FILE).to_dict("records"):
            record = self.record(str(row[TRIAL_ID]))
            seed = _number(row.get(SEED_COLUMN))  # absent from studies written before seed repeats
            table = record.seed_per_category.setdefault(None if seed is None else int(seed), {})
            table[str(row[CATEGORY])] = {name: _number(row.get(name)) for name in METRIC_NAMES}
        for record in self.trials.values():
            if record.seed_per_category:
                record.per_category = _seed_means(record.seed_per_category)
        for row in _read(self.results_dir / HISTORY_FILE).to_dict("records"):
            record = self.record(str(row[TRIAL_ID]))
            epoch = int(row[EPOCH])
            record.history[epoch] = {k: v for k, v in
                                     {TRIAL_ID: record.trial_id, EPOCH: epoch,
                                      **{c: _number(row.get(c)) for c in HISTORY_COLUMNS[2:]}}.items()
                                     if v is not None}


# ------------------------------------------------------------------------------------ best folder ---

def copy_run_folder(source: str, destination: Path) -> None:
    """Copy a trial's final checkpoint (a MAAE run folder, local path or URI) to ``destination``.

    The copy goes to a temporary sibling first and replaces ``destination`` only when complete.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        if Path(source).is_dir():
            shutil.copytree(source, staging, dirs_exist_ok=True)
        else:
            from ray.train import Checkpoint

            Checkpoint(path=source).to_directory(str(staging))
        old = None
        if destination.exists():
            old = destination.with_name(f".{destination.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(destination, old)
        os.replace(staging, destination)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------- study.json ---

def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).replace(microsecond=0).isoformat()


def versions() -> dict[str, str]:
    """Versions of what produced the numbers (import metadata only; nothing heavy is imported)."""
    from importlib import metadata

    found = {"python": platform.python_version()}
    for package, distribution in (("torch", "torch"), ("ray", "ray"), ("optuna", "optuna"), ("timm", "timm"),
                                  ("maae", "maae-study")):
        try:
            found[package] = metadata.version(distribution)
        except metadata.PackageNotFoundError:
            found[package] = "unknown"
    return found


def git_commit(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10, check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def write_study_json(results_dir: Path, payload: Mapping[str, Any]) -> None:
    write_json_atomic(Path(results_dir) / STUDY_FILE, dict(payload))


def command_line(argv: Sequence[str] | None = None) -> str:
    import shlex

    args = list(sys.argv if argv is None else argv)
    return " ".join(shlex.quote(a) for a in [sys.executable, *args])


# ------------------------------------------------------------------------------------------ helpers ---

def format_seeds(seeds: Sequence[int]) -> str:
    """trials.csv's ``seeds`` cell: ``0;1;2`` (empty when not known yet)."""
    return SEED_SEPARATOR.join(str(seed) for seed in seeds)


def parse_seeds(cell: Any) -> list[int]:
    """A ``seeds`` cell read back (pandas reads a single seed as a number): the list of seeds."""
    if cell is None or (isinstance(cell, float) and math.isnan(cell)):
        return []
    if isinstance(cell, (int, float)):
        return [int(cell)]
    return [int(float(part)) for part in str(cell).split(SEED_SEPARATOR) if part.strip()]


def _integer_columns(frame: pd.DataFrame, columns: Sequence[str]) -> pd.DataFrame:
    """Counts and seeds written as integers (``2``, not ``2.0``) even when some cells are still empty."""
    for column in columns:
        if column in frame.columns:
            with contextlib.suppress(TypeError, ValueError):  # not whole numbers: left as they are
                frame[column] = frame[column].astype("Int64")
    return frame


def _metric_table(per_category: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, float | None]]:
    return {str(category): {name: _number(values.get(name)) for name in METRIC_NAMES}
            for category, values in per_category.items()}


def _seed_means(by_seed: Mapping[Any, Mapping[str, Mapping[str, float | None]]]) -> dict[str, dict[str, float]]:
    """Per category, each metric's mean over the seeds (NaN when a seed lacks it)."""
    tables = list(by_seed.values())
    categories = list(dict.fromkeys(category for table in tables for category in table))
    return {category: {name: math.fsum(_nan(table.get(category, {}).get(name)) for table in tables) / len(tables)
                       for name in METRIC_NAMES} for category in categories}


def _nan(value: float | None) -> float:
    return math.nan if value is None else float(value)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        return pd.DataFrame()
    try:
        return pd.read_csv(path, dtype={TRIAL_ID: str, ERROR: str, CATEGORY: str, NODE_ID: str})
    except pd.errors.EmptyDataError:
        return pd.DataFrame()


def _number(value: Any) -> float | None:
    """A float, or None for missing, empty, NaN or non-numeric values."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(number) else number


def _finite(value: Any) -> bool:
    number = _number(value)
    return number is not None and math.isfinite(number)


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 2)


def _clean(value: Any) -> Any:
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def table(rows: Iterable[Sequence[Any]], header: Sequence[str]) -> str:
    """A plain fixed-width text table (for the terminal)."""
    text_rows = [[str(c) for c in header]] + [[_cell(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in text_rows) for i in range(len(header))]
    lines = ["  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
             for row in text_rows]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)
