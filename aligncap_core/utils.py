"""Small shared helpers: hashing, atomic writes, JSON Lines, progress bars."""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from aligncap_core.errors import ConfigError


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def stable_json(obj: Any) -> str:
    """Canonical JSON (sorted keys, no spaces) for hashing configs and rows."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def fingerprint(*parts: Any) -> str:
    """Content fingerprint of JSON-able parts (configs, row lists, other fingerprints)."""
    h = hashlib.sha256()
    for p in parts:
        h.update(stable_json(p).encode("utf-8"))
        h.update(b"\x00")
    return h.hexdigest()[:16]


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Write a file via a temporary sibling + rename, so readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        with open(tmp, mode, encoding=encoding if "b" not in mode else None) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def link_or_copy(src: str, dst: str) -> str:
    """`shutil.copytree`'s copy_function that hard-links where the file system allows (a file
    shared by many checkpoints then uses the disk once) and copies otherwise. Safe because
    aligncap's savers replace files (atomic rename), never modify them in place."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def discard_dir(path: str | os.PathLike) -> None:
    """Delete a directory by renaming it to a hidden `.del-<name>` first, so a kill during the
    deletion never leaves a half-deleted directory under its real name. OSError of the rename
    propagates (nothing was touched)."""
    path = Path(path)
    doomed = path.with_name(f".del-{path.name}")
    path.rename(doomed)
    shutil.rmtree(doomed, ignore_errors=True)


def fsync_dir(path: str | os.PathLike) -> None:
    """Make the entries of a directory (a rename into it) durable; a no-op where directories
    cannot be opened for fsync."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder under `root` (and `root`), so a rename that commits the folder
    never publishes data that is still only in the page cache: after a power loss the folder is
    either absent or complete, not present with empty or truncated files."""
    for dirpath, _, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError), open(os.path.join(dirpath, name), "rb") as f:
                os.fsync(f.fileno())
        fsync_dir(dirpath)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Build a directory under a temporary sibling name and rename it into place at the end.

    A crash leaves only a `.tmp-*` sibling, never a half-written `path`; the files are fsync'd
    before the rename and the rename itself after it. An existing `path` is replaced.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{path.name}-", dir=path.parent))
    try:
        yield tmp
        fsync_tree(tmp)
        if path.exists():
            old = path.with_name(f".old-{path.name}-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def release_memory() -> dict[str, int]:
    """Give a finished stage's memory back before the next stage loads its models.

    gc first (models in reference cycles), then the CUDA caching allocator's blocks, then glibc's
    `malloc_trim(0)`: the CPU allocator keeps freed arenas mapped, so in a process that runs
    stage after stage (the embedded pipeline) its RSS ratchets up to the sum of every stage's
    peak instead of the largest one. Returns {"rss_before": bytes, "rss_after": bytes} (0 where
    /proc is missing). Safe anywhere: without glibc the trim is skipped.
    """
    import ctypes
    import gc

    def rss() -> int:
        try:
            with open("/proc/self/statm") as f:
                return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return 0

    before = rss()
    gc.collect()
    import sys

    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    return {"rss_before": before, "rss_after": rss()}


def read_yaml_mapping(path: str | os.PathLike, what: str = "config") -> dict:
    """A YAML file whose top level is a mapping; ConfigError naming the file otherwise."""
    import yaml

    from aligncap_core.errors import ConfigError

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"cannot read {what} {path}: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of {what} keys at the top level")
    return data


def set_dotted(data: dict, overrides: dict[str, Any]) -> dict:
    """Set `overrides` (dotted keys like `"train.max_steps"`) into `data` in place and return it.
    None values are skipped: they stand for CLI options / form fields the user did not give."""
    for key, value in overrides.items():
        if value is None:
            continue
        *parents, leaf = key.split(".")
        node = data
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return data


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_jsonl(path: str | os.PathLike, rows: Iterable[dict]) -> int:
    n = 0
    with atomic_write(path) as f:
        for row in rows:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


PROGRESS_EVERY_ENV = "ALIGNCAP_PROGRESS_EVERY_S"
progress_log = logging.getLogger("aligncap_core.progress")


def _hms(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{s:02d}"


class LoggedProgress(Progress):
    """A rich progress bar that, where no bar is drawn (not a terminal, or disabled: a Prefect
    worker, a log file, CI), logs its state instead: one line per task to the
    `aligncap_core.progress` logger (INFO) every `every` seconds and when the task ends,
    "<description>: 120/600 (20%), 0:01:36 elapsed, eta 0:06:24". The Prefect tasks send
    `aligncap_core`'s records to the run's logs, so a long stage shows its count and ETA in the
    Prefect UI, not only its state."""

    def __init__(self, *columns: Any, every: float = 30.0, **kwargs: Any) -> None:
        super().__init__(*columns, **kwargs)
        self.every = every
        self._logged: dict[Any, float] = {}

    def update(self, task_id: Any, *args: Any, **kwargs: Any) -> None:
        super().update(task_id, *args, **kwargs)
        self._report(task_id)

    def advance(self, task_id: Any, advance: float = 1) -> None:
        super().advance(task_id, advance)
        self._report(task_id)

    def _report(self, task_id: Any) -> None:
        if not self.disable and self.console.is_terminal:
            return  # the bar itself is on the screen
        task = self._tasks.get(task_id)
        if task is None:
            return
        now, last = time.monotonic(), self._logged.get(task_id)
        if last == -1.0 or not (task.finished or last is None or now - last >= self.every):
            return
        if last is None and not task.finished:  # the first line once `every` has passed
            self._logged[task_id] = now
            return
        self._logged[task_id] = -1.0 if task.finished else now
        total = f"/{task.total:.0f} ({task.percentage:.0f}%)" if task.total else ""
        progress_log.info("%s: %.0f%s, %s elapsed, eta %s", task.description, task.completed, total,
                          _hms(task.elapsed), "0:00:00" if task.finished else _hms(task.time_remaining))


def progress(disable: bool = False, transient: bool = False) -> Progress:
    """A rich progress bar with counts, elapsed time and ETA. Use as a context manager.

    Put live rates in the task description: `bar.update(t, advance=1, description=f"encode {r:.0f}x rt")`.
    Where the bar is not drawn (no terminal, or `disable`), its state is logged every
    ALIGNCAP_PROGRESS_EVERY_S seconds (30) instead (`LoggedProgress`).
    """
    raw = os.environ.get(PROGRESS_EVERY_ENV, "30")
    try:
        every = float(raw)
    except ValueError:
        every = -1.0
    if not every >= 0:
        raise ConfigError(f"{PROGRESS_EVERY_ENV}={raw!r}: expected seconds >= 0 between progress lines")
    return LoggedProgress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        disable=disable,
        transient=transient,
        every=every,
    )
