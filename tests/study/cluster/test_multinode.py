"""Studies on a real multi-node cluster: trials spread over the worker nodes, survive a node's death, and
survive their driver's death.

The cluster (``conftest.py``): a head with 0 CPUs and two worker nodes with 1 CPU each, started with
``ray start``. The studies use a shared ``--storage`` folder, where the worker nodes write their trials'
checkpoints. Every faulty study is compared with the same grid run undisturbed on the same cluster
(``undisturbed``): same seeds, so the same final metrics to the last digit.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from study.protocol import METRIC_NAMES
from study.tune.local_cluster import LocalCluster
from tests.study.cluster import faults
from tests.study.cluster.faults import EPOCHS, REFERENCE_GRID, SHORT_GRID, cluster_args, write_space

pytestmark = pytest.mark.cluster


def start(name: str, tmp_path: Path, tiny_data: Path, cluster: LocalCluster, env: dict[str, str],
          grid: dict | None = None) -> tuple[faults.StudyRun, list[str]]:
    space = write_space(tmp_path, name, grid=grid)
    args = cluster_args(space, tiny_data, tmp_path / "results", cluster, tmp_path / "storage")
    run = faults.start_study(args, env, tmp_path / "results" / name, tmp_path / "storage" / name / "tune",
                             tmp_path / f"{name}.log")
    return run, args


def test_trials_run_on_both_worker_nodes_and_record_their_node(
        undisturbed: tuple[Path, pd.DataFrame], multinode: LocalCluster) -> None:
    folder, trials = undisturbed
    assert sorted(trials.index) == REFERENCE_GRID["noise_intensity"]
    assert set(trials.status) == {"completed"} and set(trials.epochs_done) == {EPOCHS}
    worker_ids = {node.node_id for node in multinode.nodes if not node.head}
    assert set(trials.node_id) <= worker_ids  # never the head: it has no CPU for trials
    assert len(set(trials.node_id)) == 2  # both worker nodes trained
    for name in METRIC_NAMES:
        assert trials[name].between(0.0, 1.0).all(), name
    # the worker nodes wrote the checkpoints to the shared storage folder, one trial folder each
    experiment = folder.parents[1] / "storage" / "undisturbed" / "tune"
    assert len([p for p in experiment.iterdir() if p.is_dir() and list(p.glob("checkpoint_*"))]) == len(trials)


def test_a_worker_node_killed_mid_trial_resumes_on_the_survivor_and_a_replacement_takes_later_trials(
        tmp_path: Path, tiny_data: Path, cluster_env: dict[str, str], two_workers: LocalCluster,
        undisturbed: tuple[Path, pd.DataFrame]) -> None:
    _, reference = undisturbed
    run, _ = start("nodedeath", tmp_path, tiny_data, two_workers, cluster_env)
    out = faults.node_dies(two_workers, run, EPOCHS)
    assert out.completed(), run.log()[-3000:]
    assert out.lost() == 0 and out.rerun() == []  # nothing lost, nothing run again
    victim = out.victims[0]
    nodes = out.nodes_of(victim)
    assert nodes[0] == out.details["victim_node"] and nodes[-1] in out.details["survivors"], nodes
    # it resumed from its last checkpoint: the first epoch on the survivor follows the last one reported
    # before the kill (or repeats it, when the node died before that epoch's checkpoint was saved)
    before = [r["epoch"] for r in out.results[victim] if r.get("node_id") == nodes[0]]
    after = [r["epoch"] for r in out.results[victim] if r.get("node_id") == nodes[-1]]
    assert before[-1] >= out.details["epochs_at_kill"] and before[-1] <= after[0] <= before[-1] + 1
    assert after[-1] == EPOCHS
    # the replacement node took the trials that started after it joined
    assert out.details["replacement"] in set(out.trials.node_id)
    # and every trial, the resumed one too, ends with the undisturbed run's metrics
    assert out.equal_metrics(reference)


def test_a_driver_killed_with_kill_9_continues_with_resume(
        tmp_path: Path, tiny_data: Path, cluster_env: dict[str, str], two_workers: LocalCluster,
        undisturbed: tuple[Path, pd.DataFrame]) -> None:
    _, reference = undisturbed
    run, args = start("driverdeath", tmp_path, tiny_data, two_workers, {**cluster_env, **faults.SAVE_STATE_EVERY_STEP},
                      grid=SHORT_GRID)
    out = faults.driver_killed(run, [*args, "--resume"], cluster_env, EPOCHS, tmp_path / "resumed.log")
    assert out.details["killed_exit_code"] == -9
    assert out.completed(), out.last_line
    assert out.lost() == 0
    assert out.finished_before and out.rerun() == []  # finished trials kept, none run again from scratch
    for victim in out.victims:  # the running ones restarted from their checkpoints, not from epoch 1
        resumed = [r["epoch"] for r in out.results[victim] if r["timestamp"] > out.fault_time]
        assert resumed and resumed[0] > 1 and resumed[-1] == EPOCHS
    assert out.equal_metrics(reference)
