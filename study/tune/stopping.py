"""Early stopping that lets a trial end on its own, instead of Tune killing it.

When Tune stops a trial (ASHA's verdict), it kills the trial's driver process while Ray Train's controller
and workers are still running; in ray 2.60 the workers' placement group then stays reserved (its cleaner
does not always catch the controller's death), and the next trials wait for CPUs that never come back: the
study hangs. So the study's scheduler (``study.tune.driver.GracefulASHA``) does not stop a trial itself: it
records ASHA's STOP in a small named actor (:class:`StopRequests`), and the trial's rank 0 worker asks after
every epoch whether to stop; if so, all ranks finish the epoch, report once more with ``stopped``, and
return, so Ray Train shuts the worker group down normally and frees its resources.
"""

from __future__ import annotations

import hashlib
from typing import Any

NAMESPACE = "maae-study"
REGISTRY_PREFIX = "maae-stop-requests-"
_NAME_DIGEST_CHARS = 16
# Handles of the registries this process opened. A (non-detached) named actor lives only as long as some
# handle to it does, so the process that asks for stops keeps its handle here for the rest of its life.
_OPEN_REGISTRIES: dict[str, Any] = {}


def registry_name(results_dir: str) -> str:
    """The registry's actor name for one study (derived from its results folder, so a resumed study and
    its trials agree on it)."""
    return REGISTRY_PREFIX + hashlib.sha1(str(results_dir).encode()).hexdigest()[:_NAME_DIGEST_CHARS]


class StopRequests:
    """Trial ids whose trials should stop after their current epoch (a Ray actor, no CPU)."""

    def __init__(self) -> None:
        self._requested: set[str] = set()

    def request(self, trial_id: str) -> None:
        self._requested.add(trial_id)

    def requested(self, trial_id: str) -> bool:
        return trial_id in self._requested


def request_stop(name: str, trial_id: str) -> None:
    """Ask trial ``trial_id`` to stop after its current epoch (creates the registry on first use)."""
    import ray
    from ray.exceptions import RayActorError

    for _ in range(2):  # a handle cached from an earlier Ray session is stale: open the registry anew
        handle = _OPEN_REGISTRIES.get(name)
        if handle is None:
            handle = ray.remote(num_cpus=0)(StopRequests).options(
                name=name, namespace=NAMESPACE, get_if_exists=True).remote()
            _OPEN_REGISTRIES[name] = handle
        try:
            ray.get(handle.request.remote(trial_id))
            return
        except RayActorError:
            _OPEN_REGISTRIES.pop(name, None)
    raise RuntimeError(f"stop registry {name} is unavailable")


def stop_requested(name: str, trial_id: str) -> bool:
    """Whether trial ``trial_id`` was asked to stop (False when nothing was ever asked)."""
    import ray

    try:
        registry = ray.get_actor(name, namespace=NAMESPACE)
    except ValueError:
        return False
    return bool(ray.get(registry.requested.remote(trial_id)))
