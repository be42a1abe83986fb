"""maae.run_folder: a run folder written in one call reads back whole, old checkpoints load, bad ones fail in
one line."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
import torch

from maae.checkpoint import load_run
from maae.config import MAAEConfig
from maae.engine import UNIFIED_KEY, TrainingSession, default_device, prepare_data
from maae.errors import MAAEError
from maae.evaluation import SCORE_COLUMNS, Evaluation, evaluate, normal_score_reference
from maae.metrics import METRIC_NAMES
from maae.model import build_model
from maae.run_folder import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT_VERSION,
    CONFIG_FILE,
    METRICS_FILE,
    PER_CATEGORY_FILE,
    RUN_FILES,
    SCORES_FILE,
    is_finished,
    load_checkpoint,
    save_models,
    write_metrics,
    write_resumable_run,
    write_run,
)

CATEGORIES = ["grass", "hex_nut"]
TRAIN_SECONDS = 12.3456


@dataclass
class FinishedRun:
    session: TrainingSession
    evaluation: Evaluation
    reference: dict[str, dict[str, float]]
    folder: Path


def _config(overrides: list[str], **changes) -> MAAEConfig:
    values = dict(item.split("=", 1) for item in overrides)
    return MAAEConfig.from_dict({**values, **changes}, source="test")


def _assert_same_weights(expected: dict[str, torch.Tensor], actual: dict[str, torch.Tensor]) -> None:
    assert set(expected) == set(actual)
    for name, tensor in expected.items():
        assert torch.equal(tensor.cpu(), actual[name].cpu()), name


@pytest.fixture(scope="module")
def finished(tiny_data: Path, tiny_overrides: list[str], tmp_path_factory: pytest.TempPathFactory) -> FinishedRun:
    """One epoch of a tiny unified run, evaluated and written with ``write_run``."""
    config = _config(tiny_overrides, epochs=1)
    device = default_device()
    data = prepare_data(config, tiny_data, CATEGORIES, device=device)
    session = TrainingSession(config, data, device=device)
    session.train_epoch()
    models = {key: session.core_model(key) for key in session.models}
    evaluation = evaluate(models, data, config, device=device)
    reference = normal_score_reference(models, data, config, device=device)
    folder = tmp_path_factory.mktemp("run_folder") / "run"
    write_run(folder, session, evaluation, normal_reference=reference, seconds=TRAIN_SECONDS)
    return FinishedRun(session, evaluation, reference, folder)


# ------------------------------------------------------------------------------------------ round trip ---

def test_write_run_writes_every_file_and_reads_back_the_same_run(finished: FinishedRun):
    folder, session = finished.folder, finished.session
    assert sorted(p.name for p in folder.iterdir()) == sorted(RUN_FILES)
    assert is_finished(folder)

    checkpoint = load_checkpoint(folder)
    assert checkpoint.path == folder / CHECKPOINT_FILE
    assert checkpoint.config == session.config
    assert checkpoint.belongs_to(session.config, CATEGORIES)
    assert not checkpoint.belongs_to(session.config.replace(seed=1), CATEGORIES)
    assert not checkpoint.belongs_to(session.config, CATEGORIES[:1])
    assert checkpoint.categories == CATEGORIES and checkpoint.epoch == 1
    assert checkpoint.stage_channels == tuple(session.data.stage_channels)
    assert checkpoint.backbone_fingerprint == session.data.backbone_fingerprint
    assert checkpoint.normal_reference == finished.reference
    _assert_same_weights(session.core_model(UNIFIED_KEY).state_dict(), checkpoint.model_states[UNIFIED_KEY])

    run = load_run(folder)
    assert run.config == session.config and run.epoch == 1 and not run.models[UNIFIED_KEY].training
    _assert_same_weights(session.core_model(UNIFIED_KEY).state_dict(), run.models[UNIFIED_KEY].state_dict())

    written = json.loads((folder / CONFIG_FILE).read_text())
    assert MAAEConfig.from_dict(written["config"]) == session.config
    assert written["categories"] == CATEGORIES
    assert written["backbone_fingerprint"] == session.data.backbone_fingerprint


def test_metrics_files_are_complete(finished: FinishedRun):
    folder, evaluation = finished.folder, finished.evaluation
    metrics = json.loads((folder / METRICS_FILE).read_text())
    assert set(metrics) == {*METRIC_NAMES, "epochs", "seconds"}
    assert metrics["epochs"] == 1 and metrics["seconds"] == pytest.approx(round(TRAIN_SECONDS, 2))
    for name in METRIC_NAMES:
        assert metrics[name] == pytest.approx(evaluation.means[name]), name
    per_category = pd.read_csv(folder / PER_CATEGORY_FILE)
    assert list(per_category.columns) == ["category", *METRIC_NAMES]
    assert per_category.category.tolist() == CATEGORIES
    scores = pd.read_csv(folder / SCORES_FILE)
    assert list(scores.columns) == list(evaluation.scores.columns)
    assert len(scores) == len(evaluation.scores)
    assert scores.score.to_numpy() == pytest.approx(evaluation.scores.score.to_numpy())


def test_resumable_run_has_config_and_checkpoint_only(finished: FinishedRun, tmp_path: Path):
    write_resumable_run(tmp_path, finished.session)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_FILE, CHECKPOINT_FILE])
    assert not is_finished(tmp_path)
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT_FILE)
    assert checkpoint.normal_reference == {}
    # The whole state resumes a session: optimisers and epoch come back.
    resumed = TrainingSession(finished.session.config, finished.session.data, device=finished.session.device)
    resumed.load_state_dict(checkpoint.state)
    assert resumed.epoch == 1
    _assert_same_weights(finished.session.core_model(UNIFIED_KEY).state_dict(),
                         resumed.core_model(UNIFIED_KEY).state_dict())


def test_undefined_metrics_are_written_as_null(tmp_path: Path):
    nan = float("nan")
    evaluation = Evaluation(per_category={"a": dict.fromkeys(METRIC_NAMES, nan)},
                            means=dict.fromkeys(METRIC_NAMES, nan),
                            scores=pd.DataFrame(columns=SCORE_COLUMNS))
    write_metrics(tmp_path, evaluation, epochs=3)
    metrics = json.loads((tmp_path / METRICS_FILE).read_text())
    assert metrics == {**dict.fromkeys(METRIC_NAMES), "epochs": 3}
    assert math.isnan(pd.read_csv(tmp_path / PER_CATEGORY_FILE).image_auroc[0])


def test_models_saved_without_a_session_deploy(tiny_overrides: list[str], tmp_path: Path):
    """``save_models`` (an untrained or exported model, as the inference benchmark writes) gives a checkpoint
    that ``load_run`` reads like a trained one."""
    config = _config(tiny_overrides)
    channels = (16, 24, 40, 112)
    torch.manual_seed(0)
    model = build_model(config, channels)
    save_models(tmp_path, config, {UNIFIED_KEY: model}, categories=["grass"], stage_channels=channels,
                backbone_fingerprint="test:fingerprint")
    run = load_run(tmp_path)
    assert (run.config, run.categories, run.stage_channels, run.epoch) == (config, ["grass"], channels, 0)
    assert run.normal_reference == {} and run.backbone_fingerprint == "test:fingerprint"
    _assert_same_weights(model.state_dict(), run.models[UNIFIED_KEY].state_dict())


# ------------------------------------------------------------------------- checkpoints of earlier code ---

def _checkpoint_as_written_before_run_folder(session: TrainingSession) -> dict:
    """A checkpoint exactly as the code before maae.run_folder wrote it (format 1, built key by key): the
    session's fields, ``normal_reference`` last, and a config that still carried ``mlp_ratio``."""
    return {
        "format_version": 1,
        "config": {**session.config.to_dict(), "mlp_ratio": 2.0},
        "categories": list(session.data.categories),
        "stage_channels": list(session.data.stage_channels),
        "backbone_fingerprint": session.data.backbone_fingerprint,
        "epoch": session.epoch,
        "models": {key: session.core_model(key).state_dict() for key in session.models},
        "optimizers": {key: optimizers.state_dict() for key, optimizers in session.optimizers.items()},
        "random_state": {"torch": torch.get_rng_state(), "loaders": {}},
        "normal_reference": {UNIFIED_KEY: {"map_median": 0.5, "score_p99": 2.0}},
    }


def test_checkpoint_of_the_previous_code_still_loads_and_resumes(finished: FinishedRun, tmp_path: Path):
    session = finished.session
    torch.save(_checkpoint_as_written_before_run_folder(session), tmp_path / CHECKPOINT_FILE)

    checkpoint = load_checkpoint(tmp_path)
    assert checkpoint.config == session.config  # the retired mlp_ratio is dropped
    assert "mlp_ratio" not in checkpoint.state["config"]
    assert checkpoint.belongs_to(session.config, CATEGORIES)
    assert checkpoint.normal_reference == {UNIFIED_KEY: {"map_median": 0.5, "score_p99": 2.0}}

    run = load_run(tmp_path)
    _assert_same_weights(session.core_model(UNIFIED_KEY).state_dict(), run.models[UNIFIED_KEY].state_dict())
    resumed = TrainingSession(session.config, session.data, device=session.device)
    resumed.load_state_dict(checkpoint.state)
    assert resumed.epoch == session.epoch


# ------------------------------------------------------------------------------------------ errors ---

def _valid_state(finished: FinishedRun) -> dict:
    return torch.load(finished.folder / CHECKPOINT_FILE, weights_only=True)


@pytest.mark.parametrize("damage,needle", [
    (lambda state: {**state, "format_version": CHECKPOINT_FORMAT_VERSION + 1},
     f"checkpoint format {CHECKPOINT_FORMAT_VERSION + 1}; this version of maae reads format "
     f"{CHECKPOINT_FORMAT_VERSION}"),
    (lambda state: {k: v for k, v in state.items() if k != "format_version"}, "not an MAAE checkpoint"),
    (lambda state: [1, 2, 3], "not an MAAE checkpoint"),
    (lambda state: {k: v for k, v in state.items() if k not in ("models", "epoch")},
     "incomplete MAAE checkpoint (missing epoch, models)"),
    (lambda state: {**state, "config": {**state["config"], "depth": 0}}, "'depth'"),
    (lambda state: {**state, "config": {**state["config"], "no_such_field": 1}}, "'no_such_field'"),
])
def test_bad_checkpoints_fail_in_one_line_naming_the_file(finished: FinishedRun, tmp_path: Path, damage, needle):
    file = tmp_path / CHECKPOINT_FILE
    torch.save(damage(_valid_state(finished)), file)
    with pytest.raises(MAAEError) as caught:
        load_checkpoint(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(str(file)) and needle in message, message


def test_missing_or_unreadable_checkpoint_fails_in_one_line(tmp_path: Path):
    with pytest.raises(MAAEError, match=f"no checkpoint found .*{CHECKPOINT_FILE}"):
        load_checkpoint(tmp_path)
    (tmp_path / CHECKPOINT_FILE).write_text("not a torch file")
    with pytest.raises(MAAEError, match="not a readable MAAE checkpoint") as caught:
        load_checkpoint(tmp_path)
    assert "\n" not in str(caught.value)
