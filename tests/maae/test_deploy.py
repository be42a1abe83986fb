"""Deployment: export a trained run to ONNX and TorchScript, run the files with ``predict --model``, and get
``predict --checkpoint``'s scores, verdicts, masks and files; example pictures at the source resolution; bad
input in one line with exit code 2."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path

import numpy as np
import onnx
import pandas as pd
import pytest
import torch
from PIL import Image

from maae.calibration import IMAGE_THRESHOLD_KEY, PER_CATEGORY_KEY, PIXEL_THRESHOLD_KEY
from maae.cli import main
from maae.engine import UNIFIED_KEY
from maae.examples import EXAMPLE_COLUMNS, write_examples
from maae.export import EXPORT_FORMAT_VERSION, METADATA_KEY, TORCHSCRIPT_METADATA_FILE
from maae.predict import PREDICTION_COLUMNS
from maae.run_folder import CHECKPOINT_FILE, CHECKPOINT_FORMAT_VERSION

CATEGORIES = "hex_nut,grass"
# The bar: an exported file's scores equal the checkpoint's to 1e-4 on real images.
PARITY_TOLERANCE = 1e-4
# Map values within float32 rounding of the pixel threshold may fall on either side of it: the most mask pixels
# an export may disagree on with the checkpoint, as a fraction of a mask.
MASK_DISAGREEMENT = 1e-3
# A source size that is neither square nor the tiny model's 64 x 64: (width, height).
SOURCE_SIZE = (150, 96)


def _set_args(overrides: list[str]) -> list[str]:
    return [arg for item in overrides for arg in ("--set", item)]


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def run_dir(tiny_data: Path, tiny_overrides: list[str], tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("deploy") / "run"
    assert main(["train", "--data", str(tiny_data), "--categories", CATEGORIES, "--out", str(out),
                 *_set_args(tiny_overrides)]) == 0
    return out


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("exported")
    files = {"onnx": folder / "maae.onnx", "torchscript": folder / "maae.pt"}
    for export_format, path in files.items():
        assert main(["export", "--checkpoint", str(run_dir), "--format", export_format, "--out", str(path)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["maae.onnx", "maae.pt"]  # no temporary files left
    return files


def test_exported_files_reproduce_the_checkpoint_on_real_images(run_dir: Path, exported: dict[str, Path],
                                                                 tiny_data: Path, tmp_path: Path) -> None:
    images = [str(tiny_data / "hex_nut" / "test"), str(tiny_data / "grass" / "test" / "good")]
    assert main(["predict", "--checkpoint", str(run_dir), *images, "--out", str(tmp_path / "checkpoint")]) == 0
    reference = pd.read_csv(tmp_path / "checkpoint" / "predictions.csv")
    assert len(reference) == 9 + 3
    assert reference["mask"].notna().all() and reference.is_anomalous.dtype == bool  # the run is calibrated
    for export_format, path in exported.items():
        out = tmp_path / export_format
        assert main(["predict", "--model", str(path), *images, "--out", str(out)]) == 0
        predictions = pd.read_csv(out / "predictions.csv")
        assert list(predictions.columns) == list(PREDICTION_COLUMNS)
        for column in ("path", "model", "heatmap", "mask", "is_anomalous"):
            assert predictions[column].tolist() == reference[column].tolist(), (export_format, column)
        difference = np.abs(predictions.score.to_numpy() - reference.score.to_numpy()).max()
        assert difference <= PARITY_TOLERANCE, (export_format, difference)
        assert np.allclose(predictions.normalised_score, reference.normalised_score, atol=PARITY_TOLERANCE)
        assert all((out / heatmap).is_file() for heatmap in predictions.heatmap)
        for mask in predictions["mask"]:
            with Image.open(out / mask) as ours, Image.open(tmp_path / "checkpoint" / mask) as theirs:
                disagree = np.mean(np.asarray(ours) != np.asarray(theirs))
            assert disagree <= MASK_DISAGREEMENT, (export_format, mask, disagree)


def test_exported_files_carry_their_metadata(run_dir: Path, exported: dict[str, Path]) -> None:
    onnx_metadata = {entry.key: entry.value for entry in onnx.load(exported["onnx"]).metadata_props}
    extra = {TORCHSCRIPT_METADATA_FILE: ""}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch 2.14 deprecates torch.jit; it still loads
        torch.jit.load(str(exported["torchscript"]), _extra_files=extra)
    config = json.loads((run_dir / "config.json").read_text())
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    for text, export_format in ((onnx_metadata[METADATA_KEY], "onnx"), (extra[TORCHSCRIPT_METADATA_FILE],
                                                                         "torchscript")):
        metadata = json.loads(text)
        assert metadata["format_version"] == EXPORT_FORMAT_VERSION
        assert metadata["exported_as"] == export_format
        assert metadata["image_size"] == 64 and metadata["input"]["shape"] == ["batch", 3, 64, 64]
        assert metadata["input"]["range"] == [0.0, 1.0]
        assert len(metadata["normalisation"]["mean"]) == len(metadata["normalisation"]["std"]) == 3
        assert metadata["categories"] == config["categories"] == ["hex_nut", "grass"]
        assert set(metadata["normal_reference"]) >= {"map_median", "score_p99"}
        # The calibrated thresholds travel with the file, pooled and per category, exactly as in the checkpoint.
        saved = state["normal_reference"][UNIFIED_KEY]
        for key in (IMAGE_THRESHOLD_KEY, PIXEL_THRESHOLD_KEY):
            assert metadata["normal_reference"][key] == saved[key]
            for category in ("hex_nut", "grass"):
                assert metadata["normal_reference"][PER_CATEGORY_KEY][category][key] == \
                    saved[PER_CATEGORY_KEY][category][key]


def test_overlays_follow_the_source_resolution(run_dir: Path, exported: dict[str, Path], tiny_data: Path,
                                               tmp_path: Path) -> None:
    source = Image.open(next((tiny_data / "grass" / "test" / "hole").iterdir())).convert("RGB")
    wide = tmp_path / "wide.png"
    source.resize(SOURCE_SIZE).save(wide)  # not the model's 64 x 64, and not square
    for option, model in (("--checkpoint", run_dir), ("--model", exported["onnx"])):
        out = tmp_path / option.strip("-")
        assert main(["predict", option, str(model), str(wide), "--out", str(out)]) == 0
        row = pd.read_csv(out / "predictions.csv").iloc[0]
        with Image.open(out / row.heatmap) as picture:
            assert picture.height == SOURCE_SIZE[1] and picture.width > 2 * SOURCE_SIZE[0]
        with Image.open(out / row["mask"]) as mask:  # the binary defect mask, at the source resolution too
            assert mask.size == SOURCE_SIZE and set(np.unique(np.asarray(mask))) <= {0, 255}


def _resized_copy(root: Path, out: Path, categories: list[str]) -> Path:
    """The categories' files under ``root`` copied to ``out``, every image and mask resized to SOURCE_SIZE."""
    for category in categories:
        for path in (root / category).rglob("*.png"):
            target = out / path.relative_to(root)
            target.parent.mkdir(parents=True, exist_ok=True)
            with Image.open(path) as image:
                is_mask = "ground_truth" in path.parts
                image.resize(SOURCE_SIZE, Image.Resampling.NEAREST if is_mask else Image.Resampling.BILINEAR
                             ).save(target)
    return out


def test_examples_are_drawn_at_the_source_resolution(run_dir: Path, tiny_data: Path, tmp_path: Path) -> None:
    data = _resized_copy(tiny_data, tmp_path / "data", CATEGORIES.split(","))
    frame = write_examples(run_dir, data, tmp_path / "examples", per_category=2)
    assert list(frame.columns) == list(EXAMPLE_COLUMNS) and len(frame) == 4
    assert frame.is_anomalous.notna().all()  # the run is calibrated: every example has a verdict
    for row in frame.itertuples():
        for kind in ("image", "mask", "heatmap"):
            with Image.open(tmp_path / "examples" / getattr(row, kind)) as picture:
                assert picture.size == SOURCE_SIZE, (kind, picture.size)
        with Image.open(tmp_path / "examples" / row.panels) as picture:
            assert picture.height == SOURCE_SIZE[1] and picture.width > 3 * SOURCE_SIZE[0]


def test_export_refuses_bad_input_in_one_line(run_dir: Path, tmp_path: Path, capsys) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    folder = tmp_path / "folder.pt"
    folder.mkdir()
    state = torch.load(run_dir / CHECKPOINT_FILE, weights_only=True)
    state["format_version"] = CHECKPOINT_FORMAT_VERSION + 1
    other_version = tmp_path / "other" / CHECKPOINT_FILE
    other_version.parent.mkdir()
    torch.save(state, other_version)
    cases = [
        (["--format", "tflite", "--out", str(tmp_path / "m.tflite")], "unknown export format 'tflite'"),
        (["--format", "onnx", "--out", str(blocker / "m.onnx")], "cannot write there"),
        (["--format", "onnx", "--out", str(tmp_path / "m.pt")], "must end in .onnx"),
        (["--format", "torchscript", "--out", str(folder)], "is a folder"),
    ]
    for args, needle in cases:
        capsys.readouterr()
        assert main(["export", "--checkpoint", str(run_dir), *args]) == 2
        lines = _error_lines(capsys)
        assert len(lines) == 1 and needle in lines[0], (args, lines)
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(other_version), "--format", "torchscript",
                 "--out", str(tmp_path / "m.pt")]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and f"checkpoint format {CHECKPOINT_FORMAT_VERSION + 1}" in lines[0], lines
    assert not list(tmp_path.glob("m.*"))


def test_predict_model_refuses_bad_input_in_one_line(run_dir: Path, exported: dict[str, Path], tiny_data: Path,
                                                     tmp_path: Path, capsys, monkeypatch) -> None:
    image = str(next((tiny_data / "grass" / "test" / "good").iterdir()))
    cases = [
        (run_dir / CHECKPOINT_FILE, "not a TorchScript export"),
        (tmp_path / "missing.onnx", "no such file"),
        (run_dir / "config.json", "expected an exported .onnx or .pt file"),
    ]
    for model, needle in cases:
        capsys.readouterr()
        assert main(["predict", "--model", str(model), image, "--out", str(tmp_path / "out")]) == 2
        lines = _error_lines(capsys)
        assert len(lines) == 1 and needle in lines[0], (model, lines)
    # onnxruntime is an optional dependency (the `deploy` extra): without it, one line says so.
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    capsys.readouterr()
    assert main(["predict", "--model", str(exported["onnx"]), image, "--out", str(tmp_path / "out")]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "needs onnxruntime" in lines[0] and "[deploy]" in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_separate_paradigm_exports_one_category(tiny_data: Path, tiny_overrides: list[str], tmp_path: Path,
                                                capsys) -> None:
    run = tmp_path / "separate"
    assert main(["train", "--data", str(tiny_data), "--categories", CATEGORIES, "--paradigm", "separate",
                 "--out", str(run), *_set_args([*tiny_overrides, "epochs=1"])]) == 0
    capsys.readouterr()
    assert main(["export", "--checkpoint", str(run), "--format", "torchscript", "--out", str(tmp_path / "x.pt")]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "--category" in lines[0], lines
    path = tmp_path / "grass.pt"
    assert main(["export", "--checkpoint", str(run), "--format", "torchscript", "--category", "grass",
                 "--out", str(path)]) == 0
    image = str(tiny_data / "grass" / "test" / "good")
    assert main(["predict", "--model", str(path), image, "--out", str(tmp_path / "by_model")]) == 0
    assert main(["predict", "--checkpoint", str(run), "--category", "grass", image,
                 "--out", str(tmp_path / "by_checkpoint")]) == 0
    by_model = pd.read_csv(tmp_path / "by_model" / "predictions.csv")
    by_checkpoint = pd.read_csv(tmp_path / "by_checkpoint" / "predictions.csv")
    assert by_model.model.tolist() == ["grass"] * 3
    capsys.readouterr()
    assert main(["predict", "--model", str(path), "--category", "hex_nut", image, "--out", str(tmp_path / "x")]) == 2
    lines = _error_lines(capsys)
    assert len(lines) == 1 and "holds the model of category 'grass'" in lines[0], lines
    assert np.abs(by_model.score.to_numpy() - by_checkpoint.score.to_numpy()).max() <= PARITY_TOLERANCE
