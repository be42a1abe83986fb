"""Placement groups that outlived their job ("leaked"): found through Ray's public state API, and removed.

In ray 2.60 a driver killed at the moment a trial starts can leave that trial's worker placement group behind
on a long-lived cluster: the dying job's Train controller can still register the group after the job was
marked finished, and nothing owns it afterwards. Its CPUs (or GPUs) stay reserved with nothing running, and
later studies wait for them. A study started with ``--address`` therefore lists such groups first and prints
the command that removes them, or removes them itself with ``--clean-leaked``.

A group counts as leaked when all of these hold (``ray.util.state``: ``list_placement_groups``,
``list_jobs``, ``list_actors``):

- it is not removed (``CREATED``, ``PENDING`` or ``RESCHEDULING``);
- the job that created it has ended (``SUCCEEDED``, ``FAILED`` or ``STOPPED``, or no longer listed);
- no live actor runs in it (a detached group that a live detached actor uses is in use, not leaked).

As a command: ``python -m study.tune.leaks --address HOST:PORT`` lists them, ``--remove ID [ID ...]`` removes
the given ones, ``--remove-all`` all that are listed.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from maae.errors import EXIT_USAGE, ConfigError

# State API calls: seconds per call, and the most rows asked for (a long-lived cluster has many jobs).
STATE_TIMEOUT_S = 15
STATE_LIMIT = 10_000
LIVE_GROUP_STATES = ("CREATED", "PENDING", "RESCHEDULING")
ENDED_JOB_STATES = ("SUCCEEDED", "FAILED", "STOPPED")
ALIVE = "ALIVE"


@dataclass(frozen=True)
class LeakedGroup:
    """One placement group of an ended job with nothing running in it."""

    placement_group_id: str
    creator_job_id: str
    job_status: str  # the creator job's status, or "gone" when the job is no longer listed
    state: str
    detached: bool
    resources: tuple[tuple[str, float], ...]  # summed over the group's bundles

    def describe(self) -> str:
        held = ", ".join(f"{name} {amount:g}" for name, amount in self.resources) or "nothing"
        detached = ", detached" if self.detached else ""
        return (f"placement group {self.placement_group_id} ({self.state}{detached}; holds {held}) of job "
                f"{self.creator_job_id} ({self.job_status})")


def _status(value: object) -> str:
    return str(getattr(value, "value", value))


def find_leaked(api_url: str, timeout_s: int = STATE_TIMEOUT_S) -> list[LeakedGroup]:
    """The leaked placement groups of the cluster whose dashboard (the state API's server) is at ``api_url``
    (``http://host:port``; given directly, because the state API would otherwise look it up in the GCS and
    retry for 40 s on a cluster without a dashboard)."""
    from ray.util.state import list_actors, list_jobs, list_placement_groups

    options = dict(address=api_url, timeout=timeout_s, limit=STATE_LIMIT, raise_on_missing_output=False)
    groups = list_placement_groups(detail=True, **options)
    live = [g for g in groups if _status(g.state) in LIVE_GROUP_STATES]
    if not live:
        return []
    jobs = {job.job_id: _status(job.status) for job in list_jobs(**options) if job.job_id}
    used = {actor.placement_group_id for actor in list_actors(filters=[("state", "=", ALIVE)], detail=True,
                                                                **options) if actor.placement_group_id}
    leaked = []
    for group in live:
        status = jobs.get(group.creator_job_id, "gone")
        if status not in (*ENDED_JOB_STATES, "gone") or group.placement_group_id in used:
            continue
        totals: dict[str, float] = {}
        for bundle in group.bundles or []:
            for name, amount in (bundle.get("unit_resources") or {}).items():
                totals[name] = totals.get(name, 0.0) + float(amount)
        leaked.append(LeakedGroup(group.placement_group_id, group.creator_job_id, status, _status(group.state),
                                  bool(group.is_detached), tuple(sorted(totals.items()))))
    return sorted(leaked, key=lambda g: g.placement_group_id)


def removal_command(address: str, group_ids: Sequence[str]) -> str:
    """The exact shell command that removes ``group_ids`` from the cluster at ``address``."""
    words = [sys.executable, "-m", "study.tune.leaks", "--address", address, "--remove", *group_ids]
    return " ".join(shlex.quote(word) for word in words)


def remove(group_ids: Sequence[str]) -> None:
    """Remove placement groups by id (Ray must be connected to their cluster)."""
    import ray
    from ray._raylet import PlacementGroupID
    from ray.util.placement_group import PlacementGroup

    for group_id in group_ids:
        ray.util.remove_placement_group(PlacementGroup(PlacementGroupID.from_hex(group_id)))


def check_at_start(address: str, api_url: str | None, *, clean: bool,
                   say: Callable[[str], None]) -> list[LeakedGroup]:
    """What a study on a cluster does first: list leaked groups with the command that removes them, or
    remove them (``clean``). ``address`` is the one the user gave (for the command), ``api_url`` the
    connected cluster's dashboard (None: it has none). Never fails the study: a state API that does not
    answer is one warning line."""
    if not api_url:
        say("warning: the cluster runs no dashboard, which Ray's state API needs: leaked placement groups "
            "were not checked")
        return []
    try:
        leaked = find_leaked(api_url)
    except Exception as err:  # noqa: BLE001 - the check is advice; the study goes on without it
        say(f"warning: could not list the cluster's placement groups ({type(err).__name__}: "
            f"{' '.join(str(err).split())[:160]}); leaked groups were not checked")
        return []
    if not leaked:
        return []
    if clean:
        remove([g.placement_group_id for g in leaked])
        for group in leaked:
            say(f"removed leaked {group.describe()}")
        return leaked
    say(f"{len(leaked)} leaked placement group(s) of ended jobs hold resources nothing uses:")
    for group in leaked:
        say(f"  {group.describe()}")
    say(f"remove them with: {removal_command(address, [g.placement_group_id for g in leaked])}  (or rerun the "
        "study with --clean-leaked)")
    return leaked


# ---------------------------------------------------------------------------------------- command ---

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m study.tune.leaks",
        description="List (or remove) placement groups of ended Ray jobs that nothing uses.")
    parser.add_argument("--address", default="auto", help="the cluster: 'auto' or host:port of the head's GCS")
    action = parser.add_mutually_exclusive_group()
    action.add_argument("--remove", nargs="+", metavar="ID", help="remove these leaked placement groups")
    action.add_argument("--remove-all", action="store_true", help="remove every leaked placement group listed")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from study.tune import cluster
    from study.tune.connect import EXIT_RAY_UNAVAILABLE, RayUnavailableError

    args = build_parser().parse_args(argv)
    try:
        address = cluster.resolve_address(args.address)
        cluster.join(address, {})
        api_url = cluster.dashboard_url()
        if not api_url:
            raise RayUnavailableError(f"--address {address}: the cluster runs no dashboard, which Ray's state "
                                      "API needs to list placement groups")
        leaked = {g.placement_group_id: g for g in find_leaked(api_url)}
        chosen = list(leaked) if args.remove_all else list(args.remove or [])
        unknown = [group_id for group_id in chosen if group_id not in leaked]
        if unknown:
            raise ConfigError(f"--remove {' '.join(unknown)}: not a leaked placement group of {address} "
                              f"(leaked now: {', '.join(leaked) or 'none'})")
        if chosen:
            remove(chosen)
            for group_id in chosen:
                print(f"removed {leaked[group_id].describe()}")
        elif leaked:
            for group in leaked.values():
                print(group.describe())
            print(f"remove with: {removal_command(args.address, list(leaked))}")
        else:
            print(f"no leaked placement groups on {address}")
        return 0
    except RayUnavailableError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_RAY_UNAVAILABLE
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_USAGE
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
