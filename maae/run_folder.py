"""The run folder and its checkpoint file: the one module that knows their layout.

A run folder (``python -m maae train --out``, each reported checkpoint of a study trial, a study's ``best/``)
holds, in the order they are written:

- ``config.json``: the run's config, data root, categories and backbone fingerprint, for people to read;
- ``checkpoint.pt``: the training session's state, rewritten after every epoch so that a killed run resumes,
  and, once the run is finished, the normal reference: what prediction scales its heatmaps with and, for a run
  with a validation split, the calibrated image and pixel thresholds of its verdicts (:mod:`maae.calibration`);
- ``per_category.csv`` and ``scores.csv``: the evaluation of the last epoch (metrics per category, one score
  per test image; with thresholds, also each category's false-positive rate and recall at them, the
  thresholds, and each image's normalised score and verdict);
- ``metrics.json``: the means over categories, written last: it marks a finished run.

Every file is written atomically (:mod:`maae.io`). The checkpoint is a plain dictionary of tensors and
built-in types, readable with ``torch.load(..., weights_only=True)``: the ``*_KEY`` constants below are its
top-level keys and :data:`CHECKPOINT_FORMAT_VERSION` the layout they follow. What goes into it is the
training session's own state (:meth:`maae.engine.TrainingSession.state_dict`); this module frames it as a file
(format version, normal reference), checks it on reading, and builds the typed :class:`Checkpoint`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import pandas as pd
import torch
from torch import nn

from maae.calibration import THRESHOLD_METRIC_NAMES, Thresholds
from maae.config import MAAEConfig
from maae.engine import PreparedData, TrainingSession, unwrap
from maae.errors import MAAEError
from maae.io import save_torch_atomic, write_csv_atomic, write_json_atomic
from maae.metric_names import METRIC_NAMES

# ------------------------------------------------------------------------------------------ file names ---
CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
PER_CATEGORY_FILE = "per_category.csv"
SCORES_FILE = "scores.csv"
METRICS_FILE = "metrics.json"
# A finished run's files, in the order they are written (metrics.json last).
RUN_FILES = (CONFIG_FILE, CHECKPOINT_FILE, PER_CATEGORY_FILE, SCORES_FILE, METRICS_FILE)

# ----------------------------------------------------------------------------------- checkpoint.pt ---
CHECKPOINT_FORMAT_VERSION = 1
FORMAT_VERSION_KEY = "format_version"
CONFIG_KEY = "config"  # MAAEConfig.to_dict()
CATEGORIES_KEY = "categories"  # the run's categories, in training order
STAGE_CHANNELS_KEY = "stage_channels"  # channels of each backbone stage (the model's input shapes)
EPOCH_KEY = "epoch"  # epochs trained so far
MODELS_KEY = "models"  # model key (maae.engine.UNIFIED_KEY or a category) -> weights to deploy
BACKBONE_FINGERPRINT_KEY = "backbone_fingerprint"  # which backbone weights made the features
# model key -> {map_median, score_p99} and, when calibrated, maae.calibration.CALIBRATION_KEYS (image_threshold,
# pixel_threshold, target_fpr, validation_images); empty until the run finishes. A run without thresholds
# (validation_fraction=0, or written before calibration existed) still loads: it predicts scores, no verdicts.
NORMAL_REFERENCE_KEY = "normal_reference"
# The session's resume state (optimisers, random generators, averaged-from weights) sits under further keys
# that only TrainingSession.load_state_dict reads; this module passes them through unchanged.
REQUIRED_KEYS = (CONFIG_KEY, CATEGORIES_KEY, STAGE_CHANNELS_KEY, EPOCH_KEY, MODELS_KEY)

# Config fields that earlier versions saved and that no longer exist: dropped when a saved config is read, so
# their checkpoints still load. ``mlp_ratio`` was validated but never read (the blocks have no MLP).
RETIRED_CONFIG_FIELDS = ("mlp_ratio",)
# Config fields added since, with the value that describes what a run saved without them did: before the
# validation split existed, every normal training image was trained on.
ADDED_CONFIG_FIELDS: dict[str, Any] = {"validation_fraction": 0.0}

# ------------------------------------------------------------------------------------- metrics.json ---
EPOCHS_KEY = "epochs"  # beside the metric means: epochs trained
TARGET_FPR_KEY = "target_fpr"  # and, for a calibrated run, the false-positive rate its thresholds aim at
SECONDS_KEY = "seconds"  # and wall-clock seconds of the run (training runs only)
SECONDS_DECIMALS = 2


class EvaluationTables(Protocol):
    """What the metric files are written from: :class:`maae.evaluation.Evaluation` (named by its shape, so that
    this module, which only stores results, does not depend on the module that computes them)."""

    means: Mapping[str, float]
    scores: pd.DataFrame
    thresholds: Mapping[str, Thresholds]  # category -> its model's thresholds; empty when not calibrated

    def per_category_frame(self) -> pd.DataFrame: ...


@dataclass(frozen=True)
class Checkpoint:
    """A checkpoint file read back and checked: its config parsed, its other fields typed.

    ``state`` is the whole dictionary (config normalised like ``config``), as
    :meth:`maae.engine.TrainingSession.load_state_dict` reads it to resume.
    """

    path: Path
    config: MAAEConfig
    categories: list[str]
    stage_channels: tuple[int, ...]
    epoch: int
    backbone_fingerprint: str
    normal_reference: dict[str, dict[str, float]]
    state: dict[str, Any]

    @property
    def model_states(self) -> dict[str, dict[str, torch.Tensor]]:
        """Model key -> the weights to deploy."""
        return self.state[MODELS_KEY]

    def belongs_to(self, config: MAAEConfig, categories: Sequence[str]) -> bool:
        """Whether this checkpoint is a state of a run with ``config`` on ``categories`` (the resume check)."""
        return self.config == config and self.categories == list(categories)


# ------------------------------------------------------------------------------------------ writing ---

def run_config(config: MAAEConfig, data: PreparedData) -> dict[str, Any]:
    """The contents of ``config.json``: the config and what it was run on."""
    return {"config": config.to_dict(), "data_root": str(data.root), "categories": data.categories,
            "backbone_fingerprint": data.backbone_fingerprint}


def write_config(folder: Path, config: MAAEConfig, data: PreparedData, *, checkpoint: Path | None = None) -> None:
    """Write ``config.json``; ``checkpoint`` names the run evaluated, for a folder that only evaluates one."""
    payload = run_config(config, data)
    if checkpoint is not None:
        payload["checkpoint"] = str(checkpoint)
    write_json_atomic(Path(folder) / CONFIG_FILE, payload)


def save_checkpoint(
    folder: Path, session: TrainingSession, normal_reference: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Write the session's state as ``checkpoint.pt`` (with the normal reference once the run is finished)."""
    return _write_checkpoint(folder, session.state_dict(), normal_reference)


def save_models(
    folder: Path, config: MAAEConfig, models: Mapping[str, nn.Module], *, categories: list[str],
    stage_channels: tuple[int, ...], backbone_fingerprint: str, epoch: int = 0,
    normal_reference: Mapping[str, Mapping[str, float]] | None = None,
) -> Path:
    """Write ``checkpoint.pt`` for models built outside a training session (deployable, not resumable)."""
    state = {CONFIG_KEY: config.to_dict(), CATEGORIES_KEY: list(categories),
             STAGE_CHANNELS_KEY: list(stage_channels), BACKBONE_FINGERPRINT_KEY: backbone_fingerprint,
             EPOCH_KEY: epoch, MODELS_KEY: {key: unwrap(model).state_dict() for key, model in models.items()}}
    return _write_checkpoint(folder, state, normal_reference)


def _write_checkpoint(
    folder: Path, state: Mapping[str, Any], normal_reference: Mapping[str, Mapping[str, float]] | None,
) -> Path:
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:  # a programming error (the session's state and this format disagree), not a user's
        raise ValueError(f"checkpoint state lacks {', '.join(missing)}")
    contents = {**state, FORMAT_VERSION_KEY: CHECKPOINT_FORMAT_VERSION,
                NORMAL_REFERENCE_KEY: {key: dict(values) for key, values in (normal_reference or {}).items()}}
    path = Path(folder) / CHECKPOINT_FILE
    save_torch_atomic(path, contents)
    return path


def write_metrics(folder: Path, evaluation: EvaluationTables, *, epochs: int, seconds: float | None = None) -> None:
    """``per_category.csv``, ``scores.csv``, then ``metrics.json`` (means as fractions, NaN as null; for a
    calibrated evaluation also the rates at the thresholds and their target false-positive rate)."""
    folder = Path(folder)
    names = [*METRIC_NAMES, *(THRESHOLD_METRIC_NAMES if evaluation.thresholds else ())]
    payload: dict[str, Any] = {name: _json_float(evaluation.means.get(name, float("nan"))) for name in names}
    if evaluation.thresholds:
        payload[TARGET_FPR_KEY] = next(iter(evaluation.thresholds.values())).target_fpr
    payload[EPOCHS_KEY] = epochs
    if seconds is not None:
        payload[SECONDS_KEY] = round(seconds, SECONDS_DECIMALS)
    write_csv_atomic(folder / PER_CATEGORY_FILE, evaluation.per_category_frame())
    write_csv_atomic(folder / SCORES_FILE, evaluation.scores)
    write_json_atomic(folder / METRICS_FILE, payload)


def write_resumable_run(folder: Path, session: TrainingSession) -> None:
    """``config.json`` and ``checkpoint.pt``: a run that can resume (or be deployed) but is not evaluated."""
    write_config(folder, session.config, session.data)
    save_checkpoint(folder, session)


def write_run(
    folder: Path, session: TrainingSession, evaluation: EvaluationTables, *,
    normal_reference: Mapping[str, Mapping[str, float]], seconds: float,
) -> None:
    """Every file of a finished run, from its session, its last evaluation and normal reference, in one call.

    ``seconds`` is the run's wall-clock time so far. ``metrics.json`` comes last, so a folder that has it is
    complete.
    """
    write_config(folder, session.config, session.data)
    save_checkpoint(folder, session, normal_reference)
    write_metrics(folder, evaluation, epochs=session.epoch, seconds=seconds)


def is_finished(folder: Path) -> bool:
    """Whether ``folder`` holds a finished run (its ``metrics.json`` exists)."""
    return (Path(folder) / METRICS_FILE).exists()


def _json_float(value: float | None) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


# ------------------------------------------------------------------------------------------ reading ---

def resolve_checkpoint(path: Path) -> Path:
    """A run folder or a checkpoint file -> the checkpoint file (one-line error if absent)."""
    path = Path(path)
    candidate = path / CHECKPOINT_FILE if path.is_dir() else path
    if not candidate.is_file():
        raise MAAEError(f"{candidate}: no checkpoint found (expected a run folder holding {CHECKPOINT_FILE})")
    return candidate


def load_checkpoint(path: Path) -> Checkpoint:
    """Read and check ``checkpoint.pt`` (weights-only unpickling: no code runs from the file).

    Every problem is one line naming the file: not a checkpoint, another format version, missing keys, or a
    saved config this version rejects.
    """
    file = resolve_checkpoint(path)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any unpickling failure means the file is not a checkpoint
        raise MAAEError(f"{file}: not a readable MAAE checkpoint ({type(err).__name__})") from None
    if not isinstance(state, dict) or FORMAT_VERSION_KEY not in state:
        raise MAAEError(f"{file}: not an MAAE checkpoint (no {FORMAT_VERSION_KEY})")
    if state[FORMAT_VERSION_KEY] != CHECKPOINT_FORMAT_VERSION:
        raise MAAEError(f"{file}: checkpoint format {state[FORMAT_VERSION_KEY]!r}; this version of maae reads "
                        f"format {CHECKPOINT_FORMAT_VERSION}")
    missing = [key for key in REQUIRED_KEYS if key not in state]
    if missing:
        raise MAAEError(f"{file}: incomplete MAAE checkpoint (missing {', '.join(missing)})")
    config = _read_config(state[CONFIG_KEY], source=f"{file} config")
    state[CONFIG_KEY] = config.to_dict()
    return Checkpoint(
        path=file, config=config, categories=list(state[CATEGORIES_KEY]),
        stage_channels=tuple(int(c) for c in state[STAGE_CHANNELS_KEY]), epoch=int(state[EPOCH_KEY]),
        backbone_fingerprint=state.get(BACKBONE_FINGERPRINT_KEY, ""),
        normal_reference=state.get(NORMAL_REFERENCE_KEY, {}), state=state,
    )


def _read_config(saved: Mapping[str, Any], *, source: str) -> MAAEConfig:
    """The saved config, validated; fields retired since it was written are dropped (RETIRED_CONFIG_FIELDS), fields
    added since take the value that describes what the run did (ADDED_CONFIG_FIELDS)."""
    if not isinstance(saved, Mapping):
        raise MAAEError(f"{source}: expected a mapping of config fields, got {type(saved).__name__}")
    current = {key: value for key, value in saved.items() if key not in RETIRED_CONFIG_FIELDS}
    current = {**ADDED_CONFIG_FIELDS, **current}
    return MAAEConfig.from_dict(current, source=source)
