"""The built-in synthetic emotional speech corpus (espeak-ng, optionally flite; offline, measured labels).

`synthesize_corpus(n, seed, out_dir, workers)` writes `audio/*.wav`, `manifest.jsonl` and
`corpus.json`; see `corpus.py` for the steps, `checks.py` for the label thresholds,
`profiles.py` for voices, emotions and the zero-shot split, `flite.py` for the second synthesizer.
"""

from __future__ import annotations

import hashlib
from functools import cache
from importlib import metadata
from pathlib import Path

from .corpus import (
    SynthConfig,
    plan_corpus,
    resolve_synthesizers,
    synthesize_corpus,
    synthesizer_versions,
)

__all__ = ["SynthConfig", "generator_fingerprint", "plan_corpus", "resolve_synthesizers",
           "synthesize_corpus", "synthesizer_versions"]


@cache
def generator_fingerprint(root: Path | None = None) -> str:
    """Content hash of what makes the corpus besides its settings: the source of this package
    (voices, emotion profiles, caption templates, checks) and the espeak-ng build it drives.
    The pipeline keys the synthesized corpus and the data prepared from it with it, so a corpus
    made by other code is made again, never reused from a cache (`tasks.data`)."""
    root = root or Path(__file__).parent
    h = hashlib.sha256()
    for f in sorted(root.rglob("*.py")):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    try:
        h.update(metadata.version("espeakng-loader").encode())
    except metadata.PackageNotFoundError:
        h.update(b"no espeakng-loader")
    return h.hexdigest()[:12]
