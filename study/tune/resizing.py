"""No idle CPUs in a study's tail: Tune's ``ResourceChangingScheduler`` gives spare CPUs to running trials.

A study runs as many one-CPU trials at once as the machine has CPUs. When fewer are left than CPUs (the
tail of a study, or a study with fewer trials than CPUs), the freed CPUs would sit idle. Tune's own
``ResourceChangingScheduler`` wraps the study's scheduler (ASHA, or FIFO without one) and, with Tune's
``DistributeResources``, shares the free CPUs out evenly among the live trials, one CPU at a time. A trial
whose resources change is paused at the result that decided it and restarted from that result's checkpoint
in a new actor, where it sets its torch intra-op threads from its new CPUs (:class:`study.tune.channel.
TuneChannel`): resource changes take effect from the next checkpoint. A newly added trial counts as live
too, so when a trial starts the others give back what they took, at their next result.

:class:`SpareCPUs` is ``DistributeResources`` with three guards, so that a change never costs more than it
brings:

- only a result that carries a checkpoint (every epoch's does) and does not end the trial (not final, not
  ``stopped``, not an ``error``) may change the resources: a pause anywhere else would restart the trial from
  an older checkpoint, or restart a trial that is ending;
- a trial that the scheduler asked to stop (:class:`study.tune.driver.GracefulASHA`) keeps its resources: it
  ends after this epoch anyway;
- a trial grows only when its remaining training is long enough to pay for the restart: at least
  :data:`RESTART_PAYBACK` times what the trial spent outside epochs like its current one so far (its start-up:
  a new process, imports, data and model; and its evaluations), estimated from Tune's own timings. Giving CPUs
  back (a new trial is waiting for them) is never held back.

Only one-worker trials (Tune's function trainable, :mod:`study.tune.trial`) are resized: a trial of two or
more workers is a Ray Train run whose workers Tune does not see (Train reserves them in a placement group of
its own), so those keep their shape.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ray.tune.result import SHOULD_CHECKPOINT
from ray.tune.schedulers import ResourceChangingScheduler, TrialScheduler
from ray.tune.schedulers.resource_changing_scheduler import DistributeResources

from study.protocol import RESULT_EPOCH, RESULT_EPOCHS, RESULT_ERROR, RESULT_FINAL, RESULT_STOPPED

# The unit a trial grows or shrinks by: one CPU (one more intra-op thread). GPUs are never added: a one-worker
# trial trains on one device.
CPU_STEP = {"CPU": 1}
# A trial grows only if its remaining training takes at least this many times its restart. Two intra-op threads
# made a quick-preset step 1.29x faster than one (benchmarks/train_step.py), saving about a fifth of the
# remaining time: about four restarts' worth of remaining training for the change to pay off.
RESTART_PAYBACK = 4.0
# Tune's timing keys of every result: seconds of this iteration (an epoch) and of all so far.
TIME_THIS_ITER = "time_this_iter_s"
TIME_TOTAL = "time_total_s"
ITERATIONS = "training_iteration"
# A trial's first iteration includes its start-up: the estimate needs one more to tell the two apart.
MIN_ITERATIONS_TO_ESTIMATE = 2


class SpareCPUs(DistributeResources):
    """Tune's even distribution of free CPUs among live trials, changing a trial only at a checkpointed
    result that does not end it, and never for a trial asked to stop (see the module docstring)."""

    def __init__(self, stop_requested: Callable[[str], bool] | None = None) -> None:
        super().__init__(add_bundles=False, increase_by=dict(CPU_STEP))
        self.stop_requested = stop_requested

    def __call__(self, tune_controller: Any, trial: Any, result: dict, scheduler: Any) -> Any:
        if not result.get(SHOULD_CHECKPOINT) or any(result.get(key) for key in (RESULT_FINAL, RESULT_STOPPED,
                                                                                 RESULT_ERROR)):
            return None
        if self.stop_requested is not None and self.stop_requested(trial.trial_id):
            return None
        resources = super().__call__(tune_controller, trial, result, scheduler)
        if resources is None or not _grows(trial, resources):
            return resources  # unchanged, or giving CPUs back: never held back
        # Growing: only onto a node that has the CPUs (asked of Ray only here), and only if it pays off.
        if _beyond_any_node(resources) or not worth_a_restart(result):
            return None
        return resources


def _beyond_any_node(resources: Any) -> bool:
    """Whether a trial's one bundle would need more CPUs than the largest live node has.

    Tune's ``DistributeResources`` counts the whole cluster's CPUs, but a bundle lives on one node: on a
    cluster of 1-CPU nodes a lone trial would be "given" 2 CPUs, paused, and wait forever for a node that has
    them (seen on the cluster tests' 2 x 1-CPU cluster: the study hung after a resume).
    """
    from study.tune.cluster import cluster_resources

    return resources.required_resources.get("CPU", 0.0) > cluster_resources().node_cpus + 1e-9


def _grows(trial: Any, resources: Any) -> bool:
    current = trial.placement_group_factory.required_resources.get("CPU", 0.0)
    return resources.required_resources.get("CPU", 0.0) > current


def worth_a_restart(result: dict) -> bool:
    """Whether the trial's remaining epochs, at the pace of its last one, take at least :data:`RESTART_PAYBACK`
    times the time it spent outside such epochs so far (its start-up and evaluations: what a restart repeats,
    at most)."""
    epoch_s = result.get(TIME_THIS_ITER)
    total_s, iterations = result.get(TIME_TOTAL), result.get(ITERATIONS)
    epoch, epochs = result.get(RESULT_EPOCH), result.get(RESULT_EPOCHS)
    if None in (epoch_s, total_s, iterations, epoch, epochs) or iterations < MIN_ITERATIONS_TO_ESTIMATE:
        return False
    restart_s = max(total_s - iterations * epoch_s, 0.0)
    return (epochs - epoch) * epoch_s >= RESTART_PAYBACK * restart_s


def resizing_scheduler(base: TrialScheduler | None,
                       stop_requested: Callable[[str], bool] | None = None) -> ResourceChangingScheduler:
    """``base`` (None: FIFO) wrapped in Tune's ``ResourceChangingScheduler`` with :class:`SpareCPUs`.

    Tune refuses it together with actor reuse: the Tuner must set ``reuse_actors=False``.
    """
    return ResourceChangingScheduler(base_scheduler=base, resources_allocation_function=SpareCPUs(stop_requested))
