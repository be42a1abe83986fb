"""Shared fixtures: isolated caches and one tiny embedded-style data set per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

TINY_SET = dict(train_per_category=8, test_good=3, test_per_defect=2, image_size=64)
# A model small enough to train in a second or two on 2 cores, on 64 px images (4x4 tokens).
TINY_OVERRIDES = ["image_size=64", "hidden_dim=16", "num_heads=2", "depth=2", "residual_every=1", "dilation=1",
                  "epochs=2", "batch_size=4", "eval_batch_size=8", "anomaly_map_sigma=1"]


@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Point the feature and data caches at per-session temporary folders (never the user's cache)."""
    base = tmp_path_factory.mktemp("caches")
    os.environ["MAAE_FEATURE_CACHE"] = str(base / "features")
    os.environ["MAAE_DATA_CACHE"] = str(base / "data")


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded generator's six categories at 64 px with a handful of images each."""
    from maae.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    generate_dataset(root, seed=0, **TINY_SET)
    return root


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    return list(TINY_OVERRIDES)
