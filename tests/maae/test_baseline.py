"""The nearest-neighbour patch baseline: coreset, search, cache reuse, detection, command line, bad input."""

from __future__ import annotations

import dataclasses
import itertools
import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

from maae.baseline import greedy_coreset, nearest_distances, run_baseline
from maae.baseline.bank import BANK_FOLDER, DISTANCES_FOLDER, MANIFEST
from maae.baseline.config import build_baseline_configs
from maae.baseline.search import block_shape
from maae.cli import main
from maae.config import preset
from maae.errors import ConfigError
from maae.metrics import METRIC_NAMES

CATEGORIES = ["grass", "hex_nut"]
TINY_SIZE = ["image_size=64", "eval_batch_size=8", "anomaly_map_sigma=1"]
CPU = torch.device("cpu")
# Measured on the tiny set (6 categories, 64 px, 8 training images each): mean image AUROC 0.741, pixel
# AUROC 0.951. A detector that scores at random sits at 0.5; one whose maps are misaligned with the images
# loses most of the pixel AUROC.
MIN_IMAGE_AUROC = 0.65
MIN_PIXEL_AUROC = 0.9


def _configs(*extra: str):
    return build_baseline_configs("quick", [*TINY_SIZE, *extra])


def _set_args(items: list[str]) -> list[str]:
    return [arg for item in items for arg in ("--set", item)]


# ------------------------------------------------------------------------------------------ coreset ---

def test_greedy_coreset_picks_the_extremes_of_a_line_first():
    positions = torch.tensor([0.0, 2.0, 3.0, 10.0])
    selection = greedy_coreset(positions[:, None], 3)
    # Farthest from the mean (3.75) is 10, farthest from 10 is 0: the extremes. Then 3 (3 from 0), which
    # leaves 2 uncovered by 1. The radius after each choice: 10 (0 to 10), 3, 1.
    assert selection.indices.tolist() == [3, 0, 2]
    torch.testing.assert_close(selection.radii, torch.tensor([10.0, 3.0, 1.0]))


def test_coverage_radius_is_exact_and_never_increases():
    points = torch.randn(200, 8, generator=torch.Generator().manual_seed(0))
    selection = greedy_coreset(points, 40)
    assert len(set(selection.indices.tolist())) == 40
    distances = torch.cdist(points, points)
    for step in range(40):
        chosen = selection.indices[: step + 1]
        expected = distances[:, chosen].min(dim=1).values.max()
        torch.testing.assert_close(selection.radii[step], expected, rtol=1e-4, atol=1e-4)
    assert (selection.radii[1:] <= selection.radii[:-1] + 1e-6).all()


def test_greedy_radius_is_within_twice_the_optimum():
    points = torch.randn(12, 2, generator=torch.Generator().manual_seed(3))
    distances = torch.cdist(points, points)
    optimum = min(distances[:, list(subset)].min(dim=1).values.max().item()
                  for subset in itertools.combinations(range(12), 3))
    greedy = greedy_coreset(points, 3).radii[-1].item()
    assert optimum <= greedy <= 2 * optimum + 1e-6


def test_duplicate_points_are_never_chosen_twice():
    points = torch.tensor([[0.0, 0.0]] * 5 + [[1.0, 0.0], [0.0, 1.0]])
    selection = greedy_coreset(points, 4)
    assert len(set(selection.indices.tolist())) == 4
    assert selection.radii[-1].item() == 0.0


def test_projection_is_skipped_when_it_would_not_lower_the_dimension():
    points = torch.randn(60, 8, generator=torch.Generator().manual_seed(1))
    exact = greedy_coreset(points, 10, projection_dim=0)
    assert torch.equal(greedy_coreset(points, 10, projection_dim=8, seed=5).indices, exact.indices)
    projected = greedy_coreset(points, 10, projection_dim=3, seed=5)
    assert len(set(projected.indices.tolist())) == 10
    assert torch.equal(projected.indices, greedy_coreset(points, 10, projection_dim=3, seed=5).indices)


def test_a_bank_no_larger_than_the_limit_is_kept_whole():
    selection = greedy_coreset(torch.randn(5, 3), 5)
    assert selection.indices.tolist() == [0, 1, 2, 3, 4]


# ------------------------------------------------------------------------------------------- search ---

def test_blockwise_search_equals_the_full_distance_matrix():
    generator = torch.Generator().manual_seed(2)
    queries, bank = torch.randn(53, 6, generator=generator), torch.randn(71, 6, generator=generator)
    expected = torch.cdist(queries, bank).min(dim=1).values
    for block_elements in (1, 7, 100, 10_000):
        torch.testing.assert_close(nearest_distances(queries, bank, block_elements=block_elements), expected)


@pytest.mark.parametrize(("queries", "bank", "budget"),
                         [(10, 10, 1), (5, 1000, 64), (1000, 3, 64), (100_000, 400_000, 1 << 24)])
def test_a_distance_block_stays_within_its_budget(queries: int, bank: int, budget: int):
    rows, columns = block_shape(queries, bank, budget)
    assert 1 <= rows <= queries and 1 <= columns <= bank
    assert rows * columns <= max(1, budget)


# --------------------------------------------------------------------------- data, cache, detection ---

def test_the_baseline_detects_the_tiny_sets_defects(tiny_data: Path, tmp_path: Path):
    config, baseline = _configs()
    result = run_baseline(config, baseline, tiny_data, None, device=CPU, cache_dir=tmp_path)
    means = result.evaluation.means
    assert means["image_auroc"] >= MIN_IMAGE_AUROC
    assert means["pixel_auroc"] >= MIN_PIXEL_AUROC
    # Stride-4 grid at 64 px: 16 x 16 patches per image, 8 training images per category, no coreset.
    assert result.bank.patches.shape == (6 * 8 * 16 * 16, 24 + 40)
    assert not result.bank.coreset_used


def test_the_second_call_reads_the_cached_bank_and_distances(tiny_data: Path, tmp_path: Path):
    config, baseline = _configs()
    first = run_baseline(config, baseline, tiny_data, CATEGORIES, device=CPU, cache_dir=tmp_path)
    assert first.bank.fitted
    entry = first.bank.path
    assert entry is not None and entry.parent == tmp_path / BANK_FOLDER
    stamps = {path: path.stat().st_mtime_ns for path in [entry / MANIFEST, *(entry / DISTANCES_FOLDER).iterdir()]}
    assert len(stamps) == 1 + len(CATEGORIES)

    second = run_baseline(config, baseline, tiny_data, CATEGORIES, device=CPU, cache_dir=tmp_path)
    assert not second.bank.fitted and second.bank.path == entry
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    torch.testing.assert_close(second.bank.patches, first.bank.patches)
    pd.testing.assert_frame_equal(second.evaluation.scores, first.evaluation.scores)

    # A bank setting is part of the key: another pooling fits another bank; the smoothing is not.
    other = run_baseline(config, dataclasses.replace(baseline, pool_size=1), tiny_data, CATEGORIES, device=CPU,
                         cache_dir=tmp_path)
    assert other.bank.fitted and other.bank.path != entry
    smoother = run_baseline(config, dataclasses.replace(baseline, anomaly_map_sigma=2.0), tiny_data, CATEGORIES,
                            device=CPU, cache_dir=tmp_path)
    assert not smoother.bank.fitted and smoother.bank.path == entry


def test_without_the_feature_cache_nothing_is_written(tiny_data: Path, tmp_path: Path):
    config, baseline = _configs("feature_cache=false")
    result = run_baseline(config, baseline, tiny_data, ["grass"], device=CPU, cache_dir=tmp_path)
    assert result.bank.fitted and result.bank.path is None
    assert not any(tmp_path.iterdir())


# ------------------------------------------------------------------------------------ command line ---

def test_the_command_line_writes_the_run_folder(tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture):
    out = tmp_path / "run"
    code = main(["baseline", "--data", str(tiny_data), "--categories", ",".join(CATEGORIES), "--out", str(out),
                 *_set_args([*TINY_SIZE, "coreset_max_patches=1000"])])
    assert code == 0
    for name in ("config.json", "metrics.json", "per_category.csv", "scores.csv"):
        assert (out / name).is_file(), name
    assert not (out / "checkpoint.pt").exists()
    saved = json.loads((out / "config.json").read_text())
    assert saved["model"] == "patch_nn_baseline" and saved["categories"] == CATEGORIES
    assert saved["config"]["image_size"] == 64
    assert saved["baseline"]["coreset_max_patches"] == 1000
    # 2 categories x 8 images x 16 x 16 patches, subsampled by the coreset.
    assert saved["memory_bank"]["patches"] == 1000 and saved["memory_bank"]["source_patches"] == 2 * 8 * 256
    assert "choosing 1,000 of 4,096 patches by greedy coreset" in capsys.readouterr().err  # said before it starts
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 0 and all(0.0 <= metrics[name] <= 1.0 for name in METRIC_NAMES)
    per_category = pd.read_csv(out / "per_category.csv")
    assert list(per_category.columns) == ["category", *METRIC_NAMES] and list(per_category.category) == CATEGORIES
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 2 * (3 + 3 * 2) and set(scores.label) == {0, 1}
    assert main(["baseline", "--data", str(tiny_data), "--out", str(out), *_set_args(TINY_SIZE)]) == 2


def test_a_data_set_without_defects_is_refused_in_one_line(tiny_data: Path, tmp_path: Path, capsys):
    root = tmp_path / "good_only"
    shutil.copytree(tiny_data / "grass" / "train", root / "grass" / "train")
    shutil.copytree(tiny_data / "grass" / "test" / "good", root / "grass" / "test" / "good")
    code = main(["baseline", "--data", str(root), "--out", str(tmp_path / "run"), *_set_args(TINY_SIZE)])
    assert code == 2
    message = capsys.readouterr().err.strip()
    assert "\n" not in message and str(root) in message and "no defective test images" in message
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(("setting", "field"), [("depth=3", "depth"), ("nonsense=1", "nonsense"),
                                                ("pool_size=2", "pool_size"), ("stages=1,x", "stages"),
                                                ("grid_stage=3", "grid_stage")])
def test_bad_settings_are_refused_in_one_line(setting: str, field: str, tiny_data: Path, tmp_path: Path, capsys):
    with pytest.raises(ConfigError) as raised:
        build_baseline_configs("quick", [setting])
    assert raised.value.field == field
    code = main(["baseline", "--data", str(tiny_data), "--out", str(tmp_path / "run"), "--set", setting])
    message = capsys.readouterr().err.strip()
    assert code == 2 and "\n" not in message and repr(field) in message


def test_the_baselines_smoothing_follows_the_preset():
    config, baseline = build_baseline_configs("paper", [])
    assert baseline.anomaly_map_sigma == preset("paper").anomaly_map_sigma == config.anomaly_map_sigma
    _, quick = build_baseline_configs("quick", ["anomaly_map_sigma=0.5"])
    assert quick.anomaly_map_sigma == 0.5


def test_the_default_keeps_the_embedded_sets_bank_whole_at_every_preset() -> None:
    """The report computes the baseline at a study's image size with the default settings. Above the limit the
    greedy coreset reads the whole bank once per chosen patch: hours on a CPU for the quick preset's bank
    (see maae.baseline.config), so the default must hold every preset's bank of the embedded set whole."""
    import inspect

    from maae.backbone import FEATURE_STAGES
    from maae.baseline.config import BaselineConfig
    from maae.config import PRESETS
    from maae.synthetic import CATEGORY_NAMES, generate_dataset

    config = BaselineConfig()
    stride = 2 ** (FEATURE_STAGES[config.grid_stage] + 1)  # EfficientNet stages: strides 2, 4, 8, 16
    train_images = len(CATEGORY_NAMES) * inspect.signature(generate_dataset).parameters["train_per_category"].default
    patches = {name: train_images * (preset(name).image_size // stride) ** 2 for name in PRESETS}
    assert patches == {"sweep": 368_640, "quick": 829_440, "highres": 1_474_560, "paper": 1_474_560}
    assert config.coreset_max_patches >= max(patches.values())
