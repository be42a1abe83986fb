"""Bounded waits on Ray: a study that cannot reach or start Ray says so in one line, with exit code 3.

Three places where a study used to wait on Ray without end:

- **an address where something listens but no GCS answers** (a wrong port, a head that is still starting or
  hung on a loaded machine): ``ray.init`` retried the GCS for minutes ("Failed to connect to GCS within 60
  seconds", still running 5 minutes later). :func:`check_gcs` asks for a gRPC handshake on the address
  first, within :data:`GCS_HANDSHAKE_TIMEOUT_S`;
- **``ray.init`` itself** (joining, or starting a local Ray): it runs under :func:`deadline`. A connection
  that hangs inside Ray's C++ core cannot be cancelled from Python, so when the deadline passes the study
  prints its line, stops the processes it started (by PID) and exits with :data:`EXIT_RAY_UNAVAILABLE`;
  a ``ray.init`` that raises becomes a :class:`RayUnavailableError` (same line, same exit code);
- **the head node dying during the study**: Ray's core worker retries the GCS for 60 s before it ends the
  process, and Tune's loop may wait longer. :class:`GcsWatch` probes the GCS port every
  :data:`WATCH_INTERVAL_S`; after :data:`HEAD_LOST_AFTER_S` without an answer it exits the same way.

Nothing is lost by exiting hard: the results tables are replaced atomically on every Tune event, and
``--resume`` continues the study once the cluster is back.
"""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from study.tune import processes

# Exit code of a study that cannot reach or start Ray (2 is bad input, 130 an interruption).
EXIT_RAY_UNAVAILABLE = 3
# Defaults of --connect-timeout: how long ray.init may take to join a cluster (after its GCS answered the
# handshake, a second or two), and to start a local Ray (5-6 s on an idle 2-core machine; two local Rays
# starting at once on a loaded one took over 25 s).
JOIN_TIMEOUT_S = 25.0
LOCAL_START_TIMEOUT_S = 60.0
# A TCP connection to the GCS port, and the gRPC handshake after it.
TCP_PROBE_TIMEOUT_S = 3.0
GCS_HANDSHAKE_TIMEOUT_S = 10.0
# The watch of a running study's GCS: one probe per interval; the head counts as gone after this long.
WATCH_INTERVAL_S = 1.0
HEAD_LOST_AFTER_S = 5.0


class RayUnavailableError(RuntimeError):
    """Ray cannot be reached or started (not a problem of the study's input: exit code 3, not 2)."""


def say_and_exit(line: str, exit_code: int = EXIT_RAY_UNAVAILABLE) -> None:
    """Print ``error: <line>``, stop the processes this one started (each by PID), and exit at once.

    Used where the main thread may be stuck inside Ray: ``os._exit`` does not wait for it.
    """
    print(f"error: {line}", file=sys.stderr, flush=True)
    try:
        processes.kill_tree(os.getpid())
    finally:
        os._exit(exit_code)


def first_line(error: BaseException) -> str:
    """An exception as one short line (Ray's messages span many lines)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else "(no message)"
    return f"{type(error).__name__}: {text[:200]}"


# ----------------------------------------------------------------------------------------- probes ---

def split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


def tcp_answers(address: str, timeout_s: float = TCP_PROBE_TIMEOUT_S) -> OSError | None:
    """None when a TCP connection to ``host:port`` succeeds, else the error."""
    try:
        with socket.create_connection(split_address(address), timeout=timeout_s):
            return None
    except OSError as err:
        return err


def check_gcs(address: str, flag: str, timeout_s: float = GCS_HANDSHAKE_TIMEOUT_S) -> None:
    """Raise :class:`RayUnavailableError` unless a gRPC server (Ray's GCS) answers at ``address``.

    ``flag`` is how the address was given (``--address 10.0.0.1:6379``), for the message.
    """
    refused = tcp_answers(address)
    if refused is not None:
        raise RayUnavailableError(f"{flag}: no Ray cluster answers at {address} "
                                  f"({refused.strerror or refused}); expected the head node's host:port from "
                                  "'ray start --head'")
    import grpc

    channel = grpc.insecure_channel(address)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise RayUnavailableError(f"{flag}: something listens at {address} but no Ray GCS answers there (no "
                                  f"gRPC handshake within {timeout_s:g} s); expected the head node's GCS port "
                                  "(6379 by default), or wait until the head has started") from None
    finally:
        channel.close()


# --------------------------------------------------------------------------------------- deadline ---

@contextmanager
def deadline(seconds: float, describe: str) -> Iterator[None]:
    """Run the body (a ``ray.init``) within ``seconds``; past that, one line and exit code 3.

    ``describe`` names what is being reached ("the Ray cluster at 10.0.0.1:6379", "a local Ray").
    """
    done = threading.Event()
    lock = threading.Lock()

    def give_up() -> None:
        with lock:
            if done.is_set():
                return
            say_and_exit(f"{describe}: Ray did not answer within {seconds:g} s (--connect-timeout); "
                         "nothing was started")

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        with lock:
            done.set()
        timer.cancel()


# ------------------------------------------------------------------------------------------ watch ---

def _ray_connected() -> bool:
    import ray

    return ray.is_initialized()


class GcsWatch:
    """Watches a running study's GCS; when it stops answering, one line and exit code 3 (see the module)."""

    def __init__(self, address: str, describe: str, *, interval_s: float = WATCH_INTERVAL_S,
                 lost_after_s: float = HEAD_LOST_AFTER_S) -> None:
        self.address = address
        self.describe = describe
        self.interval_s = interval_s
        self.lost_after_s = lost_after_s
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="gcs-watch", daemon=True)

    def start(self) -> GcsWatch:
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop watching (before Ray is shut down on purpose, which also closes the GCS port)."""
        self._stopped.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=self.interval_s + TCP_PROBE_TIMEOUT_S)

    def _loop(self) -> None:
        failing_since: float | None = None
        while not self._stopped.wait(self.interval_s):
            if not _ray_connected():  # Ray was shut down on purpose (by a caller that did not stop us)
                return
            error = tcp_answers(self.address, min(TCP_PROBE_TIMEOUT_S, self.lost_after_s))
            if error is None:
                failing_since = None
                continue
            now = time.monotonic()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since >= self.lost_after_s and not self._stopped.is_set() and _ray_connected():
                self._lost(error)
                return

    def _lost(self, error: OSError) -> None:
        say_and_exit(f"{self.describe}: Ray stopped answering at {self.address} during the study "
                     f"({error.strerror or error} for {self.lost_after_s:g} s: the head node is gone); results "
                     "so far are kept, continue with --resume once the cluster is back")
