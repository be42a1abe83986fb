"""End-to-end: train -> evaluate -> predict through the command line, on a tiny generated data set."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from maae.calibration import THRESHOLD_METRIC_NAMES
from maae.cli import build_config, main
from maae.errors import ConfigError
from maae.evaluation import THRESHOLD_COLUMNS, VERDICT_COLUMNS
from maae.metrics import METRIC_NAMES
from maae.run_folder import (
    CHECKPOINT_FILE,
    CHECKPOINT_FORMAT_VERSION,
    CONFIG_FILE,
    METRICS_FILE,
    PER_CATEGORY_FILE,
    RUN_FILES,
    SCORES_FILE,
)

CATEGORIES = "hex_nut,grass"
REPO = Path(__file__).resolve().parents[2]


def _set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


@pytest.fixture(scope="module")
def unified_run(tiny_data: Path, tiny_overrides: list[str], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "unified"
    code = main(["train", "--data", str(tiny_data), "--categories", CATEGORIES, "--out", str(out),
                 *_set_args(tiny_overrides)])
    assert code == 0
    return out


def test_train_writes_every_output(unified_run: Path):
    for name in RUN_FILES:
        assert (unified_run / name).is_file(), name
    metrics = json.loads((unified_run / METRICS_FILE).read_text())
    for name in METRIC_NAMES:
        assert 0.0 <= metrics[name] <= 1.0, name
    assert metrics["epochs"] == 2
    per_category = pd.read_csv(unified_run / PER_CATEGORY_FILE)
    # A calibrated run (the default validation split): the rates at the thresholds, then the thresholds.
    assert list(per_category.columns) == ["category", *METRIC_NAMES, *THRESHOLD_METRIC_NAMES, *THRESHOLD_COLUMNS]
    assert sorted(per_category.category) == ["grass", "hex_nut"]
    assert per_category.image_auroc.mean() == pytest.approx(metrics["image_auroc"])
    scores = pd.read_csv(unified_run / SCORES_FILE)
    assert list(scores.columns) == ["path", "category", "defect", "label", "score", *VERDICT_COLUMNS]
    assert len(scores) == 2 * (3 + 3 * 2)
    assert set(scores.label) == {0, 1}
    assert (scores.label == (scores.defect != "good")).all()


def test_checkpoint_loads_weights_only(unified_run: Path):
    state = torch.load(unified_run / CHECKPOINT_FILE, weights_only=True)
    assert state["epoch"] == 2 and state["categories"] == ["hex_nut", "grass"]
    assert set(state["models"]) == {"__unified__"}
    assert "normal_reference" in state and state["normal_reference"]["__unified__"]["score_p99"] > 0


def test_evaluate_reproduces_training_metrics(unified_run: Path, tiny_data: Path, tmp_path: Path):
    out = tmp_path / "eval"
    assert main(["evaluate", "--checkpoint", str(unified_run), "--data", str(tiny_data), "--out", str(out)]) == 0
    trained = json.loads((unified_run / METRICS_FILE).read_text())
    evaluated = json.loads((out / METRICS_FILE).read_text())
    for name in METRIC_NAMES:
        assert evaluated[name] == pytest.approx(trained[name], abs=1e-9), name
    assert evaluated["epochs"] == 2 and "seconds" not in evaluated
    assert pd.read_csv(out / SCORES_FILE).score.to_numpy() == pytest.approx(
        pd.read_csv(unified_run / SCORES_FILE).score.to_numpy())
    assert len(pd.read_csv(out / PER_CATEGORY_FILE)) == 2
    written = json.loads((out / CONFIG_FILE).read_text())
    assert written["checkpoint"] == str(unified_run / CHECKPOINT_FILE)
    assert written["config"] == json.loads((unified_run / CONFIG_FILE).read_text())["config"]


def test_predict_scores_images_and_draws_heatmaps(unified_run: Path, tiny_data: Path, tmp_path: Path):
    folder = tiny_data / "hex_nut" / "test"
    out = tmp_path / "pred"
    assert main(["predict", "--checkpoint", str(unified_run), str(folder), "--out", str(out)]) == 0
    predictions = pd.read_csv(out / "predictions.csv")
    assert len(predictions) == 3 + 3 * 2
    for heatmap in predictions.heatmap:
        assert (out / heatmap).is_file()
    # Scores from raw images agree with the evaluation's (which read half-precision cached features).
    scores = pd.read_csv(unified_run / SCORES_FILE).set_index("path").score
    expected = scores.loc[predictions.path].to_numpy()
    assert np.corrcoef(expected, predictions.score.to_numpy())[0, 1] > 0.99
    assert predictions.score.to_numpy() == pytest.approx(expected, rel=0.05)


def test_separate_paradigm_trains_one_model_per_category(tiny_data: Path, tiny_overrides, tmp_path: Path):
    out = tmp_path / "separate"
    args = ["train", "--data", str(tiny_data), "--categories", CATEGORIES, "--paradigm", "separate",
            "--out", str(out), *_set_args(tiny_overrides + ["epochs=1"])]
    assert main(args) == 0
    state = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert set(state["models"]) == {"hex_nut", "grass"}
    assert len(pd.read_csv(out / PER_CATEGORY_FILE)) == 2
    image = next((tiny_data / "grass" / "test" / "good").iterdir())
    # Several models: predict must be told which one.
    assert main(["predict", "--checkpoint", str(out), str(image), "--out", str(tmp_path / "p1")]) == 2
    assert main(["predict", "--checkpoint", str(out), str(image), "--category", "grass",
                 "--out", str(tmp_path / "p2")]) == 0
    assert pd.read_csv(tmp_path / "p2" / "predictions.csv").model.tolist() == ["grass"]


def test_resume_continues_from_the_last_epoch(tiny_data: Path, tiny_overrides, tmp_path: Path):
    out = tmp_path / "resumable"
    base = ["train", "--data", str(tiny_data), "--categories", "grass", "--out", str(out)]
    assert main(base + _set_args(tiny_overrides)) == 0
    # A finished run is not overwritten by accident ...
    assert main(base + _set_args(tiny_overrides)) == 2
    # ... and --resume of a killed run (no metrics.json yet) picks up the checkpoint's epoch.
    (out / METRICS_FILE).unlink()
    before = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert main(base + ["--resume"] + _set_args(tiny_overrides)) == 0
    after = torch.load(out / CHECKPOINT_FILE, weights_only=True)
    assert after["epoch"] == before["epoch"] == 2
    for key, tensor in before["models"]["__unified__"].items():
        assert torch.equal(tensor, after["models"]["__unified__"][key]), key
    # A killed run resumes only with its own config.
    (out / METRICS_FILE).unlink()
    assert main(base + ["--resume"] + _set_args(tiny_overrides + ["seed=1"])) == 2
    assert not (out / METRICS_FILE).exists()


@pytest.mark.parametrize("command", ["evaluate", "predict"])
def test_checkpoint_of_another_format_is_one_line_and_exit_2(command, unified_run: Path, tiny_data: Path,
                                                             tmp_path: Path, capsys):
    state = torch.load(unified_run / CHECKPOINT_FILE, weights_only=True)
    state["format_version"] = CHECKPOINT_FORMAT_VERSION + 1
    torch.save(state, tmp_path / CHECKPOINT_FILE)
    inputs = ["--data", str(tiny_data)] if command == "evaluate" else [str(tiny_data / "grass" / "test")]
    capsys.readouterr()
    assert main([command, "--checkpoint", str(tmp_path), *inputs, "--out", str(tmp_path / "out")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {tmp_path / CHECKPOINT_FILE}: checkpoint format"), lines
    assert not (tmp_path / "out").exists()


def test_build_config_layers_preset_paradigm_and_overrides():
    config = build_config("quick", "separate", ["depth=4", "use_ang=false", "lr=3e-4"])
    assert (config.depth, config.use_ang, config.lr, config.paradigm) == (4, False, 3e-4, "separate")
    assert config.backbone == "tf_efficientnet_lite0"
    paper = build_config("paper", None, [])
    assert (paper.backbone, paper.image_size, paper.depth, paper.residual_every, paper.dilation) == (
        "efficientnet_b4", 256, 18, 3, 4)
    assert (paper.lambda_ang, paper.lambda_re, paper.batch_size, paper.lr) == (0.6, 1.0, 64, 1e-4)
    # quick: the sweep preset with a 12x12 token grid (192 px), cosine decay and the bilinear merge, nothing
    # else changed; sweep keeps the 128 px settings (8x8 tokens) of the lever studies
    quick, sweep = build_config("quick", None, []), build_config("sweep", None, [])
    assert quick.image_size // quick.token_stride == 12 and sweep.image_size // sweep.token_stride == 8
    assert (quick.lr_schedule, quick.use_ffm, sweep.lr_schedule, sweep.use_ffm) == ("cosine", False, "constant", True)
    assert quick.replace(image_size=sweep.image_size, lr_schedule=sweep.lr_schedule, use_ffm=True) == sweep
    # highres: quick with the paper's 16x16 token grid (256 px), nothing else changed
    highres = build_config("highres", None, [])
    assert highres.image_size // highres.token_stride == 16 and highres.replace(image_size=quick.image_size) == quick


def test_a_preset_that_no_longer_exists_names_the_one_with_its_settings():
    with pytest.raises(ConfigError, match="'standard' no longer exists; its settings are now the 'quick' preset"):
        build_config("standard", None, [])


@pytest.mark.parametrize("args,needle", [
    (["--set", "nosuch=1"], "unknown field 'nosuch'"),
    (["--set", "depth=0"], "'depth'"),
    (["--set", "attention=cross"], "'attention'"),
    (["--set", "lr_schedule=linear"], "'lr_schedule' expects one of ('constant', 'cosine')"),
    (["--set", "lr=fast"], "'lr' expects float"),
    (["--set", "depth"], "expected key=value"),
    (["--data", "/nonexistent/maae"], "/nonexistent/maae"),
    (["--categories", "unicorn"], "unicorn"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tiny_data: Path, tmp_path: Path):
    argv = [sys.executable, "-m", "maae", "train", "--out", str(tmp_path / "x")]
    if "--data" not in args:
        argv += ["--data", str(tiny_data)]
    result = subprocess.run(argv + args, capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and needle in lines[0], result.stderr
    assert not (tmp_path / "x" / METRICS_FILE).exists()


def test_data_command_writes_the_embedded_layout(tmp_path: Path):
    out = tmp_path / "embedded"
    result = subprocess.run([sys.executable, "-m", "maae", "data", "--out", str(out), "--seed", "3"],
                            capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.returncode == 0, result.stderr
    categories = sorted(p.name for p in out.iterdir() if p.is_dir())
    assert len(categories) >= 6
    for category in categories:
        assert len(list((out / category / "train" / "good").iterdir())) >= 60
        assert sum(1 for _ in (out / category / "test").rglob("*.png")) >= 30
