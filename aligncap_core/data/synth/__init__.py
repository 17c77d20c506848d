"""The built-in synthetic emotional speech corpus (espeak-ng, offline, measured labels).

`synthesize_corpus(n, seed, out_dir, workers)` writes `audio/*.wav`, `manifest.jsonl` and
`corpus.json`; see `corpus.py` for the steps, `checks.py` for the label thresholds,
`profiles.py` for voices, emotions and the zero-shot split.
"""

from .corpus import SynthConfig, plan_corpus, synthesize_corpus

__all__ = ["SynthConfig", "plan_corpus", "synthesize_corpus"]
