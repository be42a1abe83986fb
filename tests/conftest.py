"""Shared fixtures: isolated caches, and the one tiny configuration and data set every test trains on.

The tests mirror the packages (``tests/maae/``, ``tests/study/``, ``tests/study/tune/``, ...). Every test
folder is a package (``__init__.py``), so two test files may share a name in different folders, and shared
helpers import as ``tests.<folder>.<module>``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

# The embedded generator's six categories at 64 px with a handful of images each.
TINY_SET = dict(train_per_category=8, test_good=3, test_per_defect=2, image_size=64)
# A model small enough to train in a second or two on 2 cores, on 64 px images (4x4 tokens): MAAEConfig fields
# laid over a preset (``--set key=value`` of the command lines, ``fixed:`` of a search space).
TINY_CONFIG: dict[str, Any] = {"image_size": 64, "hidden_dim": 16, "num_heads": 2, "depth": 2, "residual_every": 1,
                               "dilation": 1, "epochs": 2, "batch_size": 4, "eval_batch_size": 8,
                               "anomaly_map_sigma": 1.0}


@pytest.fixture(scope="session", autouse=True)
def isolated_caches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Point the feature and data caches at per-session temporary folders (never the user's cache).

    Returns the two environment variables, for the subprocesses and Ray processes a test starts.
    """
    from maae.features import FEATURE_CACHE_ENV
    from maae.synthetic import DATA_CACHE_ENV

    base = tmp_path_factory.mktemp("caches")
    env = {FEATURE_CACHE_ENV: str(base / "features"), DATA_CACHE_ENV: str(base / "data")}
    os.environ.update(env)
    return env


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded generator's six categories at 64 px with a handful of images each."""
    from maae.synthetic import generate_dataset

    root = tmp_path_factory.mktemp("tiny") / "data"
    generate_dataset(root, seed=0, **TINY_SET)
    return root


@pytest.fixture(scope="session")
def tiny_config() -> dict[str, Any]:
    """The tiny model's MAAEConfig fields (a copy: tests may change it)."""
    return dict(TINY_CONFIG)


@pytest.fixture(scope="session")
def tiny_overrides() -> list[str]:
    """The tiny model as ``--set key=value`` arguments."""
    return [f"{name}={value}" for name, value in TINY_CONFIG.items()]
