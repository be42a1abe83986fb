"""Fixtures of the cluster tests: a real multi-node Ray cluster on this machine, and an undisturbed study on it.

The cluster (:class:`study.tune.local_cluster.LocalCluster`): a head started with ``ray start --head
--num-cpus=0`` (it runs no trial) and two worker nodes with 1 CPU each, every process recorded by PID and
stopped by PID at the end of the session. A test that kills a worker node leaves a replacement behind, and
:func:`two_workers` tops the cluster up again, so every test starts with two live worker nodes.

The studies run as the user runs them: ``python study/run.py --address <head> --storage <shared folder>``
in a subprocess, on the tiny model and data set of ``tests/conftest.py``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

from study.tune.local_cluster import LocalCluster
from tests.study.cluster.faults import (
    LEAK_RESOURCE,
    LEAK_RESOURCE_UNITS,
    REFERENCE_GRID,
    cluster_args,
    read_trials,
    write_space,
)
from tests.study.helpers import run_cli


@pytest.fixture(scope="session")
def cluster_env(isolated_caches: dict[str, str]) -> dict[str, str]:
    """Environment of the cluster's nodes and of the study commands (no token auth, shared caches)."""
    from study.cli import study_environment

    return {**os.environ, **isolated_caches, **study_environment(local=True)}


@pytest.fixture(scope="session")
def multinode(tmp_path_factory: pytest.TempPathFactory, cluster_env: dict[str, str]) -> Iterator[LocalCluster]:
    """Head (0 CPUs) + two 1-CPU worker nodes, for the whole session; every process stopped by PID."""
    cluster = LocalCluster(tmp_path_factory.mktemp("multinode"), cluster_env)
    try:
        cluster.start_head(num_cpus=0, resources={LEAK_RESOURCE: LEAK_RESOURCE_UNITS})
        cluster.add_workers(2)
        yield cluster
    finally:
        cluster.stop()
    assert not cluster.leftovers(), cluster.leftovers()


@pytest.fixture
def two_workers(multinode: LocalCluster) -> LocalCluster:
    """The session's cluster with two live worker nodes (a replacement is added if a test killed one)."""
    while len(multinode.workers()) < 2:
        multinode.add_worker()
    return multinode


@pytest.fixture(scope="session")
def undisturbed(tmp_path_factory: pytest.TempPathFactory, tiny_data: Path, cluster_env: dict[str, str],
                multinode: LocalCluster) -> tuple[Path, pd.DataFrame]:
    """The grid study on the cluster with nothing going wrong: the reference of every fault test.

    Returns its results folder and ``trials.csv`` indexed by noise_intensity.
    """
    root = tmp_path_factory.mktemp("undisturbed")
    space = write_space(root, "undisturbed", grid=REFERENCE_GRID)
    out = run_cli(cluster_args(space, tiny_data, root / "results", multinode, root / "storage"), cluster_env)
    assert out.returncode == 0, out.stderr[-3000:]
    folder = root / "results" / "undisturbed"
    return folder, read_trials(folder).set_index("noise_intensity")
