"""The start barrier: every evaluator of an ABTest (each model, each shard) prepares, then waits here until all its
peers are ready, so that their timed loops start together. Torch-free.

It needs nothing but the folder the evaluators already share (the ABTest's results folder in a cluster, the staging
folder of ``abtest run``): no API rights, no service. In ``<results>/.start/``:

- ``<peer>.ready``: a peer is waiting. Written atomically and rewritten every ``HEARTBEAT_SECONDS`` while it waits;
  a marker older than ``STALE_SECONDS`` — judged against the waiter's own marker, so both times come from the
  filesystem's clock, never from two nodes' clocks — belongs to an attempt that is gone (a pod killed while waiting)
  and releases nobody. A waiter that is stopped (SIGTERM: an eviction, a deleted Job) removes its marker at once.
- ``go``: written (atomically, once: the first to see every peer ready links it) at the release. Every waiter leaves
  when it sees every peer ready or ``go``; one that arrives after the release (a pod restarted mid-run) finds ``go``
  and starts at once: its peers are past waiting, and the analysis' concurrency block tells that its loop ran apart.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from abtest_api.errors import UserError

FOLDER = ".start"
HEARTBEAT_SECONDS = 1.0
STALE_SECONDS = 5.0  # five missed heartbeats: longer than any pause of a live waiter, short next to a pod's restart
POLL_SECONDS = 0.02  # the release skew is at most about this, plus what the filesystem takes to show a file


def peer_id(model: str, shard: tuple[int, int] | None = None) -> str:
    """``vit``, or ``vit#1/3`` for part 1 (0-based) of 3."""
    return model if shard is None else f"{model}#{shard[0]}/{shard[1]}"


def peer_ids(models: list[str], shards: int | None) -> list[str]:
    """Every evaluator of an ABTest: each model, or each part of each model when they are sharded."""
    if not shards:
        return list(models)
    return [peer_id(m, (i, shards)) for m in models for i in range(shards)]


def marker_name(peer: str) -> str:
    return peer.replace("#", ".").replace("/", "-of-") + ".ready"


@dataclass(frozen=True)
class Release:
    """What the barrier measured: when this evaluator arrived and left (epoch seconds), and whom it waited for."""

    peers: tuple[str, ...]
    ready_at: float
    released_at: float
    timeout_seconds: float
    by_go: bool  # released by another waiter's ``go`` (it saw every peer first), or arrived after the release

    @property
    def waited_seconds(self) -> float:
        return self.released_at - self.ready_at

    def as_json(self) -> dict:
        return {"peers": list(self.peers), "waited_seconds": self.waited_seconds, "released_at": self.released_at,
                "timeout_seconds": self.timeout_seconds}  # fmt: skip


class StartBarrier:
    def __init__(self, results: Path, me: str, peers: list[str], timeout: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep):  # fmt: skip
        if me not in peers:
            raise UserError(f"start barrier: {me} is not one of its peers {', '.join(peers)}; list every model in --start-with")
        self.folder, self.me, self.peers, self.timeout = Path(results) / FOLDER, me, tuple(peers), timeout
        self.clock, self.sleep = clock, sleep
        self.poll = max(POLL_SECONDS, 0.001 * len(peers))  # a file open per peer per poll: fewer polls for many peers
        self.mine = self.folder / marker_name(me)
        self.attempt = uuid.uuid4().hex  # tells this attempt's marker from an earlier one's, for a person reading it

    def wait(self) -> Release:
        """Announce this evaluator ready and wait until every peer is, or ``go`` says they were; UserError (naming the
        peers that never became ready) after ``timeout`` seconds."""
        ready_at, arrived = time.time(), self.clock()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise UserError(f"start barrier: cannot create {self.folder}: {err.strerror}; check the results volume") from None
        with self._marker_while_waiting():
            beat, missing = arrived, list(self.peers)
            while True:
                if self._released():
                    return Release(self.peers, ready_at, time.time(), self.timeout, by_go=True)
                missing = self._not_ready()
                if not missing:
                    self._link_go()
                    return Release(self.peers, ready_at, time.time(), self.timeout, by_go=False)
                now = self.clock()
                if now - arrived >= self.timeout:
                    raise UserError(
                        f"start barrier: {', '.join(missing)} not ready after {self.timeout:g} s (spec.startTimeoutSeconds, "
                        "--start-timeout): their pods may be unschedulable or still loading; see `kubectl describe abtest`"
                    )
                if now - beat >= HEARTBEAT_SECONDS:
                    self._write_marker()
                    beat = now
                self.sleep(self.poll)

    def _not_ready(self) -> list[str]:
        """The peers without a fresh marker (this one's own was rewritten within a heartbeat: its time is "now")."""
        now = _mtime(self.mine)
        if now is None:  # someone removed it: write it again
            self._write_marker()
            now = _mtime(self.mine) or 0.0
        return [p for p in self.peers if (t := _mtime(self.folder / marker_name(p))) is None or now - t > STALE_SECONDS]

    def _released(self) -> bool:
        return _mtime(self.folder / "go") is not None

    def _write_marker(self) -> None:
        body = {"peer": self.me, "attempt": self.attempt, "host": socket.gethostname(), "pid": os.getpid(), "at": time.time()}
        _write_atomically(self.mine, json.dumps(body).encode())

    def _link_go(self) -> None:
        tmp = self.folder / f".go.{self.attempt}"
        tmp.write_text(json.dumps({"by": self.me, "peers": list(self.peers), "at": time.time()}))
        try:
            os.link(tmp, self.folder / "go")  # atomic, and refused when another waiter linked it first
        except FileExistsError:
            pass
        finally:
            tmp.unlink(missing_ok=True)

    @contextmanager
    def _marker_while_waiting(self):
        """This evaluator's marker exists only while it waits: removed on leaving, on an error and on SIGTERM."""
        previous = None
        if threading.current_thread() is threading.main_thread():
            previous = signal.signal(signal.SIGTERM, _exit_on_sigterm)
        try:
            self._write_marker()
            yield
        finally:
            with suppress(OSError):
                self.mine.unlink()
            if previous is not None:
                signal.signal(signal.SIGTERM, previous)


def _exit_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _mtime(path: Path) -> float | None:
    """The file's modification time, opened first: on NFS an open revalidates what a bare stat may serve from cache."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        return os.fstat(fd).st_mtime
    finally:
        os.close(fd)


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)
