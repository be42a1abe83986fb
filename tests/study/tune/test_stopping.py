"""A trial asked to stop (ASHA's verdict, through the stop registry) ends itself after its epoch and frees its
workers' resources, against a real local Ray."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from study.tune.stopping import registry_name, request_stop
from tests.study.helpers import REPO_ROOT, RUN, SESSION_CPUS, read_tables, study_args

KILL_WAIT_S = 240


def test_a_trial_asked_to_stop_ends_itself_and_frees_its_workers(
        tmp_path: Path, tiny_data: Path, ray_session: str, child_env: dict[str, str],
        space_file: Callable[..., Path]) -> None:
    import ray

    space = space_file(tmp_path, "stop", fixed={"epochs": 200}, eval_every="final")
    args = study_args(space, tiny_data, tmp_path / "results", "--address", ray_session)
    folder = tmp_path / "results" / "stop"
    # Placement groups that hold resources already (a driver killed by an earlier test can leave one behind:
    # Ray 2.60 may register a dying job's last placement group after the job was marked finished).
    held_before = created_placement_groups()
    log = (tmp_path / "stop.log").open("w")
    driver = subprocess.Popen([*RUN, *args], cwd=REPO_ROOT, env=child_env, stdout=log, stderr=log)
    try:
        deadline = time.monotonic() + KILL_WAIT_S
        trial_id = None
        while time.monotonic() < deadline and driver.poll() is None and trial_id is None:
            time.sleep(0.5)
            if (folder / "history.csv").is_file():
                history = pd.read_csv(folder / "history.csv", dtype={"trial_id": str})
                if len(history) >= 2:
                    trial_id = history.trial_id.iloc[0]
        assert trial_id is not None, (tmp_path / "stop.log").read_text()[-3000:]
        request_stop(registry_name(str(folder.resolve())), trial_id)
        assert driver.wait(timeout=KILL_WAIT_S) == 0, (tmp_path / "stop.log").read_text()[-3000:]
    finally:
        if driver.poll() is None:
            driver.kill()
        log.close()
    study, trials, _, _ = read_tables(folder)
    assert study["status"] == "finished"
    row = trials.iloc[0]
    assert row.status == "stopped" and 2 <= row.epochs_done < 200
    deadline = time.monotonic() + 30
    while created_placement_groups().keys() - held_before.keys() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not created_placement_groups().keys() - held_before.keys()  # the stopped trial's workers are gone
    held_cpus = sum(bundle.get("CPU", 0) for pg in held_before.values() for bundle in pg)
    assert ray.available_resources().get("CPU", 0) == SESSION_CPUS - held_cpus


def created_placement_groups() -> dict[str, list[dict[str, float]]]:
    """The cluster's placement groups that hold resources now: id -> bundles."""
    import ray

    return {pg_id: list(pg["bundles"].values()) for pg_id, pg in ray.util.placement_group_table().items()
            if pg["state"] == "CREATED"}
