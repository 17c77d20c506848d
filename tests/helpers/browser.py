"""Headless Chromium for UI tests: find (or apt-install) Debian's `chromium`, dump the rendered
DOM of a single-page app, take screenshots. No Selenium: the command line is enough, because
`--virtual-time-budget` lets the page's scripts run (and fetch from the API) before the DOM is
dumped.
"""

from __future__ import annotations

import html
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio"]
# Screenshots are kept here (git-ignored) so a person can look at what the test saw.
OUTPUT = Path(__file__).resolve().parents[1] / "_output"


def _find() -> str | None:
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None


def chromium_or_skip() -> str:
    """Path of a Chromium binary. Installs Debian's `chromium` with apt-get when it is missing and
    this process may (root, apt-get present); skips the test with the reason otherwise."""
    exe = _find()
    if exe:
        return exe
    if os.environ.get("ALIGNCAP_NO_APT"):
        pytest.skip("chromium not installed and ALIGNCAP_NO_APT is set")
    if not shutil.which("apt-get") or os.geteuid() != 0:
        pytest.skip("chromium not installed; `apt-get install -y chromium` (Debian) needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    log = []
    for cmd in (["apt-get", "install", "-y", "-q", "chromium"],
                ["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "chromium"]):
        r = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=900)
        log.append(f"$ {' '.join(cmd)} -> {r.returncode}\n{r.stdout[-800:]}{r.stderr[-800:]}")
        exe = _find()
        if exe:
            return exe
    pytest.skip("could not install chromium with apt-get:\n" + "\n".join(log))


def _run(exe: str, args: list[str], timeout: float) -> subprocess.CompletedProcess:
    # a fresh profile per call: no state (cache, service workers) carried between pages
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        return subprocess.run([exe, *FLAGS, f"--user-data-dir={profile}", *args], capture_output=True,
                              text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def text_of(dom: str) -> str:
    """What the page shows: the DOM without scripts, styles and tags, whitespace collapsed (a
    count and its label can sit in different elements: `<b>5</b> matching runs`)."""
    body = re.sub(r"<(script|style)\b.*?</\1>", " ", dom, flags=re.S | re.I)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", body))).strip()


def page_text(exe: str, url: str, tmp: Path, wait_for: list[str] = (), budgets_ms=(15000, 30000),
              timeout: float = 120) -> str:
    """The text of `url` after its scripts ran for a virtual-time budget (`--dump-dom`). Retries
    with a larger budget until every string of `wait_for` is in it (single-page apps render after
    their API calls return; a loaded machine makes those slow). Returns the last text either way;
    the DOM is kept in `tmp/last-dom.html`."""
    text = ""
    for budget in budgets_ms:
        r = _run(exe, [f"--virtual-time-budget={budget}", "--window-size=1400,900", "--dump-dom", url], timeout)
        (tmp / "last-dom.html").write_text(r.stdout)
        text = text_of(r.stdout)
        if r.returncode == 0 and all(s in text for s in wait_for):
            break
    return text


def screenshot(exe: str, url: str, path: Path, budget_ms: int = 15000, timeout: float = 120) -> Path:
    """A 1400x900 PNG of `url` after `budget_ms` of virtual time, written to tests/_output/ (and
    `path`, in the test's tmp folder); returns the kept copy."""
    path.parent.mkdir(parents=True, exist_ok=True)
    r = _run(exe, [f"--virtual-time-budget={budget_ms}", "--window-size=1400,900",
                   f"--screenshot={path}", url], timeout)
    assert path.is_file() and path.stat().st_size > 1000, f"no screenshot of {url}: {r.stderr[-1500:]}"
    OUTPUT.mkdir(exist_ok=True)
    kept = OUTPUT / path.name
    shutil.copyfile(path, kept)
    return kept
