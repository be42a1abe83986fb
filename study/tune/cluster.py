"""Starting or joining Ray, and checking up front that a trial's workers can ever be placed.

A trial takes two kinds of resources (see ``docs/cluster.md``):

- its *driver* (the Tune function that builds and fits the trial's ``TorchTrainer``) reserves only a little
  memory (:data:`TRIAL_DRIVER_MEMORY_BYTES`), no CPU and no GPU. A CPU for the driver is what deadlocks
  small machines: on 2 CPUs a 1-CPU driver plus two 1-CPU workers never fit, and Train would wait forever;
- its *workers* (Ray Train's own placement group): ``workers_per_trial x {CPU: cpus_per_worker,
  GPU: gpus_per_worker}``.

Concurrency is capped so that the workers of all running trials fit the cluster at once
(:func:`max_concurrent_trials`); a trial whose workers could never fit is refused before anything runs.

Every wait on Ray here is bounded (:mod:`study.tune.connect`): an address where no Ray answers, a local Ray
that fails or does not start in time, and a head that dies during the study (:func:`watch`) each end the
study with one line and exit code 3 (:class:`~study.tune.connect.RayUnavailableError`).
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from maae.errors import ConfigError
from study.tune import connect
from study.tune.connect import RayUnavailableError

# The trial driver's reservation: memory only, so it never competes with workers for CPUs or GPUs.
TRIAL_DRIVER_MEMORY_BYTES = 64 * 1024 * 1024
AUTO_ADDRESS = "auto"
DASHBOARD_HOST = "127.0.0.1"

# Environment of a local run (``--address`` not given): no token auth on a private single-machine cluster,
# no preemption watcher and migration warnings (quieter, faster), and a quicker Train controller poll so a
# trial's reports and its end are seen in a quarter second rather than two.
LOCAL_ENV = {
    "RAY_AUTH_MODE": "disabled",
}
STUDY_ENV = {
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_ENABLE_V2_MIGRATION_WARNINGS": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.25",
    # Results of non-evaluated epochs carry no metric; the searcher is guarded (see study.tune.driver).
    "TUNE_DISABLE_STRICT_METRIC_CHECKING": "1",
    # Save Tune's experiment state every 2 s (not 10): a killed study re-runs less when resumed.
    "TUNE_GLOBAL_CHECKPOINT_S": "2",
    # Tune warns when it forces many state saves in a row (it does so with num_to_keep); the study keeps every
    # checkpoint with Tune and deletes them itself (study.tune.checkpoints), so the warning would only be noise.
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
    # Tune's own console output (a settings box, result tables): the study prints its own progress lines.
    "RAY_AIR_NEW_OUTPUT": "0",
}

# Settings of STUDY_ENV that a user's own environment variable overrides: how often Tune saves its experiment
# state is a trade (a save per step costs driver time on big studies, a long period re-runs more after a
# kill), and a user or a test that needs a kill to land right after a save can set it.
USER_SETTABLE_ENV = ("TUNE_GLOBAL_CHECKPOINT_S",)


@dataclass(frozen=True)
class ClusterResources:
    """What the cluster offers: totals, and the largest single node (a worker never spans nodes)."""

    cpus: float
    gpus: float
    node_cpus: float
    node_gpus: float
    memory: float

    def describe(self) -> str:
        gpus = f", {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.cpus:g} CPU{gpus}"


@dataclass(frozen=True)
class WorkerShape:
    """The resources of one trial's workers."""

    workers: int
    cpus: float
    gpus: float

    @property
    def total_cpus(self) -> float:
        return self.workers * self.cpus

    @property
    def total_gpus(self) -> float:
        return self.workers * self.gpus

    def describe(self) -> str:
        gpus = f" + {self.gpus:g} GPU" if self.gpus else ""
        return f"{self.workers} worker(s) x ({self.cpus:g} CPU{gpus})"


def check_shape(shape: WorkerShape) -> None:
    """Cheap checks of the command line's worker settings (before Ray starts)."""
    if shape.workers < 1:
        raise ConfigError(f"--workers-per-trial: expected an integer >= 1, got {shape.workers}")
    if not shape.cpus > 0:
        raise ConfigError(f"--cpus-per-worker: expected a number > 0, got {shape.cpus:g}")
    if shape.gpus < 0:
        raise ConfigError(f"--gpus-per-worker: expected a number >= 0, got {shape.gpus:g}")


def local_cpus() -> int:
    """CPUs this process may use (the affinity mask where the platform has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def check_fits(shape: WorkerShape, resources: ClusterResources, where: str) -> None:
    """Refuse a trial whose workers the cluster can never give (one line naming the flag)."""
    if shape.total_cpus > resources.cpus + 1e-9:
        raise ConfigError(
            f"--workers-per-trial/--cpus-per-worker: a trial needs {shape.total_cpus:g} CPUs "
            f"({shape.describe()}) but {where} has {resources.cpus:g}; expected at most {resources.cpus:g}")
    if shape.cpus > resources.node_cpus + 1e-9:
        raise ConfigError(f"--cpus-per-worker: {shape.cpus:g} CPUs per worker but the largest node of {where} "
                          f"has {resources.node_cpus:g}")
    if shape.gpus > 0:
        if shape.total_gpus > resources.gpus + 1e-9:
            raise ConfigError(
                f"--gpus-per-worker: a trial needs {shape.total_gpus:g} GPUs ({shape.describe()}) but {where} "
                f"has {resources.gpus:g}; expected at most {resources.gpus:g}")
        if shape.gpus > resources.node_gpus + 1e-9:
            raise ConfigError(f"--gpus-per-worker: {shape.gpus:g} GPUs per worker but the largest node of "
                              f"{where} has {resources.node_gpus:g}")


def max_concurrent_trials(shape: WorkerShape, resources: ClusterResources, requested: int | None) -> int:
    """How many trials may run at once so that all their workers fit together (at least one)."""
    fit = math.floor(resources.cpus / shape.total_cpus + 1e-9)
    if shape.gpus > 0:
        fit = min(fit, math.floor(resources.gpus / shape.total_gpus + 1e-9))
    fit = max(fit, 1)
    if requested is None:
        return fit
    if requested < 1:
        raise ConfigError(f"--max-concurrent: expected an integer >= 1, got {requested}")
    return min(requested, fit)


def trials_can_grow(shape: WorkerShape, resources: ClusterResources) -> bool:
    """Whether a one-worker trial could ever be given a spare CPU: some node has at least one CPU more than a
    trial takes (a trial's bundle lives on one node). Where none has, resizing can never act, and on a local
    Ray the trials reuse their Ray actors instead (see :func:`study.tune.driver.build_tuner`)."""
    return shape.workers == 1 and resources.node_cpus >= shape.cpus + 1 - 1e-9


# ---------------------------------------------------------------------------------------- address ---

def resolve_address(address: str) -> str:
    """``auto`` or ``host:port`` -> a ``host:port`` where Ray's GCS answers.

    A malformed address is bad input (:class:`ConfigError`, exit code 2); an address where no Ray answers
    is a :class:`~study.tune.connect.RayUnavailableError` (exit code 3), raised within about
    ``TCP_PROBE_TIMEOUT_S + GCS_HANDSHAKE_TIMEOUT_S`` seconds, never a hang.
    """
    target = address
    if address == AUTO_ADDRESS:
        target = os.environ.get("RAY_ADDRESS", "")
        if not target or target == AUTO_ADDRESS:
            try:
                from ray._private.services import canonicalize_bootstrap_address_or_die

                target = canonicalize_bootstrap_address_or_die(AUTO_ADDRESS)
            except (ConnectionError, ValueError) as err:
                raise RayUnavailableError(
                    f"--address auto: no running Ray cluster found on this machine "
                    f"({' '.join(str(err).split())[:160]}); start one with 'ray start --head'") from None
    host, sep, port = target.rpartition(":")
    if target.startswith("ray://"):
        raise ConfigError(f"--address {address}: Ray Client addresses (ray://) are not supported; expected "
                          "host:port of the head node (GCS port, 6379 by default)")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"--address {address}: expected 'auto' or host:port (e.g. 10.0.0.1:6379)")
    via = f" (found {target})" if target != address else ""
    connect.check_gcs(target, f"--address {address}{via}")
    return target


# ------------------------------------------------------------------------------------ start / join ---

def runtime_env(env_vars: Mapping[str, str]) -> dict[str, Any]:
    return {"env_vars": dict(env_vars)}


def needs_dashboard(shape: WorkerShape) -> bool:
    """Whether a study's trials need the dashboard: Ray Train's clean-up of a multi-worker trial asks its
    State API. One-worker trials train in Tune's own actors and need none; without it a local Ray starts
    faster and its idle processes use less CPU (``benchmarks/ray_overhead.py`` measures both)."""
    return shape.workers > 1


def start_local(num_cpus: int, env_vars: Mapping[str, str], *, log_to_driver: bool = False,
                connect_timeout: float = connect.LOCAL_START_TIMEOUT_S, dashboard: bool = True) -> None:
    """A private Ray on this machine; with ``dashboard``, its dashboard on 127.0.0.1 (Train's clean-up needs
    its State API, see :func:`needs_dashboard`).

    Bounded by ``connect_timeout``: a Ray that fails to start, or does not start in time, ends the process
    with one line and exit code 3 (see :mod:`study.tune.connect`).
    """
    import logging

    import ray

    describe = "local Ray (this machine)"
    with connect.deadline(connect_timeout, describe):
        try:
            ray.init(address="local", num_cpus=num_cpus, include_dashboard=dashboard, dashboard_host=DASHBOARD_HOST,
                     runtime_env=runtime_env(env_vars), logging_level=logging.WARNING,
                     log_to_driver=log_to_driver)
        except Exception as err:  # noqa: BLE001 - whatever stops Ray from starting ends the study in one line
            _shutdown_quietly()
            raise RayUnavailableError(f"{describe}: Ray did not start ({connect.first_line(err)})") from None


def join(address: str, env_vars: Mapping[str, str], *, log_to_driver: bool = False,
         connect_timeout: float = connect.JOIN_TIMEOUT_S) -> None:
    """Connect to the cluster at ``address`` (bounded like :func:`start_local`)."""
    import logging

    import ray

    describe = f"--address {address}"
    with connect.deadline(connect_timeout, describe):
        try:
            ray.init(address=address, runtime_env=runtime_env(env_vars), logging_level=logging.WARNING,
                     log_to_driver=log_to_driver)
        except Exception as err:  # noqa: BLE001 - whatever stops the connection ends the study in one line
            _shutdown_quietly()
            raise RayUnavailableError(f"{describe}: could not join the Ray cluster there "
                                      f"({connect.first_line(err)})") from None


def watch(describe: str) -> connect.GcsWatch:
    """Start watching the GCS of the Ray this process is connected to (see :class:`connect.GcsWatch`):
    if it stops answering during the study, one line naming it and exit code 3. Stop it with
    :func:`shutdown`."""
    gcs = gcs_address()
    return connect.GcsWatch(gcs, f"{describe} (GCS {gcs})").start()


def _shutdown_quietly() -> None:
    import ray

    with contextlib.suppress(Exception):  # already failing; the first error is the one reported
        ray.shutdown()


def current_node_id() -> str:
    """The id of the Ray node this process runs on (a trial's results carry it: ``trials.csv`` node_id)."""
    import ray

    return ray.get_runtime_context().get_node_id()


def gcs_address() -> str:
    """The GCS address of the Ray this process is connected to (what the state API is asked with)."""
    import ray

    return ray.get_runtime_context().gcs_address


def is_connected() -> bool:
    import ray

    return ray.is_initialized()


def cluster_resources() -> ClusterResources:
    import ray

    total = ray.cluster_resources()
    nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
    return ClusterResources(
        cpus=float(total.get("CPU", 0.0)),
        gpus=float(total.get("GPU", 0.0)),
        node_cpus=max((float(n.get("CPU", 0.0)) for n in nodes), default=0.0),
        node_gpus=max((float(n.get("GPU", 0.0)) for n in nodes), default=0.0),
        memory=float(total.get("memory", 0.0)),
    )


def local_resources(num_cpus: int) -> ClusterResources:
    """What a local Ray started with ``num_cpus`` will offer (GPUs are only known once Ray runs)."""
    return ClusterResources(cpus=float(num_cpus), gpus=math.inf, node_cpus=float(num_cpus), node_gpus=math.inf,
                            memory=math.inf)


def dashboard_url() -> str | None:
    try:
        from ray._private.worker import get_dashboard_url

        url = get_dashboard_url()
    except Exception:  # noqa: BLE001 - the URL is informative only
        return None
    return f"http://{url}" if url and not str(url).startswith("http") else url


def shutdown(watch: connect.GcsWatch | None = None) -> None:
    """Stop watching the GCS (first: shutting a local Ray down closes its port), then leave or stop Ray."""
    import ray

    if watch is not None:
        watch.stop()
    if ray.is_initialized():
        ray.shutdown()
