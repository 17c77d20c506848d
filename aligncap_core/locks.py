"""Locks on stage outputs: one producer at a time per output, on one machine or across many.

    with hold(run_dir / ".lock", "teacher run runs/t"):      # a local folder
        ...
    with hold("s3://bucket/store/.locks/teacher/3f2a.lock", "teacher 3f2a"):   # a shared store
        ...

A lock is a small JSON object, a local file or an S3 object, created only where none exists
(`storage.create_exclusive`: a hard link locally, `If-None-Match: *` on S3), so two producers
cannot both hold it. It names its holder (host, pid, Prefect flow run, what it produces, since
when) and carries a lease: a thread renews it every `lease_s / 3` while the holder lives, so the
lock of a killed holder lapses after `lease_s`, and at once on the holder's own host, where a
dead pid is seen directly. A lapsed lock is broken (deleted only if unchanged since it was read)
and taken over.

A second producer waits, polling, for up to `wait_s` (`ALIGNCAP_LOCK_WAIT_S`, default one hour)
and then fails with `LockHeldError`, which names the holder and what to do. Within one process
the lock is reentrant (a flow holding a stage's lock may call a task that takes it again).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from aligncap_core.data import storage
from aligncap_core.errors import StorageError

log = logging.getLogger(__name__)

DEFAULT_WAIT_S = 3600.0
DEFAULT_LEASE_S = 120.0
CLOCK_SKEW_S = 5.0  # a lease is only broken this long after it expired (clocks of two hosts)


class LockHeldError(StorageError):
    """Another producer holds the lock of an output (and did not release it in time)."""


class LockLostError(StorageError):
    """This producer's lock was broken by another one while it worked (its lease lapsed)."""


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    try:
        return float(value) if value else default
    except ValueError as e:
        from aligncap_core.errors import ConfigError

        raise ConfigError(f"{name}={value!r} is not a number of seconds") from e


def describe(info: dict[str, Any]) -> str:
    """`pid 4242 on gpu-7 (Prefect flow run 1f2e..., since 2026-12-06T07:40:31+00:00)`."""
    parts = [f"pid {info.get('pid')} on {info.get('host')}"]
    extra = [f"Prefect flow run {info['flow_run']}"] if info.get("flow_run") else []
    extra.append(f"since {info.get('since')}")
    return f"{parts[0]} ({', '.join(extra)})"


def _pid_alive(pid: Any) -> bool:
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, TypeError):
        return True  # someone else's process, or unparseable: assume alive, let the lease decide
    return True


def _stale(info: dict[str, Any], now: float) -> str | None:
    """Why the lock described by `info` may be broken, or None while its holder may live."""
    if info.get("host") == socket.gethostname() and not _pid_alive(info.get("pid")):
        return "its process is gone"
    expires = info.get("expires")
    if not isinstance(expires, int | float) or now > expires + CLOCK_SKEW_S:
        return "its lease lapsed"
    return None


@dataclass
class _Held:
    uri: str
    info: dict[str, Any]
    tag: str
    lease_s: float
    depth: int = 1
    lost: str | None = None
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def renew_forever(self) -> None:
        while not self.stop.wait(self.lease_s / 3):
            info = {**self.info, "expires": time.time() + self.lease_s}
            data = json.dumps(info).encode()
            try:
                if not storage.replace_if(self.uri, data, self.tag):
                    self.lost = f"{self.uri} was changed or removed by someone else"
                    log.error("lock %s lost: %s; another producer may be writing the same output",
                              self.uri, self.lost)
                    return
                now = storage.read_tagged(self.uri)
                if now is not None:
                    self.tag, self.info = now[1], info
            except StorageError as e:  # a flaky store: try again next period, the lease has slack
                log.warning("lock %s: renewing failed (%s); retrying", self.uri, e)


_HELD: dict[str, _Held] = {}
_HELD_LOCK = threading.Lock()


def _acquire(uri: str, what: str, wait_s: float, lease_s: float, poll_s: float) -> _Held:
    holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    t0 = time.monotonic()
    waited_on: str | None = None
    while True:
        info = {"holder": holder, "host": socket.gethostname(), "pid": os.getpid(), "what": what,
                "flow_run": os.environ.get("PREFECT__FLOW_RUN_ID"),
                "since": datetime.now(UTC).isoformat(timespec="seconds"),
                "expires": time.time() + lease_s}
        if storage.create_exclusive(uri, json.dumps(info).encode()):
            now = storage.read_tagged(uri)
            if now is None or json.loads(now[0]).get("holder") != holder:
                raise StorageError(f"{uri}: the lock vanished right after it was taken; is another "
                                   "process deleting locks by hand?")
            if waited_on:
                log.info("%s: lock taken after waiting %.0f s for %s", what, time.monotonic() - t0,
                         waited_on)
            return _Held(uri, info, now[1], lease_s)
        current = storage.read_tagged(uri)
        if current is None:
            continue  # released between our create and our read: try again at once
        try:
            other = json.loads(current[0])
        except ValueError:
            other = {}
        reason = _stale(other, time.time())
        if reason:
            log.warning("%s: breaking the lock %s held by %s: %s", what, uri, describe(other), reason)
            storage.delete_if(uri, current[1])
            continue
        elapsed = time.monotonic() - t0
        if elapsed >= wait_s:
            raise LockHeldError(
                f"{other.get('what') or what} is being produced by {describe(other)}; lock {uri}. "
                f"Gave up after waiting {elapsed:.0f} s (ALIGNCAP_LOCK_WAIT_S={wait_s:.0f}): wait for "
                "that run to finish and run again (it will reuse the output), or, if that process is "
                f"gone for good, delete {uri} (it also lapses by itself {lease_s:.0f} s after its "
                "holder stops renewing it)")
        if waited_on != other.get("holder"):
            waited_on = other.get("holder")
            log.warning("%s: waiting for the lock %s held by %s (up to %.0f s)", what, uri,
                        describe(other), wait_s)
        time.sleep(min(poll_s, max(wait_s - elapsed, 0.05)))


@contextlib.contextmanager
def hold(uri: str | os.PathLike, what: str, *, wait_s: float | None = None,
         lease_s: float | None = None, poll_s: float = 2.0) -> Iterator[dict[str, Any]]:
    """Hold the lock `uri` (a local path or s3:// URI) while `what` is produced; yields the
    holder record. Waits up to `wait_s` for another holder (LockHeldError after that); raises
    LockLostError at the end when the lock was broken meanwhile (another producer may have
    written the same output, so the result must not be trusted silently)."""
    uri = str(uri)
    wait_s = _env_float("ALIGNCAP_LOCK_WAIT_S", DEFAULT_WAIT_S) if wait_s is None else wait_s
    lease_s = _env_float("ALIGNCAP_LOCK_LEASE_S", DEFAULT_LEASE_S) if lease_s is None else lease_s
    with _HELD_LOCK:
        held = _HELD.get(uri)
        if held is not None:
            held.depth += 1
    if held is None:
        held = _acquire(uri, what, wait_s, lease_s, poll_s)
        held.thread = threading.Thread(target=held.renew_forever, name=f"lock-{what}", daemon=True)
        held.thread.start()
        with _HELD_LOCK:
            _HELD[uri] = held
    ok = False
    try:
        yield held.info
        ok = True
    finally:
        with _HELD_LOCK:
            held.depth -= 1
            last = held.depth == 0
            if last:
                _HELD.pop(uri, None)
        if last:
            held.stop.set()
            if held.thread is not None:
                held.thread.join(timeout=30)
            if held.lost is None and not storage.delete_if(uri, held.tag):
                held.lost = f"{uri} was changed or removed by someone else"
            if held.lost and not ok:  # the work failed anyway: report that error, not this one
                log.error("%s: the lock was lost while working (%s)", what, held.lost)
            elif held.lost:
                raise LockLostError(f"{what}: the lock was lost while working ({held.lost}); "
                                    "another producer may have written the same output; check it "
                                    "and run again")
