"""Processes by PID: find what a process started, and stop exactly those processes.

A Ray node is a tree of processes (``ray start --block`` -> GCS, raylet, dashboard, agents -> workers). The
study and its tests end only processes they started, each by its own PID, never by name: :func:`descendants`
lists a process's tree from ``/proc`` (Linux), and a :class:`ProcessRecord` remembers a process's start time
so that a PID the kernel has since given to another process is never signalled.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

PROC = Path("/proc")
# Fields of /proc/<pid>/stat after the command name: state is the first, ppid the second, starttime the 20th.
_STAT_PPID = 1
_STAT_START_TIME = 19
STOP_POLL_S = 0.1


@dataclass(frozen=True)
class ProcessRecord:
    """One process we started (or that a process we started started): PID, start time and command."""

    pid: int
    start_time: int  # clock ticks after boot (/proc/<pid>/stat field 22): tells a reused PID apart
    command: str

    def alive(self) -> bool:
        """Whether this very process still runs (a zombie or a reused PID does not count)."""
        stat = _stat(self.pid)
        return stat is not None and stat[0] != "Z" and int(stat[_STAT_START_TIME]) == self.start_time

    def signal(self, signum: int) -> bool:
        """Send ``signum`` if this very process still runs; returns whether it was sent."""
        if not self.alive():
            return False
        try:
            os.kill(self.pid, signum)
        except ProcessLookupError:
            return False
        return True


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (which may hold spaces), or None."""
    try:
        text = (PROC / str(pid) / "stat").read_text()
    except OSError:
        return None
    return text[text.rfind(")") + 2:].split()


def _command(pid: int) -> str:
    try:
        raw = (PROC / str(pid) / "cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()


def record(pid: int) -> ProcessRecord | None:
    """The record of a running process, or None when it is gone."""
    stat = _stat(pid)
    if stat is None:
        return None
    return ProcessRecord(pid, int(stat[_STAT_START_TIME]), _command(pid))


def descendants(pid: int) -> list[ProcessRecord]:
    """Every process below ``pid`` in the process tree (children, their children, ...)."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        stat = _stat(int(entry.name))
        if stat is not None:
            children.setdefault(int(stat[_STAT_PPID]), []).append(int(entry.name))
    found: list[ProcessRecord] = []
    todo = list(children.get(pid, []))
    while todo:
        child = todo.pop()
        found_record = record(child)
        if found_record is not None:
            found.append(found_record)
        todo.extend(children.get(child, []))
    return found


def wait_gone(records: Iterable[ProcessRecord], timeout_s: float) -> list[ProcessRecord]:
    """Wait until every process has ended; returns those still running after ``timeout_s``."""
    pending = list(records)
    deadline = time.monotonic() + timeout_s
    while pending and time.monotonic() < deadline:
        pending = [r for r in pending if r.alive()]
        if pending:
            time.sleep(STOP_POLL_S)
    return [r for r in pending if r.alive()]


def stop(records: Iterable[ProcessRecord], grace_s: float) -> list[ProcessRecord]:
    """SIGTERM each process, then SIGKILL those still running after ``grace_s``; returns the killed ones."""
    records = list(records)
    for each in records:
        each.signal(signal.SIGTERM)
    stubborn = wait_gone(records, grace_s)
    for each in stubborn:
        each.signal(signal.SIGKILL)
    wait_gone(stubborn, grace_s)
    return stubborn


def kill_tree(pid: int) -> None:
    """SIGKILL every descendant of ``pid`` (each by its PID): what a process does before it exits hard."""
    for each in descendants(pid):
        each.signal(signal.SIGKILL)
