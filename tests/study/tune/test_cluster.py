"""A study joins a cluster started with ``ray start --head`` (``--address host:port``)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from tests.study.helpers import REPO_ROOT, RUN, free_port, read_tables, study_args

HEAD_START_TIMEOUT_S = 240


def test_study_joins_a_cluster_started_with_ray_start(tmp_path: Path, tiny_data: Path, child_env: dict[str, str],
                                                      space_file: Callable[..., Path]) -> None:
    port, dashboard = free_port(), free_port()
    env = dict(child_env)
    env["RAY_AUTH_MODE"] = "disabled"
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", f"--port={port}", "--num-cpus=2",
         "--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--block"],
        cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        # A guard against a hang, not a speed check: on a loaded 2-core machine `ray start --head` with its
        # dashboard once needed more than 60 s to open its port.
        deadline = time.monotonic() + HEAD_START_TIMEOUT_S
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, f"ray start --head opened no port in {HEAD_START_TIMEOUT_S} s"
                time.sleep(0.5)
        space = space_file(tmp_path, "joined", fixed={"epochs": 1}, eval_every="final")
        out = subprocess.run([*RUN, *study_args(space, tiny_data, tmp_path / "results", "--address", address)],
                             cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=400)
        assert out.returncode == 0, out.stderr[-3000:]
        study, trials, per_category, _ = read_tables(tmp_path / "results" / "joined")
        assert list(trials.status) == ["completed"] and len(per_category) == 2
        assert "best trial" in out.stdout and "category" in out.stdout
    finally:
        # Stop only this head (its --block process stops what it started), never `ray stop` (machine-wide).
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(head.pid, signal.SIGKILL)
            head.wait(timeout=30)
