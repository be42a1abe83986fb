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
RESULT_NODE_ID = "node_id"  # the Ray node the reporting process (rank 0) runs on: where the epoch trained
# A one-worker trial's torch intra-op threads for the epoch (its CPUs then: a resized trial's grow). Absent from a
# Ray Train trial's results (its workers keep their shape).
RESULT_INTRA_OP_THREADS = "intra_op_threads"
# Seed repeats (a space's ``repeats: k``): a trial trains its configuration with seeds base, base + 1, ...,
# base + k - 1 and reports, every epoch, the mean over them under the keys above (the metric names, LOSS,
# NOISE_PENALTY and PER_CATEGORY: category -> metric -> mean over the seeds), which is what Optuna and ASHA
# see, and each seed's own values under these keys (JSON object keys are text: the seed as a string).
RESULT_SEEDS = "seeds"  # list of the seeds, in training order (every result of a running trial)
RESULT_N_SEEDS = "n_seeds"  # len(seeds)
RESULT_SEED_METRICS = "seed_metrics"  # str(seed) -> {loss (when trained), every METRIC_NAMES (when evaluated)}
RESULT_SEED_PER_CATEGORY = "seed_per_category"  # str(seed) -> category -> metric -> value (when evaluated)
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
# A trial's checkpoint (and so ``best/``) is the first seed's MAAE run folder; with seed repeats, every other
# seed's run folder sits inside it as ``SEED_RUNS_DIR/<SEED_RUN_PREFIX><seed>/``.
SEED_RUNS_DIR = "seeds"
SEED_RUN_PREFIX = "seed_"
RAY_DIR = "ray"
# Inside RAY_DIR (or --storage): Tune's experiment folder, and one Ray Train run folder per trial under it.
TUNE_EXPERIMENT = "tune"
TRAIN_RUNS = "train"
REPORT_FILE = "report.html"
REPORT_MARKDOWN_FILE = "comparison.md"
# Written by the report (derived from the tables above; see docs/results-format.md).
SETTINGS_FILE = "settings.csv"
COMPARISONS_FILE = "comparisons.csv"
RUNG_CORRELATIONS_FILE = "rung_correlations.csv"
BASELINE_FILE = "baseline.csv"

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
SEED_COLUMN = "seed"  # always a hyperparameter column: the (first) seed of the trial
# trials.csv: how many seeds the trial's metrics are means over, and which (SEED_SEPARATOR-joined, "0;1;2").
N_SEEDS = "n_seeds"
SEEDS = "seeds"
SEED_SEPARATOR = ";"
LOSS = "loss"
EPOCH = "epoch"
EPOCHS_DONE = "epochs_done"
SECONDS = "seconds"
ERROR = "error"
NODE_ID = "node_id"  # the Ray node of the trial's last report (on a cluster: where it ran, or resumed)
TRIAL_RESULT_COLUMNS = (*METRIC_NAMES, LOSS, EPOCHS_DONE, SECONDS, N_SEEDS, SEEDS, ERROR, NODE_ID)
# One row per trial, seed and category: each seed's own metrics (trials.csv and history.csv hold the means).
PER_CATEGORY_COLUMNS = (TRIAL_ID, SEED_COLUMN, CATEGORY, *METRIC_NAMES)
INTRA_OP_THREADS = RESULT_INTRA_OP_THREADS
# history.csv also records the threads each epoch trained with: Tune's own result.json cannot, since Tune
# replaces it with its last uploaded copy when it restarts a resized trial, losing the results in between.
HISTORY_COLUMNS = (TRIAL_ID, EPOCH, LOSS, *METRIC_NAMES, INTRA_OP_THREADS)
