"""Leaked placement groups on a cluster, and two studies side by side on one machine.

- A placement group whose job has ended and that nothing uses holds its resources forever. A study started
  with ``--address`` lists such groups (through Ray's state API) with the exact command that removes them,
  or removes them itself with ``--clean-leaked``. A detached group that a live actor still uses is left
  alone. The test leaves its groups behind on purpose, from a short-lived driver, on the head node's own
  ``leak_probe`` resource (never a worker's CPU).
- Two studies started at the same time without ``--address`` each start a private local Ray and both finish;
  the one started with ``--dashboard`` has a dashboard, the other (one-worker trials) none.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from study.tune.local_cluster import LocalCluster
from tests.study.cluster.faults import LEAK_RESOURCE, cluster_args, write_space
from tests.study.helpers import REPO_ROOT, RUN, study_args

pytestmark = pytest.mark.cluster

COMMAND_TIMEOUT_S = 300
HOLDER = "leak-test-holder"
HOLDER_NAMESPACE = "leak-test"
# A driver that leaves placement groups behind: `leaked` (detached, nothing in it) and, with --used, `used`
# (detached, a detached actor lives in it); its job ends when it exits.
LEAVE_GROUPS = """
import sys, ray
from ray.util.placement_group import placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy
ray.init(address=sys.argv[1])
resource = sys.argv[2]
leaked = placement_group([{resource: 1}], lifetime="detached")
ray.get(leaked.ready())
print("leaked", leaked.id.hex())
if "--used" in sys.argv:
    used = placement_group([{resource: 1}], lifetime="detached")
    ray.get(used.ready())
    @ray.remote(num_cpus=0, resources={resource: 1})
    class Holder:
        def ping(self):
            return 1
    holder = Holder.options(name=sys.argv[3], namespace=sys.argv[4], lifetime="detached",
                            scheduling_strategy=PlacementGroupSchedulingStrategy(used)).remote()
    ray.get(holder.ping.remote())
    print("used", used.id.hex())
"""
# The end of the test: the holder actor goes, then its group.
REMOVE_HOLDER = """
import sys, ray
from ray._raylet import PlacementGroupID
from ray.util.placement_group import PlacementGroup
ray.init(address=sys.argv[1])
ray.kill(ray.get_actor(sys.argv[2], namespace=sys.argv[3]))
ray.util.remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(sys.argv[4])))
"""


def python(code: str, *args: str, env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run([sys.executable, "-c", code, *args], env=env, capture_output=True, text=True,
                         timeout=COMMAND_TIMEOUT_S, cwd=REPO_ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return dict(line.split(" ", 1) for line in out.stdout.splitlines() if " " in line)


def group_state(cluster: LocalCluster, group_id: str) -> str:
    from ray.util.state import get_placement_group

    return str(get_placement_group(group_id, address=cluster.address).state)


def start_up_only(space: Path, data: Path, results: Path, cluster: LocalCluster, env: dict[str, str],
                  *extra: str) -> subprocess.CompletedProcess:
    """A study whose workers fit no node (2 CPUs each on 1-CPU nodes): it stops right after its start-up
    checks on the cluster, of which the leak check is the first, with one line about the misfit (exit 2)."""
    out = subprocess.run([*RUN, *cluster_args(space, data, results, cluster, results / "storage",
                                              "--cpus-per-worker", "2", *extra)],
                         cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    assert out.returncode == 2 and "--cpus-per-worker" in out.stderr.splitlines()[-1], out.stderr[-3000:]
    return out


def test_leaked_placement_groups_are_listed_with_the_command_that_removes_them_or_cleaned(
        tmp_path: Path, tiny_data: Path, cluster_env: dict[str, str], two_workers: LocalCluster) -> None:
    cluster = two_workers
    space = write_space(tmp_path, "leaks", grid={"noise_intensity": [1.0]}, epochs=2)
    groups = python(LEAVE_GROUPS, cluster.address, LEAK_RESOURCE, HOLDER, HOLDER_NAMESPACE, "--used",
                    env=cluster_env)
    try:
        out = start_up_only(space, tiny_data, tmp_path / "r1", cluster, cluster_env)
        assert groups["leaked"] in out.stderr and groups["used"] not in out.stderr
        command = re.search(r"remove them with: (.+?)  \(or rerun", out.stderr)
        assert command, out.stderr[-3000:]
        assert shlex.split(command.group(1))[-2:] == ["--remove", groups["leaked"]]
        removed = subprocess.run(shlex.split(command.group(1)), cwd=REPO_ROOT, env=cluster_env,
                                 capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
        assert removed.returncode == 0 and groups["leaked"] in removed.stdout, removed.stderr[-3000:]
        assert group_state(cluster, groups["leaked"]) == "REMOVED"
        assert group_state(cluster, groups["used"]) == "CREATED"

        # --clean-leaked removes a new leftover itself
        again = python(LEAVE_GROUPS, cluster.address, LEAK_RESOURCE, env=cluster_env)["leaked"]
        out = start_up_only(space, tiny_data, tmp_path / "r2", cluster, cluster_env, "--clean-leaked")
        assert f"removed leaked placement group {again}" in out.stderr, out.stderr[-3000:]
        assert group_state(cluster, again) == "REMOVED" and group_state(cluster, groups["used"]) == "CREATED"
    finally:
        python(REMOVE_HOLDER, cluster.address, HOLDER, HOLDER_NAMESPACE, groups["used"], env=cluster_env)


def test_two_studies_on_one_machine_each_start_their_own_local_ray(
        tmp_path: Path, tiny_data: Path, child_env: dict[str, str]) -> None:
    # The first asks for the dashboard; the second, of one-worker trials, starts its Ray without one.
    space = write_space(tmp_path, "neighbour", grid={"noise_intensity": [1.0]}, epochs=2)
    flags = [["--dashboard"], []]
    studies = [subprocess.Popen([*RUN, *study_args(space, tiny_data, tmp_path / f"results{i}", "--num-cpus", "1",
                                                    *flags[i])],
                                cwd=REPO_ROOT, env=child_env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True) for i in range(2)]
    ready_lines = []
    for study in studies:
        _, stderr = study.communicate(timeout=COMMAND_TIMEOUT_S)
        assert study.returncode == 0, stderr[-3000:]
        ready = next(line for line in stderr.splitlines() if "Ray ready" in line)
        assert "local Ray (1 CPUs)" in ready, ready
        ready_lines.append(ready)
    assert re.search(r"dashboard http://127\.0\.0\.1:\d+", ready_lines[0]), ready_lines[0]
    assert "dashboard" not in ready_lines[1], ready_lines[1]
    for i in range(2):
        assert (tmp_path / f"results{i}" / "neighbour" / "trials.csv").read_text().count("completed") == 1
