"""Fixtures of the study platform's tests: one local Ray for the session, tiny search spaces, child env."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.study.helpers import SESSION_CPUS


@pytest.fixture(scope="session")
def ray_session(isolated_caches: dict[str, str]) -> Iterator[str]:
    """One local Ray for the session (address="local", 2 CPUs, dashboard on 127.0.0.1); yields its address."""
    import ray

    from study.cli import study_environment
    from study.tune import cluster

    env = study_environment(local=True)
    os.environ.update({k: v for k, v in env.items() if k != "PYTHONPATH"})
    cluster.start_local(SESSION_CPUS, env)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        cluster.shutdown()


@pytest.fixture
def space_file(tiny_config: dict[str, Any]) -> Callable[..., Path]:
    """``space_file(folder, name, **content)``: a space YAML whose ``fixed`` is the tiny model (plus
    ``content["fixed"]``), with the rest of ``content`` as its other keys."""
    def write(folder: Path, name: str, **content: Any) -> Path:
        path = folder / f"{name}.yaml"
        fixed = {**tiny_config, **content.pop("fixed", {})}
        path.write_text(yaml.safe_dump({"name": name, "fixed": fixed, **content}), encoding="utf-8")
        return path

    return write


@pytest.fixture
def child_env(isolated_caches: dict[str, str]) -> dict[str, str]:
    """The environment of a study command a test starts: this one, the caches, and the study's own."""
    from study.cli import study_environment

    return {**os.environ, **isolated_caches, **study_environment(local=True)}
