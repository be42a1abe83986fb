"""The study's results contract: what a trial reports, what a study folder holds, and the words they use.

One module of shared names, in the spirit of ``ray.tune.result``: the writers (a trial's workers, the Tune
callback, :mod:`study.results`, :mod:`study.cli`) and the readers (:mod:`study.report`) import these names,
and nothing re-declares them. ``docs/results-format.md`` describes the same contract for people.

Light on purpose: Tune's trial processes and Train's controller import it, so it imports no Ray, pandas or
torch, and the metric names come from :mod:`maae.metric_names`, not from the metric code.
"""

from __future__ import annotations

from maae.metric_names import METRIC_NAMES

# ------------------------------------------------------------------------------------------ metrics ---
# The metric a study optimises when its space names none, and the direction.
DEFAULT_METRIC = "image_auroc"
DEFAULT_MODE = "max"
MODE_MAX = "max"
MODE_MIN = "min"
MODES = (MODE_MAX, MODE_MIN)

# ------------------------------------------------------------- keys of a trial's per-epoch result ---
# Besides these, an evaluated result carries every name of METRIC_NAMES (the means over categories).
RESULT_EPOCH = "epoch"
RESULT_EPOCHS = "epochs"
RESULT_LOSS = "loss"
RESULT_NOISE_PENALTY = "noise_penalty"
RESULT_IMAGES_PER_SECOND = "images_per_second"
RESULT_ERROR = "error"
RESULT_FINAL = "final"
RESULT_EVALUATED = "evaluated"
RESULT_PER_CATEGORY = "per_category"
RESULT_TRAIN_SECONDS = "train_seconds"
RESULT_WORLD_SIZE = "world_size"
RESULT_STOPPED = "stopped"
# Longest error text carried in a result (a traceback's last lines are enough to act on).
MAX_ERROR_CHARS = 800

# Keys Tune adds to every result, and Tune's trial states, that the results tables read.
TUNE_TIME_TOTAL = "time_total_s"
CHECKPOINT_PATH_KEY = "checkpoint_path"
TUNE_PENDING = "PENDING"
TUNE_RUNNING = "RUNNING"
TUNE_TERMINATED = "TERMINATED"
TUNE_ERROR = "ERROR"

# ------------------------------------------------------------------------- a study's results folder ---
STUDY_FILE = "study.json"
TRIALS_FILE = "trials.csv"
PER_CATEGORY_FILE = "per_category.csv"
HISTORY_FILE = "history.csv"
BEST_DIR = "best"
RAY_DIR = "ray"
# Inside RAY_DIR (or --storage): Tune's experiment folder, and one Ray Train run folder per trial under it.
TUNE_EXPERIMENT = "tune"
TRAIN_RUNS = "train"
REPORT_FILE = "report.html"
REPORT_MARKDOWN_FILE = "comparison.md"

# Kinds of study (study.json ``kind``): an Optuna search, or every combination of a grid.
KIND_SEARCH = "search"
KIND_GRID = "grid"

# Trial statuses (trials.csv ``status``).
COMPLETED = "completed"
STOPPED = "stopped"  # ended early at the scheduler's request (ASHA)
FAILED = "failed"
RUNNING = "running"
PENDING = "pending"  # not started, or cut off by an interruption (``--resume`` continues it)
STATUSES = (COMPLETED, STOPPED, FAILED, RUNNING, PENDING)
# Trials whose metrics are final: completed ones, and those the scheduler stopped early (last report).
FINISHED_STATUSES = (COMPLETED, STOPPED)

# Study statuses (study.json ``status``).
STUDY_RUNNING = "running"
STUDY_FINISHED = "finished"
STUDY_INTERRUPTED = "interrupted"

# Columns of the tables. trials.csv: TRIAL_ID, STATUS, the hyperparameters, then TRIAL_RESULT_COLUMNS.
TRIAL_ID = "trial_id"
STATUS = "status"
CATEGORY = "category"
SEED_COLUMN = "seed"  # always a hyperparameter column: seed repeats are told apart by it
LOSS = "loss"
EPOCH = "epoch"
EPOCHS_DONE = "epochs_done"
SECONDS = "seconds"
ERROR = "error"
TRIAL_RESULT_COLUMNS = (*METRIC_NAMES, LOSS, EPOCHS_DONE, SECONDS, ERROR)
PER_CATEGORY_COLUMNS = (TRIAL_ID, CATEGORY, *METRIC_NAMES)
HISTORY_COLUMNS = (TRIAL_ID, EPOCH, LOSS, *METRIC_NAMES)
