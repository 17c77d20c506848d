"""Tiny synthetic WAVs and manifests for the data ingestion tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import soundfile as sf


def tone(freq: float = 440.0, seconds: float = 1.0, rate: int = 24000, channels: int = 1,
         amp: float = 0.5, noise: float = 0.01, seed: int = 0) -> np.ndarray:
    """A sine plus a little white noise: (frames,) or (frames, channels) float32."""
    t = np.arange(int(round(seconds * rate))) / rate
    rng = np.random.default_rng(seed)
    x = amp * np.sin(2 * np.pi * freq * t) + noise * rng.standard_normal(t.size)
    x = x.astype(np.float32)
    return x if channels == 1 else np.stack([x] * channels, axis=1)


def write_wav(path: Path, x: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, x, rate, subtype=subtype)
    return path


def row(rid: str, audio: str, split: str = "train", **extra) -> dict:
    r = {"id": rid, "audio": audio, "transcript": "Kids are talking by the door.",
         "captions": [f"A person speaks calmly ({rid})."], "split": split}
    r.update(extra)
    return r


def write_manifest(path: Path, rows: list) -> Path:
    """rows: dicts (dumped as JSON) or raw `bytes`/`str` lines written as they are."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        for r in rows:
            if isinstance(r, dict):
                f.write(json.dumps(r).encode() + b"\n")
            elif isinstance(r, str):
                f.write(r.encode() + b"\n")
            else:
                f.write(r + b"\n")
    return path


def peak_hz(x: np.ndarray, rate: int) -> float:
    """Frequency of the strongest FFT bin (Hann window), Hz."""
    spec = np.abs(np.fft.rfft(x * np.hanning(x.size)))
    return float(np.fft.rfftfreq(x.size, 1 / rate)[int(np.argmax(spec))])
