"""A 24-clip corpus of real WAVs (tones whose pitch/speed follow the emotion), prepared and
tokenized with a tiny calibrated EnCodec (16-entry codebooks, 4 filters: the micro LM's audio
vocabulary is 2 x 16), for the tests that caption or evaluate real audio.

`corpus` is a module-scoped fixture: a test module imports it and gets its own instance.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from aligncap_core.utils import read_jsonl, write_jsonl
from tests.helpers.training import EMOTIONS, clip_row, toy_p_act

SR = 24000
TINY_CODEC = {"codebook_size": 16, "num_filters": 4, "hidden_size": 16}


def tone(emotion: str, rng: np.random.Generator, sr: int = SR) -> np.ndarray:
    pitch, speed = EMOTIONS[emotion]
    f0 = {"low": 120, "normal": 200, "high": 320}[pitch] * rng.uniform(0.95, 1.05)
    dur = {"slow": 0.55, "fast": 0.35}[speed] * rng.uniform(0.95, 1.05)  # >= prepare's 0.3 s
    t = np.arange(int(sr * dur)) / sr
    return (0.3 * np.sin(2 * np.pi * f0 * t) * (1 + 0.3 * np.sin(2 * np.pi * 5 * t))).astype(np.float32)


def raw_corpus(root: Path, n: int = 24, n_valid: int = 8) -> Path:
    """Manifest + audio/ as a user would hand it in: no codes, no clues."""
    rng = np.random.default_rng(0)
    (root / "audio").mkdir(parents=True)
    rows = []
    for i in range(n):
        row = clip_row(i, n, n_valid)
        sf.write(root / row["audio"], tone(row["attributes"]["emotion"], rng), SR)
        rows.append(row)
    write_jsonl(root / "manifest.jsonl", rows)
    return root


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return coded_corpus(tmp_path_factory.mktemp("infer") / "data")


def coded_corpus(root: Path) -> Path:
    """A prepared, clue-annotated data dir tokenized with the tiny codec saved in DATA_DIR/codec."""
    from aligncap_core.codec import calibrate_encodec, read_audio, tokenize_dataset

    root = raw_corpus(root)
    rows = read_jsonl(root / "manifest.jsonl")
    wavs = [read_audio(root / r["audio"], SR) for r in rows if r["split"] == "train"]
    codec = calibrate_encodec(lambda i: wavs[i], [len(w) for w in wavs], n_q=2, iters=5,
                              config_overrides=TINY_CODEC)
    codec.save(root / "codec")
    tokenize_dataset(root, codec=str(root / "codec"), n_q=2, progress=False)
    rows = read_jsonl(root / "manifest.jsonl")
    for r in rows:  # what `data clues` writes, without loading spaCy for the whole corpus
        r["p_act"] = toy_p_act(r["attributes"])
    write_jsonl(root / "manifest.jsonl", rows)
    return root


def vowel(f0: float, spacing: float, seconds: float = 1.0, sr: int = 24000) -> np.ndarray:
    """A glottal pulse train at `f0` through the first five resonances of a uniform tube closed
    at one end (F_n = (n - 1/2) * spacing, 80 Hz bandwidths): a steady vowel."""
    from scipy.signal import lfilter

    n = int(seconds * sr)
    x = np.zeros(n)
    x[:: max(1, int(round(sr / f0)))] = 1.0
    for k in range(1, 6):
        f = (k - 0.5) * spacing
        if f >= sr / 2:
            break
        r = np.exp(-np.pi * 80 / sr)
        x = lfilter([1 - r], [1, -2 * r * np.cos(2 * np.pi * f / sr), r * r], x)
    return (0.3 * x / np.abs(x).max()).astype(np.float32)
