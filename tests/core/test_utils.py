"""Small shared helpers: memory release between pipeline stages, progress where no bar is drawn."""

from __future__ import annotations

import logging
import platform

import numpy as np
import pytest

from aligncap_core.utils import release_memory


@pytest.mark.skipif(platform.system() != "Linux" or platform.libc_ver()[0] != "glibc",
                    reason="malloc_trim is glibc's")
def test_release_memory_returns_freed_heap_pages():
    # 64 KB blocks sit below glibc's mmap threshold, so they live in the heap; the block
    # allocated last pins the heap's top, so free() alone cannot give the rest back
    blocks = [np.ones(8192) for _ in range(3000)]  # ~190 MB
    pin = np.ones(8192)
    del blocks
    m = release_memory()
    assert m["rss_before"] - m["rss_after"] > 100 * 2**20, m
    assert pin.sum() == 8192


def test_release_memory_without_anything_to_free():
    m = release_memory()
    assert set(m) == {"rss_before", "rss_after"} and m["rss_after"] <= m["rss_before"] + 16 * 2**20


def test_progress_is_logged_where_no_bar_is_drawn(caplog, monkeypatch):
    """No terminal (a Prefect worker, a log file) or a disabled bar: the count, elapsed time
    and ETA go to the `aligncap_core.progress` logger, every ALIGNCAP_PROGRESS_EVERY_S seconds
    and when the task ends; a bar drawn on a terminal logs nothing."""
    import io

    from rich.console import Console

    from aligncap_core.errors import ConfigError
    from aligncap_core.utils import LoggedProgress, progress

    monkeypatch.setenv("ALIGNCAP_PROGRESS_EVERY_S", "0")
    with caplog.at_level(logging.INFO, logger="aligncap_core.progress"):
        with progress(disable=True) as bar:
            t = bar.add_task("encode", total=4)
            for _ in range(4):
                bar.advance(t)
            bar.update(t, advance=1)  # past the end: the task ended, nothing more is logged
    lines = [r.getMessage() for r in caplog.records if r.name == "aligncap_core.progress"]
    # the first update starts the clock; each later one is due at 0 s; the end is logged once
    assert [line.split(",")[0] for line in lines] == ["encode: 2/4 (50%)", "encode: 3/4 (75%)",
                                                      "encode: 4/4 (100%)"], lines
    assert lines[-1].endswith("elapsed, eta 0:00:00") and "eta" in lines[0]

    caplog.clear()
    monkeypatch.setenv("ALIGNCAP_PROGRESS_EVERY_S", "3600")  # the default is 30 s
    with caplog.at_level(logging.INFO, logger="aligncap_core.progress"):
        with progress(disable=True) as bar:
            t = bar.add_task("decode", total=3)
            for _ in range(3):
                bar.advance(t)
        tty = Console(file=io.StringIO(), force_terminal=True)
        with LoggedProgress(console=tty, every=0) as bar:
            t = bar.add_task("drawn", total=2)
            bar.advance(t, 2)
    assert [r.getMessage().split(",")[0] for r in caplog.records
            if r.name == "aligncap_core.progress"] == ["decode: 3/3 (100%)"]

    monkeypatch.setenv("ALIGNCAP_PROGRESS_EVERY_S", "soon")
    with pytest.raises(ConfigError, match="ALIGNCAP_PROGRESS_EVERY_S='soon'"):
        progress()


def test_the_cli_prints_progress_lines_when_stderr_is_not_a_terminal(tmp_path):
    """`aligncap ... 2> log`: no bar can be drawn, so the count and ETA come as lines."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "ALIGNCAP_PROGRESS_EVERY_S": "0"}
    r = subprocess.run([sys.executable, "-m", "aligncap_core.cli", "data", "synth", "--out",
                        str(tmp_path / "c"), "--n", "12", "--workers", "1"], env=env,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    lines = [ln for ln in r.stderr.splitlines() if "elapsed, eta" in ln]
    assert lines and lines[-1].split(" ", 1)[1].startswith("synthesize") and "12/12 (100%)" in lines[-1]
