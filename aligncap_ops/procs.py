"""Background processes for the local stack: start detached, check, stop by pid file.

Each process starts in its own session (process group = its pid), so stopping the group also
stops what it spawned (uvicorn workers, flow-run subprocesses of a Prefect worker) and nothing
else. A pid is identified by its pid *and* its start time, so a recycled pid is never signalled.
Linux `/proc` is used when present; elsewhere `os.kill(pid, 0)` is the fallback.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from aligncap_core.errors import ConfigError


def port_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when a server could listen on `port` now."""
    with socket.socket() as s:
        # As the servers do: a port left in TIME_WAIT by a just-stopped stack is reusable.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def start(cmd: Sequence[str], log_path: Path, env: Mapping[str, str], cwd: Path | None = None) -> dict:
    """Start `cmd` detached, stdout+stderr to `log_path`; returns `{"pid", "started", "cmd", "log"}`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(list(cmd), stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=dict(env), cwd=cwd, start_new_session=True)
    return {"pid": proc.pid, "started": start_time(proc.pid), "cmd": list(cmd), "log": str(log_path)}


def start_time(pid: int) -> int | None:
    """The kernel start time of `pid` (clock ticks since boot), or None without /proc."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat.rsplit(")", 1)[1].split()[19])


def _state(pid: int) -> str | None:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return None


def alive(rec: Mapping) -> bool:
    """True when the process recorded in `rec` still runs (not exited, not a zombie, not a reused pid)."""
    pid = rec.get("pid")
    if not pid:
        return False
    if Path("/proc").is_dir():
        state = _state(pid)
        if state is None or state in ("Z", "X"):
            return False
        return rec.get("started") is None or start_time(pid) == rec["started"]
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Live pids in process group `pgid` (Linux /proc)."""
    out = []
    for d in Path("/proc").glob("[0-9]*"):
        try:
            fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] not in ("Z", "X"):
            out.append(int(d.name))
    return out


def rss_mb(pgid: int) -> float:
    """Resident memory of a whole process group, MiB (0 without /proc)."""
    total = 0
    for pid in group_members(pgid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            continue
    return total / 1024


def _signal_group(rec: Mapping, sig: int) -> None:
    # Every process `start` made leads its own group (pgid == pid). The caller checked that the
    # leader is ours (start time) or that its group still has members, which keeps the pgid from
    # being reused by the kernel.
    try:
        os.killpg(rec["pid"], sig)
    except (ProcessLookupError, PermissionError):
        pass


def _group_gone(rec: Mapping) -> bool:
    """Neither the leader nor anything it spawned into its group is left."""
    if alive(rec):
        return False
    if not Path("/proc").is_dir() or start_time(rec["pid"]) not in (None, rec.get("started")):
        return True  # the pid now belongs to an unrelated process: never signal it
    return not group_members(rec["pid"])


def stop(recs: Iterable[Mapping], grace_s: float = 8.0) -> None:
    """Stop processes together: SIGINT; after `grace_s` a second SIGINT then SIGTERM (Prefect
    workers need the second signal); after another `grace_s` SIGKILL."""
    recs = [r for r in recs if not _group_gone(r)]
    for sigs in ([signal.SIGINT], [signal.SIGINT, signal.SIGTERM], [signal.SIGKILL]):
        for r in recs:
            for sig in sigs:
                _signal_group(r, sig)
        deadline = time.monotonic() + grace_s
        while time.monotonic() < deadline:
            recs = [r for r in recs if not _group_gone(r)]
            if not recs:
                return
            time.sleep(0.1)
    for r in recs:  # SIGKILL cannot be refused; anything left is a zombie awaiting its reaper
        if alive(r):
            raise ConfigError(f"process {r['pid']} ({' '.join(r['cmd'][:3])}) did not stop; kill it by hand")


def http_ok(url: str, timeout: float = 2.0) -> bool:
    """True when `url` answers 2xx."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            return 200 <= r.status < 300
    except Exception:  # noqa: BLE001 - any failure means "not healthy"
        return False


def wait_healthy(name: str, url: str, rec: Mapping, timeout_s: float) -> None:
    """Wait until `url` answers; a clear error (with the log tail) when the process dies or times out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if http_ok(url):
            return
        if not alive(rec):
            raise ConfigError(f"{name} exited during startup; last log lines ({rec['log']}):\n{log_tail(rec['log'])}")
        time.sleep(0.3)
    raise ConfigError(f"{name} did not answer {url} within {timeout_s:.0f} s; see {rec['log']}:\n{log_tail(rec['log'])}")


def log_tail(path: str | Path, n: int = 15) -> str:
    try:
        return "\n".join(Path(path).read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"
