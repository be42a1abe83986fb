"""Ray that cannot be reached: one line naming the address and exit code 3, never a hang.

- an ``--address`` where nothing listens, and one where something listens but no Ray GCS answers (the
  "Failed to connect to GCS within 60 seconds" hang: ``ray.init`` waits on such a port for minutes);
- a local Ray that fails to start (its Unix socket paths would be too long), and one that does not start
  within ``--connect-timeout``;
- a head node that dies while the study runs (every process of it killed by PID).

Each study runs in a subprocess whose own timeout is the hang detector; how long each took is measured by
``benchmarks/reliability.py``, not asserted here.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from study.tune import processes
from study.tune.local_cluster import LocalCluster, free_port
from tests.study.cluster import faults
from tests.study.cluster.faults import cluster_args, write_space
from tests.study.helpers import REPO_ROOT, RUN, study_args

pytestmark = pytest.mark.cluster

EXIT_RAY_UNAVAILABLE = 3
# Hang detector of one study command (a correct one ends in well under a minute).
COMMAND_TIMEOUT_S = 180
# Deeper than the 107 bytes a Unix socket path may have, once Ray adds its session and socket names.
LONG_DIR_NAME = "d" * 90


def last_error_line(out: subprocess.CompletedProcess) -> str:
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert lines, out.stdout[-2000:]
    return lines[-1]


def run_study(args: list[str], env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen([*RUN, *args], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=COMMAND_TIMEOUT_S)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


@pytest.fixture
def silent_listener() -> Iterator[str]:
    """An address where a TCP server accepts connections but never answers (not Ray)."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        yield f"127.0.0.1:{server.getsockname()[1]}"


def test_an_address_without_a_cluster_is_one_line_and_exit_code_3(
        tmp_path: Path, tiny_data: Path, child_env: dict[str, str], silent_listener: str) -> None:
    space = write_space(tmp_path, "nocluster", epochs=1)
    closed = f"127.0.0.1:{free_port()}"
    # both at once: the silent one waits for the gRPC handshake's timeout
    started = {address: run_study(study_args(space, tiny_data, tmp_path / address.replace(":", "_"),
                                             "--address", address), child_env)
               for address in (closed, silent_listener)}
    for address, process in started.items():
        out = finish(process)
        assert out.returncode == EXIT_RAY_UNAVAILABLE, out.stderr[-2000:]
        line = last_error_line(out)
        assert line.startswith("error: --address") and address in line, line
        assert not (tmp_path / address.replace(":", "_") / "nocluster").exists()  # nothing started


def test_a_local_ray_that_fails_or_hangs_at_start_is_one_line_and_exit_code_3(
        tmp_path: Path, tiny_data: Path, child_env: dict[str, str]) -> None:
    space = write_space(tmp_path, "noray", epochs=1)
    too_deep = tmp_path / LONG_DIR_NAME
    too_deep.mkdir()
    # short (Ray's socket paths go below it), and only the second study's Ray uses it
    own_tmp = Path(tempfile.mkdtemp(prefix="rt-", dir="/tmp"))
    try:
        failing = run_study(study_args(space, tiny_data, tmp_path / "a"), {**child_env, "RAY_TMPDIR": str(too_deep)})
        # a start that cannot finish in time: the deadline ends the process, and the Ray processes it began
        hanging = run_study(study_args(space, tiny_data, tmp_path / "b", "--connect-timeout", "0.5"),
                            {**child_env, "RAY_TMPDIR": str(own_tmp)})
        out = finish(failing)
        assert out.returncode == EXIT_RAY_UNAVAILABLE, out.stderr[-2000:]
        line = last_error_line(out)
        assert line.startswith("error: local Ray") and "did not start" in line and "AF_UNIX" in line, line
        out = finish(hanging)
        assert out.returncode == EXIT_RAY_UNAVAILABLE, out.stderr[-2000:]
        line = last_error_line(out)
        assert line.startswith("error: local Ray") and "within 0.5 s" in line, line
        left = [r for r in processes.descendants(1) if str(own_tmp) in r.command]
        assert not processes.wait_gone(left, 30), [r.command[:120] for r in left]
    finally:
        shutil.rmtree(own_tmp, ignore_errors=True)


def test_a_head_that_dies_mid_study_is_one_line_and_exit_code_3(
        tmp_path: Path, tiny_data: Path, cluster_env: dict[str, str]) -> None:
    with LocalCluster(tmp_path / "cluster", cluster_env) as cluster:
        cluster.start_head(num_cpus=1, dashboard=False)
        space = write_space(tmp_path, "headdeath", grid={"noise_intensity": [1.0]}, epochs=400)
        run = faults.start_study(cluster_args(space, tiny_data, tmp_path / "results", cluster, tmp_path / "storage"),
                                 cluster_env, tmp_path / "results" / "headdeath",
                                 tmp_path / "storage" / "headdeath" / "tune", tmp_path / "study.log")
        out = faults.head_dies(cluster, run)
    assert out.exit_code == EXIT_RAY_UNAVAILABLE, run.log()[-3000:]
    assert out.last_line.startswith("error: the cluster at") and cluster.address in out.last_line, out.last_line
    assert "--resume" in out.last_line
    assert not cluster.leftovers()
