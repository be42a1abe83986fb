"""The ablation table: switches mapped onto the paper's Table 3, and which differences exceed the seed spread."""

from __future__ import annotations

import math

import pytest

from study.report.ablation import (
    BASELINE_FLAGS,
    FULL_MODEL_FLAGS,
    ablation_differences,
    ablation_table,
    find_reference,
    is_grid_study,
)
from study.report.load import load_results
from tests.study.report.fixtures import TrialSpec, grid_spec, grid_study, write_study


def test_ablation_table_maps_switches_onto_table_3(tmp_path):
    results = load_results(grid_study(tmp_path))
    assert is_grid_study(results)
    table = ablation_table(results).set_index(["ang", "ffm", "mixed_attention"])
    assert table.loc[(True, True, True), "paper_image_auroc"] == 97.2
    assert table.loc[(True, True, True), "paper_pixel_auroc"] == 96.9
    assert table.loc[(False, False, False), "paper_image_auroc"] == 76.0
    assert table.loc[(True, False, True), "paper_pixel_auroc"] == 96.8


def test_ablation_differences_against_full_model_and_baseline(tmp_path):
    results = load_results(grid_study(tmp_path))
    table = ablation_table(results)
    full = find_reference(results, table, FULL_MODEL_FLAGS, "full model")
    baseline = find_reference(results, table, BASELINE_FLAGS, "no-module baseline")
    assert full.key is not None and baseline.key is not None
    differences = ablation_differences(table, full.key).set_index("label")
    row = differences.loc["use_ang=False, use_ffm=False, attention=spatial"]
    groups = table.set_index("label")
    a = groups.loc["use_ang=False, use_ffm=False, attention=spatial"]
    b = groups.loc["use_ang=True, use_ffm=True, attention=mixed"]
    assert row["image_auroc_delta"] == pytest.approx(a["image_auroc_mean"] - b["image_auroc_mean"])
    pooled = math.sqrt((2 * a["image_auroc_std"] ** 2 + 2 * b["image_auroc_std"] ** 2) / 4)
    assert row["image_auroc_pooled_std"] == pytest.approx(pooled)
    assert bool(row["image_auroc_exceeds"]) == bool(abs(row["image_auroc_delta"]) > 2 * pooled)
    assert len(ablation_differences(table, baseline.key)) == 5


def test_differences_within_seed_spread_are_not_flagged(tmp_path):
    """Two full-model settings whose lambda_ang differs by a hair: the same up to seed noise."""
    trials = []
    for lam in (0.6, 0.61):
        for seed in (0, 1, 2, 3):
            trials.append(TrialSpec(f"lam{lam}_s{seed}", "completed", {"use_ang": True, "use_ffm": True,
                                                                       "attention": "mixed", "lambda_ang": lam,
                                                                       "seed": seed}))
    results = load_results(write_study(tmp_path, grid_spec(trials=trials)))
    table = ablation_table(results)
    full = find_reference(results, table, FULL_MODEL_FLAGS, "full model")
    assert "2 settings" in full.note  # both rows have the full model's switches; the best is the reference
    differences = ablation_differences(table, full.key)
    assert differences["image_auroc_exceeds"].tolist() == [False]
    missing = find_reference(results, table, BASELINE_FLAGS, "no-module baseline")
    assert missing.key is None and "no completed setting" in missing.note
