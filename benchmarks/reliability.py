"""Reliability of studies on a cluster: every fault injected several times, and what survived it, counted.

    .venv/bin/python benchmarks/reliability.py                     # every fault, 3 tries each
    .venv/bin/python benchmarks/reliability.py --tries 5 --only node,driver
    .venv/bin/python benchmarks/reliability.py --out /tmp/reliability.json

The cluster is real and on this machine (:class:`study.tune.local_cluster.LocalCluster`): a head started with
``ray start --head --num-cpus=0`` and two worker nodes with 1 CPU each, every process recorded and stopped by
PID. Every study is ``python study/run.py --address <head> --storage <shared folder>`` on the cluster tests'
grid (four trials of the tiny model, 20 epochs each, a checkpoint per epoch; ``tests/study/cluster/faults.py``,
which also injects the faults). The same grid run once undisturbed is the reference for "final metrics equal".

Faults:

- ``node``: every process of a worker node killed by PID while a trial on it trains; a replacement node joins once the
  trial has resumed on the surviving node;
- ``driver``: the study's own process killed with ``kill -9`` while trials run, then ``--resume``;
- ``head``: every process of the head node killed by PID while a trial trains (the study must exit 3), then
  ``--resume`` against a fresh cluster with the same storage folder;
- ``no_cluster`` / ``silent``: ``--address`` where nothing listens / where a TCP server listens but no Ray;
- ``local_start``: a local Ray that cannot start (Unix socket paths too long).

Counted per fault: tries, studies completed (exit 0 and ``study.json`` finished; for the head, after the
``--resume``), trials lost (trials of the grid not completed at the end), trials re-run (trained again from
scratch, or a trial finished before the fault trained again), epochs repeated (trained twice after resuming
from a checkpoint older than the last report), final metrics equal to the undisturbed run, and for the faults
that must end the study: exit code 3 with one line naming the address, and the seconds until it.
Writes ``benchmarks/results/reliability-<date>.json`` and prints the README's table.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: import from the repository root, not from benchmarks/ itself
    _SCRIPT_DIR = str(Path(__file__).resolve().parent)
    sys.path[:] = [p for p in sys.path if str(Path(p or ".").resolve()) != _SCRIPT_DIR]
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse  # noqa: E402
import datetime  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import asdict, dataclass, field  # noqa: E402
from typing import Any  # noqa: E402

import pandas as pd  # noqa: E402

from benchmarks.common import TINY_DATA, load_average  # noqa: E402
from maae.io import write_json_atomic  # noqa: E402
from study.tune.local_cluster import LocalCluster, free_port  # noqa: E402
from tests.study.cluster import faults  # noqa: E402
from tests.study.helpers import CATEGORIES, REPO_ROOT, RUN, study_args  # noqa: E402

RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"
DEFAULT_TRIES = 3
EXIT_RAY_UNAVAILABLE = 3
COMMAND_TIMEOUT_S = 300
FAULTS = ("node", "driver", "head", "no_cluster", "silent", "local_start")
# Deeper than a Unix socket path may be once Ray adds its session and socket names (107 bytes).
LONG_DIR_NAME = "d" * 90
# The study's one-line error ends every run that Ray cannot serve.
ERROR_PREFIX = "error: "


@dataclass
class Try:
    """One injection of a fault and what came of it."""

    fault: str
    completed: bool
    exit_code: int
    lost: int | None = None
    rerun: int | None = None
    epochs_repeated: int | None = None
    equal: bool | None = None
    one_line: bool | None = None  # the faults that must end the study: exit 3, last line names the address
    seconds_to_exit: float | None = None
    notes: dict[str, Any] = field(default_factory=dict)


def say(message: str) -> None:
    print(f"[reliability] {message}", file=sys.stderr, flush=True)


class Bench:
    """The shared pieces: environment, data set, the multi-node cluster and the undisturbed reference."""

    def __init__(self, work: Path) -> None:
        from maae.features import FEATURE_CACHE_ENV
        from maae.synthetic import DATA_CACHE_ENV, generate_dataset
        from study.cli import study_environment

        self.work = work
        self.env = {**os.environ, FEATURE_CACHE_ENV: str(work / "features"), DATA_CACHE_ENV: str(work / "data-cache"),
                    **study_environment(local=True)}
        self.data = work / "data"
        generate_dataset(self.data, seed=0, **TINY_DATA)
        self.cluster: LocalCluster | None = None
        self.reference: pd.DataFrame | None = None
        self._count = 0

    def folder(self, name: str) -> Path:
        self._count += 1
        path = self.work / f"{self._count:02d}-{name}"
        path.mkdir(parents=True)
        return path

    def multinode(self) -> LocalCluster:
        """Head (0 CPUs) + two 1-CPU worker nodes; topped up after a node was killed."""
        if self.cluster is None:
            self.cluster = LocalCluster(self.work / "multinode", self.env)
            self.cluster.start_head(num_cpus=0)
        missing = 2 - len(self.cluster.workers())
        if missing > 0:
            self.cluster.add_workers(missing)
        return self.cluster

    def start(self, cluster: LocalCluster, folder: Path, name: str, *extra: str,
              grid: dict | None = None, env: dict[str, str] | None = None) -> tuple[faults.StudyRun, list[str]]:
        space = faults.write_space(folder, name, grid=grid)
        args = faults.cluster_args(space, self.data, folder / "results", cluster, folder / "storage", *extra)
        run = faults.start_study(args, {**self.env, **(env or {})}, folder / "results" / name,
                                 folder / "storage" / name / "tune", folder / f"{name}.log")
        return run, args

    def undisturbed(self) -> pd.DataFrame:
        if self.reference is None:
            folder = self.folder("undisturbed")
            run, _ = self.start(self.multinode(), folder, "undisturbed", grid=faults.REFERENCE_GRID)
            code = run.wait()
            if code != 0:
                raise RuntimeError(f"the undisturbed study failed ({code}): {run.log()[-2000:]}")
            self.reference = faults.read_trials(run.folder).set_index(faults.GRID_KEY)
        return self.reference

    def counted(self, out: faults.Outcome, **notes: Any) -> Try:
        reference = self.undisturbed()
        return Try(fault=out.fault, completed=out.completed(), exit_code=out.exit_code, lost=out.lost(),
                   rerun=len(out.rerun()), epochs_repeated=out.epochs_repeated(),
                   equal=out.equal_metrics(reference), notes=notes)

    def close(self) -> None:
        if self.cluster is not None:
            self.cluster.stop()


# -------------------------------------------------------------------------------------------- faults ---

def node(bench: Bench) -> Try:
    cluster = bench.multinode()
    bench.undisturbed()
    run, _ = bench.start(cluster, bench.folder("node"), "node")
    out = faults.node_dies(cluster, run, faults.EPOCHS)
    victim_nodes = out.nodes_of(out.victims[0])
    return bench.counted(out, resumed_on_survivor=victim_nodes[-1] in out.details["survivors"],
                         replacement_used=out.details["replacement"] in set(out.trials.node_id),
                         epochs_at_kill=out.details["epochs_at_kill"])


def driver(bench: Bench) -> Try:
    cluster = bench.multinode()
    bench.undisturbed()
    folder = bench.folder("driver")
    run, args = bench.start(cluster, folder, "driver", grid=faults.SHORT_GRID, env=faults.SAVE_STATE_EVERY_STEP)
    out = faults.driver_killed(run, [*args, "--resume"], bench.env, faults.EPOCHS, folder / "resumed.log")
    restarted = {victim: next((r["epoch"] for r in out.results[victim] if r["timestamp"] > out.fault_time), None)
                 for victim in out.victims}
    return bench.counted(out, finished_before_kill=len(out.finished_before), running_at_kill=len(out.victims),
                         first_epoch_after_resume=restarted)


def head(bench: Bench) -> Try:
    bench.undisturbed()
    folder = bench.folder("head")
    with LocalCluster(folder / "cluster", bench.env) as doomed:
        doomed.start_head(num_cpus=1, dashboard=False)
        run, args = bench.start(doomed, folder, "head", grid=faults.SHORT_GRID)
        run.wait_for(lambda t: (t.status == "completed").any() and (t.status == "running").any(),
                     "a completed and a running trial")
        died = faults.head_dies(doomed, run)
        address = doomed.address
    one_line = died.exit_code == EXIT_RAY_UNAVAILABLE and died.last_line.startswith(ERROR_PREFIX) and \
        address in died.last_line
    with LocalCluster(folder / "cluster2", bench.env) as fresh:
        fresh.start_head(num_cpus=1, dashboard=False)
        resume_args = [fresh.address if arg == address else arg for arg in args] + ["--resume"]
        resumed = faults.start_study(resume_args, bench.env, run.folder, run.experiment, folder / "resumed.log")
        code = resumed.wait()
        finished = list(died.trials.query("status == 'completed'").trial_id) if len(died.trials) else []
        out = faults.outcome_of(died.fault + ", then --resume on a fresh cluster", resumed, code, died.fault_time,
                                finished_before=finished)
    tried = bench.counted(out, first_exit_code=died.exit_code, first_last_line=died.last_line)
    tried.one_line, tried.seconds_to_exit = one_line, died.seconds_to_exit
    return tried


def _refused(bench: Bench, name: str, extra: Sequence[str], env: dict[str, str], expect: str) -> Try:
    folder = bench.folder(name)
    space = faults.write_space(folder, name, epochs=1)
    started = time.monotonic()
    out = subprocess.run([*RUN, *study_args(space, bench.data, folder / "results", *extra)], cwd=REPO_ROOT,
                         env=env, capture_output=True, text=True, timeout=COMMAND_TIMEOUT_S)
    seconds = time.monotonic() - started
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return Try(fault=name, completed=False, exit_code=out.returncode,
               one_line=out.returncode == EXIT_RAY_UNAVAILABLE and last.startswith(ERROR_PREFIX) and expect in last,
               seconds_to_exit=seconds, notes={"last_line": last})


def no_cluster(bench: Bench) -> Try:
    address = f"127.0.0.1:{free_port()}"
    return _refused(bench, "no_cluster", ["--address", address], bench.env, address)


def silent(bench: Bench) -> Try:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(8)
        address = f"127.0.0.1:{server.getsockname()[1]}"
        return _refused(bench, "silent", ["--address", address], bench.env, address)


def local_start(bench: Bench) -> Try:
    too_deep = bench.work / LONG_DIR_NAME
    too_deep.mkdir(exist_ok=True)
    return _refused(bench, "local_start", [], {**bench.env, "RAY_TMPDIR": str(too_deep)}, "local Ray")


RUNNERS: dict[str, Callable[[Bench], Try]] = {"node": node, "driver": driver, "head": head,
                                              "no_cluster": no_cluster, "silent": silent,
                                              "local_start": local_start}
LABELS = {
    "node": "worker node killed (every process, by PID) mid-trial; replacement node joins",
    "driver": "driver killed with `kill -9` mid-study, then `--resume`",
    "head": "head node killed (every process, by PID) mid-study; `--resume` on a fresh cluster",
    "no_cluster": "`--address` with nothing listening",
    "silent": "`--address` where a TCP server listens but no Ray GCS",
    "local_start": "local Ray that cannot start (socket path too long)",
}


# ------------------------------------------------------------------------------------------- report ---

def summarise(fault: str, tries: list[Try]) -> dict[str, Any]:
    """One row of the table."""
    def total(name: str) -> int | None:
        values = [getattr(t, name) for t in tries if getattr(t, name) is not None]
        return sum(values) if values else None

    equal = [t.equal for t in tries if t.equal is not None]
    one_line = [t.one_line for t in tries if t.one_line is not None]
    seconds = [t.seconds_to_exit for t in tries if t.seconds_to_exit is not None]
    return {"fault": fault, "label": LABELS[fault], "tries": len(tries),
            "studies_completed": sum(t.completed for t in tries), "trials_lost": total("lost"),
            "trials_rerun": total("rerun"), "epochs_repeated": total("epochs_repeated"),
            "metrics_equal": f"{sum(equal)}/{len(equal)}" if equal else None,
            "exit_3_one_line": f"{sum(one_line)}/{len(one_line)}" if one_line else None,
            "max_seconds_to_exit": round(max(seconds), 1) if seconds else None}


def markdown(rows: list[dict[str, Any]]) -> str:
    def cell(value: Any) -> str:
        return "n/a" if value is None else str(value)

    lines = ["| fault | tries | studies completed | trials lost | trials re-run | epochs repeated | final metrics "
             "equal to undisturbed | exit 3, one line naming the address | slowest exit (s) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lines.append(f"| {row['label']} | {row['tries']} | {row['studies_completed']}/{row['tries']} | "
                     f"{cell(row['trials_lost'])} | {cell(row['trials_rerun'])} | {cell(row['epochs_repeated'])} | "
                     f"{cell(row['metrics_equal'])} | {cell(row['exit_3_one_line'])} | "
                     f"{cell(row['max_seconds_to_exit'])} |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/reliability.py", description=__doc__.splitlines()[0])
    parser.add_argument("--tries", type=int, default=DEFAULT_TRIES, help="injections per fault (default 3)")
    parser.add_argument("--only", help=f"comma-separated faults out of {','.join(FAULTS)} (default: all)")
    parser.add_argument("--out", help="JSON file (default: benchmarks/results/reliability-<date>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder (logs, study folders)")
    args = parser.parse_args(argv)
    chosen = [name.strip() for name in args.only.split(",")] if args.only else list(FAULTS)
    unknown = [name for name in chosen if name not in RUNNERS]
    if unknown or args.tries < 1:
        parser.error(f"--only: unknown fault(s) {unknown}" if unknown else "--tries: expected >= 1")
    work = Path(tempfile.mkdtemp(prefix="maae-reliability-"))
    bench = Bench(work)
    started = time.monotonic()
    tries: dict[str, list[Try]] = {name: [] for name in chosen}
    try:
        for attempt in range(1, args.tries + 1):
            for name in chosen:  # faults alternate, so that the machine's load hits all of them alike
                say(f"{name}, try {attempt}/{args.tries} (load {load_average() or 0:.1f})")
                begun = time.monotonic()
                try:
                    outcome = RUNNERS[name](bench)
                except Exception as err:  # noqa: BLE001 - a try that crashes is counted, not fatal
                    outcome = Try(fault=name, completed=False, exit_code=-1, notes={"crash": repr(err)[:2000]})
                outcome.notes["seconds"] = round(time.monotonic() - begun, 1)
                tries[name].append(outcome)
                say(f"  -> {asdict(outcome)}")
    finally:
        bench.close()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    rows = [summarise(name, tries[name]) for name in chosen]
    table = markdown(rows)
    print(table)
    payload = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "seconds": round(time.monotonic() - started, 1), "grid": faults.GRID, "epochs": faults.EPOCHS,
               "categories": CATEGORIES, "rows": rows, "tries": {n: [asdict(t) for t in ts] for n, ts in tries.items()},
               "table": table, "work_dir": str(work) if args.keep else None}
    out = Path(args.out) if args.out else RESULTS_DIR / f"reliability-{datetime.date.today().isoformat()}.json"
    write_json_atomic(out, payload)
    say(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
