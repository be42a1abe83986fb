"""A multi-node Ray cluster on one machine, started with the real ``ray start``.

What the cluster tests (``tests/study/cluster/``) and ``benchmarks/reliability.py`` run studies against, and
a way to try ``--address`` without a second machine::

    with LocalCluster(Path("/tmp/my-cluster"), env) as cluster:
        cluster.start_head(num_cpus=0)       # the head runs no trial
        a, b = cluster.add_workers(2)        # 1 CPU each
        ...  python study/run.py --address {cluster.address} --storage /shared/folder ...
        cluster.kill_node(b)                 # a node dies (every process, by PID)
        cluster.add_worker()                 # its replacement

Every node is one ``ray start --block`` process and the processes it starts (GCS, raylet, dashboard, agents).
Each is recorded by PID (and start time, see :mod:`study.tune.processes`) once the node is ready, and
:meth:`LocalCluster.stop` stops exactly those processes (and what they started since), by PID, never with
``ray stop`` (which would stop every Ray on the machine).

- Ray gives a starting node 30 s to register with the GCS, which two nodes starting at once on a loaded
  2-core machine can miss: a node that fails to register is started again, on its own.
- Every port is chosen free (GCS, dashboard, node manager, object manager, agents), and every node gets the
  same ``--temp-dir`` of its own, so nothing collides with another Ray on the machine, and the machine's
  ``/tmp/ray/ray_current_cluster`` (what ``--address auto`` reads) is never written.
- :data:`FAST_NODE_FAILURE_ENV` makes the GCS declare a dead node after about 5 s instead of Ray's 15-30 s
  (health checks every second, 5 missed in a row).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from study.tune import processes
from study.tune.processes import ProcessRecord

LOOPBACK = "127.0.0.1"
READY_LINE = "Ray runtime started."
# How long one node may take to come up (Ray itself gives up on a node after 30 s of registering).
NODE_START_TIMEOUT_S = 120.0
NODE_START_ATTEMPTS = 3
STOP_GRACE_S = 20.0
READY_POLL_S = 0.2
RAYLET_FLAG = "--node_id="
RAYLET_BINARY = "/raylet/raylet"
# GCS health checks of the raylets: every second, a node is dead after 5 missed checks (Ray: 3 s x 5).
FAST_NODE_FAILURE_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "5"}
# Short root for Ray's temporary files: Unix socket paths under it must stay below 108 bytes.
TEMP_PREFIX = "/tmp"


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def ray_executable() -> str:
    """The ``ray`` command of this Python environment."""
    return str(Path(sys.executable).parent / "ray")


class ClusterStartError(RuntimeError):
    """A node of the local cluster did not come up (the message holds the end of its log)."""


@dataclass
class Node:
    """One node: its ``ray start --block`` process, its log, and every process of it we have seen."""

    name: str
    head: bool
    num_cpus: float
    process: subprocess.Popen
    log_path: Path
    records: dict[int, ProcessRecord] = field(default_factory=dict)
    node_id: str = ""

    def refresh(self) -> None:
        """Record the node's processes started since (workers, agents): every one is stopped by PID."""
        block = processes.record(self.process.pid)
        found = ([block] if block is not None else []) + processes.descendants(self.process.pid)
        for each in found:  # a newer record of a PID also has the command after exec (a fork has its parent's)
            self.records[each.pid] = each

    def raylet(self) -> ProcessRecord:
        for each in self.records.values():
            if RAYLET_BINARY in each.command.split(" ", 1)[0] and each.alive():
                return each
        commands = "; ".join(r.command[:80] for r in self.records.values())
        raise ClusterStartError(f"node {self.name}: no raylet process found among {commands}")

    def alive(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 2000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


class LocalCluster:
    """A head and any number of worker nodes on this machine (see the module's docstring)."""

    def __init__(self, root: Path, env: Mapping[str, str]) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.env = dict(env)
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rc-", dir=TEMP_PREFIX))
        self.port = free_port()
        self.dashboard_port: int | None = None
        self.nodes: list[Node] = []
        self._count = 0

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    @property
    def head(self) -> Node:
        return next(node for node in self.nodes if node.head)

    def workers(self) -> list[Node]:
        """Worker nodes whose ``ray start`` still runs."""
        return [node for node in self.nodes if not node.head and node.alive()]

    # ------------------------------------------------------------------------------------- start ---
    def start_head(self, num_cpus: float = 0, *, dashboard: bool = True,
                   resources: Mapping[str, float] | None = None) -> Node:
        """The head node: GCS on :attr:`address`, dashboard on 127.0.0.1 (Train's cleanup and the state API
        need it), ``num_cpus`` CPUs for tasks (0: it runs no trial)."""
        flags = ["--head", f"--port={self.port}", f"--include-dashboard={str(dashboard).lower()}"]
        if dashboard:
            self.dashboard_port = free_port()
            flags += [f"--dashboard-host={LOOPBACK}", f"--dashboard-port={self.dashboard_port}"]
        return self._start("head", True, num_cpus, flags, resources, extra_env=FAST_NODE_FAILURE_ENV)

    def add_worker(self, num_cpus: float = 1, *, resources: Mapping[str, float] | None = None) -> Node:
        """One more worker node with ``num_cpus`` CPUs; returns once it is registered with the head."""
        self._count += 1
        return self._start(f"worker{self._count}", False, num_cpus, [f"--address={self.address}"], resources)

    def add_workers(self, count: int, num_cpus: float = 1, *,
                    resources: Mapping[str, float] | None = None) -> list[Node]:
        """``count`` worker nodes started side by side; one that misses Ray's 30 s to register (two nodes
        starting at once on a loaded machine can) is started again on its own."""
        launched = []
        try:
            for _ in range(count):
                self._count += 1
                launched.append(self._launch(f"worker{self._count}", False, num_cpus, [f"--address={self.address}"],
                                             resources, None))
            started = []
            for node in launched:
                if self._adopt(node):
                    started.append(node)
                else:
                    self._stop_node(node)
                    started.append(self.add_worker(num_cpus, resources=resources))
            return started
        except BaseException:
            for node in launched:
                if node not in self.nodes:
                    self._stop_node(node)
            raise

    def _adopt(self, node: Node) -> bool:
        """Wait for a launched node; once it is ready, record its processes and id and count it in."""
        if not self._wait_ready(node):
            return False
        node.refresh()
        node.node_id = _node_id(node.raylet())
        self.nodes.append(node)
        return True

    def _start(self, name: str, head: bool, num_cpus: float, flags: list[str],
               resources: Mapping[str, float] | None, extra_env: Mapping[str, str] | None = None) -> Node:
        failures = []
        for attempt in range(1, NODE_START_ATTEMPTS + 1):
            node = self._launch(f"{name}" if attempt == 1 else f"{name}-try{attempt}", head, num_cpus, flags,
                                resources, extra_env)
            try:
                if self._adopt(node):
                    return node
            except BaseException:
                self._stop_node(node)
                raise
            failures.append(node.log_tail())
            self._stop_node(node)
        raise ClusterStartError(f"node {name} did not start after {NODE_START_ATTEMPTS} attempts; last log: "
                                f"{failures[-1]}")

    def _launch(self, name: str, head: bool, num_cpus: float, flags: list[str],
                resources: Mapping[str, float] | None, extra_env: Mapping[str, str] | None) -> Node:
        command = [ray_executable(), "start", "--block", "--disable-usage-stats", f"--num-cpus={num_cpus:g}",
                   f"--temp-dir={self.temp_dir}", *flags, *self._port_flags(head)]
        if resources:
            command.append(f"--resources={json.dumps(dict(resources))}")
        log_path = self.root / f"{name}.log"
        env = {**self.env, **(extra_env or {})}
        with log_path.open("w") as log:
            process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=self.root,
                                       start_new_session=True)
        node = Node(name=name, head=head, num_cpus=num_cpus, process=process, log_path=log_path)
        node.refresh()
        return node

    @staticmethod
    def _port_flags(head: bool) -> list[str]:
        """Free ports for everything a node listens on, and random ports for its workers."""
        flags = [f"--node-manager-port={free_port()}", f"--object-manager-port={free_port()}",
                 f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                 f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
                 "--min-worker-port=0", "--max-worker-port=0"]
        if head:
            flags.append(f"--ray-client-server-port={free_port()}")
        return flags

    def _wait_ready(self, node: Node) -> bool:
        deadline = time.monotonic() + NODE_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if READY_LINE in node.log_tail(chars=1_000_000):
                return True
            if not node.alive():
                return False
            node.refresh()
            time.sleep(READY_POLL_S)
        return False

    # ---------------------------------------------------------------------------------- failures ---
    def kill_node(self, node: Node) -> None:
        """SIGKILL every process of the node at once, each by its PID (a machine that vanishes)."""
        node.refresh()
        block = node.records.get(node.process.pid)
        if block is not None:
            block.signal(signal.SIGKILL)  # first, so that it cannot stop the others gracefully
        for each in node.records.values():
            each.signal(signal.SIGKILL)
        node.process.wait(timeout=STOP_GRACE_S)

    # ------------------------------------------------------------------------------------- stop ---
    def _stop_node(self, node: Node) -> None:
        node.refresh()
        if node.alive():
            node.process.send_signal(signal.SIGTERM)  # ``ray start --block`` stops its node's processes
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=STOP_GRACE_S)
        processes.stop([r for r in node.records.values() if r.alive()], STOP_GRACE_S)
        if node.process.poll() is None:
            node.process.kill()
        node.process.wait(timeout=STOP_GRACE_S)

    def stop(self) -> None:
        """Stop every node (workers first), each process by its PID, and remove the temporary folder."""
        for node in sorted(self.nodes, key=lambda n: n.head):
            self._stop_node(node)
        shutil.rmtree(self.temp_dir, ignore_errors=True)

    def leftovers(self) -> list[ProcessRecord]:
        """Recorded processes that still run (empty after :meth:`stop`)."""
        return [r for node in self.nodes for r in node.records.values() if r.alive()]

    def __enter__(self) -> LocalCluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _node_id(raylet: ProcessRecord) -> str:
    for part in raylet.command.split(" "):
        if part.startswith(RAYLET_FLAG):
            return part[len(RAYLET_FLAG):]
    raise ClusterStartError(f"raylet {raylet.pid}: no {RAYLET_FLAG} in its command line")
