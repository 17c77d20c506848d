"""METEOR through pycocoevalcap's Meteor 1.5 jar and the machine's Java.

One JVM per `MeteorScorer` (start-up plus paraphrase tables take ~5-15 s on these CPUs); it is
started as soon as the scorer is created, so callers can create it first and do other work while
the JVM loads. NLTK's METEOR is not an alternative here: it needs WordNet, which cannot be
downloaded offline (ENVIRONMENT.md).

Failure is reported, never faked: `score()` returns (None, reason) when `java` is not on PATH,
the jar is missing, the JVM dies, or it stops answering within `timeout_s`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
from collections.abc import Sequence

# Generous: a 500-caption corpus takes a few seconds once the JVM is up.
DEFAULT_TIMEOUT_S = 600.0
# pycocoevalcap starts METEOR with -Xmx2G, and the JVM grows towards it (1.0-1.2 GB resident in
# `make demo`). The English paraphrase tables fit in far less: scores are identical at 2G, 1G,
# 512m and 384m (256m runs out of heap); at 512m with the serial collector the JVM stays at
# ~0.57 GB resident for 160 or 2,400 captions alike.
JVM_OPTIONS = ("-Xmx512m", "-XX:+UseSerialGC")


def _meteor_class():
    from pycocoevalcap.meteor.meteor import Meteor

    class _Meteor(Meteor):
        """pycocoevalcap's Meteor with a resolved java path and a close() that never blocks.

        The upstream __init__ cannot report a missing java cleanly, and its __del__ takes a lock
        that compute_score leaves held when the JVM dies mid-call, which would hang garbage
        collection; both are replaced. The scoring protocol (compute_score) is upstream's.
        """

        def __init__(self, java: str, jar_dir: str):
            self.meteor_cmd = [java, "-jar", *JVM_OPTIONS, "meteor-1.5.jar", "-", "-", "-stdio", "-l", "en", "-norm"]
            self.lock = threading.Lock()
            self.meteor_p = subprocess.Popen(self.meteor_cmd, cwd=jar_dir, stdin=subprocess.PIPE,
                                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)

        def close(self) -> str:
            """Stop the JVM; return the tail of its stderr (for error messages)."""
            p = self.meteor_p
            try:
                if p.stdin and not p.stdin.closed:
                    p.stdin.close()
            except OSError:
                pass
            if p.poll() is None:
                p.kill()
            # the JVM is dead, so reading stderr to EOF cannot block
            err = p.stderr.read() if p.stderr else b""
            for f in (p.stdout, p.stderr):
                if f:
                    f.close()
            p.wait()
            return (err or b"").decode("utf-8", "replace").strip()[-500:]

        def __del__(self):
            p = getattr(self, "meteor_p", None)
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()

    return _Meteor


def meteor_jar_dir() -> str:
    import pycocoevalcap.meteor.meteor as m

    return os.path.dirname(os.path.abspath(m.__file__))


class MeteorScorer:
    """A running METEOR 1.5 JVM. Use as a context manager, or call `close()`.

    `error` is set (and `score()` returns (None, error)) when METEOR cannot run.
    """

    def __init__(self, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.timeout_s = timeout_s
        self.error: str | None = None
        self._meteor = None
        java = shutil.which("java")
        jar_dir = meteor_jar_dir()
        if java is None:
            self.error = "java not found on PATH: METEOR needs a Java runtime (e.g. apt-get install default-jre-headless)"
        elif not os.path.exists(os.path.join(jar_dir, "meteor-1.5.jar")):
            self.error = f"meteor-1.5.jar not found in {jar_dir}: reinstall pycocoevalcap"
        else:
            try:
                self._meteor = _meteor_class()(java, jar_dir)
            except OSError as e:
                self.error = f"could not start java for METEOR: {e}"

    def score(self, hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> tuple[float | None, str | None]:
        """(corpus METEOR in 0-1, None), or (None, reason). Inputs are normalised text
        (see `text_metrics.normalize`), one list of >= 1 references per caption.

        The corpus score is METEOR 1.5's aggregate over all captions (statistics pooled, as
        pycocoevalcap reports it), not the mean of per-caption scores.
        """
        if self._meteor is None:
            return None, self.error
        if not hyps:
            return None, "no captions to score"
        gts = {i: list(r) for i, r in enumerate(refs)}
        res = {i: [h] for i, h in enumerate(hyps)}
        # A JVM that stops answering would block readline() forever: kill it after the timeout,
        # which turns the hang into EOF -> ValueError below.
        timer = threading.Timer(self.timeout_s, self._meteor.meteor_p.kill)
        timer.daemon = True
        timer.start()
        try:
            score, _ = self._meteor.compute_score(gts, res)
        except (OSError, ValueError) as e:
            timed_out = not timer.is_alive()
            stderr = self.close()
            why = f"no answer within {self.timeout_s:.0f} s" if timed_out else f"{type(e).__name__}: {e}"
            self.error = f"METEOR jar failed ({why})" + (f"; java said: {stderr}" if stderr else "")
            return None, self.error
        finally:
            timer.cancel()
        return float(score), None

    def close(self) -> str:
        """Stop the JVM (idempotent); returns the tail of its stderr."""
        if self._meteor is None:
            return ""
        m, self._meteor = self._meteor, None
        return m.close()

    def __enter__(self) -> MeteorScorer:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
