"""A prosody token stream beside the EnCodec codes: quantised log-F0 and level over time.

The student reads EnCodec codes (method step 1). A random-weight EnCodec with k-means codebooks
keeps the spectrum's shape, but how high a voice is and how loud it speaks are spread thinly
over many codes, and on voices unlike the training ones they are hard to read back (a
bag-of-codes probe fitted on synthetic speech reads a real speaker's gender at chance,
docs/experiments/real_speech.md). Prosody-aware spoken language models (pGSLM, Kharitonov et al.
2022) give the LM the F0 and duration as a stream of their own; this module does the same:

    <prosody> <pf7> <pl5> <pf8> <pl5> <pf_u> <pl1> ... </prosody>

one (F0, level) token pair per `hop_s` of audio: `<pf{k}>` is the median F0 of the voiced YIN
frames in the hop, quantised on a log scale between f0_min_hz and f0_max_hz (`<pf_u>`: no voiced
frame), `<pl{j}>` the hop's level in dBFS quantised between level_min_db and level_max_db. Timing
(how fast, how many pauses) is in the stream's shape; its length is the clip's duration.

The stream is computed from the waveform (a few ms per clip, no model), so it needs no cache:
training reads the prepared audio, captioning the audio it is given.
"""

from __future__ import annotations

import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from aligncap_core.errors import ConfigError

PROSODY_START, PROSODY_END = "<prosody>", "</prosody>"
UNVOICED = "<pf_u>"
TOKEN_RE = re.compile(r"<pf\d+>|<pf_u>|<pl\d+>|<prosody>|</prosody>")


@dataclass(frozen=True)
class ProsodySettings:
    """hop_s: seconds of audio per (F0, level) pair (0.08: 25 tokens per second).
    f0_bins over [f0_min_hz, f0_max_hz], log-spaced (24 over 60-480 Hz: 1.5 semitones each);
    level_bins over [level_min_db, level_max_db] dBFS (10 over -70..-10: 6 dB each). Values
    outside a range go to its first / last bin."""

    hop_s: float = 0.08
    f0_bins: int = 24
    f0_min_hz: float = 60.0
    f0_max_hz: float = 480.0
    level_bins: int = 10
    level_min_db: float = -70.0
    level_max_db: float = -10.0

    def __post_init__(self) -> None:
        if not 0.01 <= self.hop_s <= 1.0:
            raise ConfigError(f"prosody.hop_s must be in [0.01, 1] seconds, got {self.hop_s}")
        if self.f0_bins < 2 or self.level_bins < 2:
            raise ConfigError("prosody.f0_bins and prosody.level_bins must be >= 2")
        if not 0 < self.f0_min_hz < self.f0_max_hz or self.level_min_db >= self.level_max_db:
            raise ConfigError("prosody: need 0 < f0_min_hz < f0_max_hz and level_min_db < level_max_db")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def coerce(cls, value: ProsodySettings | dict | bool | None) -> ProsodySettings | None:
        """None/False: no prosody stream; True: the defaults; a dict: those fields."""
        if value is None or value is False:
            return None
        if value is True:
            return cls()
        if isinstance(value, cls):
            return value
        try:
            return cls(**value)
        except TypeError as e:
            raise ConfigError(f"prosody settings: {e}") from None


def prosody_vocab(settings: ProsodySettings | None = None) -> list[str]:
    """Every prosody token (markers, F0 bins, unvoiced, level bins) for the LM's vocabulary."""
    s = settings or ProsodySettings()
    return ([PROSODY_START, PROSODY_END, UNVOICED] + [f"<pf{k}>" for k in range(s.f0_bins)]
            + [f"<pl{j}>" for j in range(s.level_bins)])


def prosody_codes(wav: np.ndarray, sample_rate: int, settings: ProsodySettings) -> np.ndarray:
    """(2, T) int16: row 0 the F0 bin (f0_bins = unvoiced), row 1 the level bin, T hops."""
    from aligncap_core.data.synth.measure import frame_levels_db, yin_track

    x = np.asarray(wav, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"prosody_codes needs mono samples, got shape {x.shape}")
    n_hops = max(1, int(np.ceil(len(x) / (settings.hop_s * sample_rate))))
    f0, f0_hop = yin_track(x, sample_rate)
    levels = frame_levels_db(x, sample_rate)  # 10 ms frames
    out = np.empty((2, n_hops), dtype=np.int16)
    lo, hi = np.log(settings.f0_min_hz), np.log(settings.f0_max_hz)
    for h in range(n_hops):
        t0, t1 = h * settings.hop_s, (h + 1) * settings.hop_s
        frames = f0[int(t0 / f0_hop): max(int(t0 / f0_hop) + 1, int(t1 / f0_hop))]
        voiced = frames[~np.isnan(frames)]
        if len(voiced):
            pos = (np.log(np.median(voiced)) - lo) / (hi - lo)
            out[0, h] = int(np.clip(pos * settings.f0_bins, 0, settings.f0_bins - 1))
        else:
            out[0, h] = settings.f0_bins
        seg = levels[int(t0 / 0.01): max(int(t0 / 0.01) + 1, int(t1 / 0.01))]
        db = 10 * np.log10(np.mean(10 ** (seg / 10))) if len(seg) else settings.level_min_db
        pos = (db - settings.level_min_db) / (settings.level_max_db - settings.level_min_db)
        out[1, h] = int(np.clip(pos * settings.level_bins, 0, settings.level_bins - 1))
    return out


def prosody_to_tokens(codes: np.ndarray, settings: ProsodySettings) -> list[str]:
    """(2, T) prosody codes -> `[<prosody>, <pf..>, <pl..>, ..., </prosody>]`."""
    out = [PROSODY_START]
    for f, lv in np.asarray(codes).T.tolist():
        out += [UNVOICED if f >= settings.f0_bins else f"<pf{f}>", f"<pl{lv}>"]
    out.append(PROSODY_END)
    return out


def audio_prosody_tokens(path: str | os.PathLike, sample_rate: int,
                         settings: ProsodySettings) -> list[str]:
    """The prosody tokens of an audio file (read, downmixed, resampled to `sample_rate`)."""
    from aligncap_core.codec.tokenizer import read_audio

    return prosody_to_tokens(prosody_codes(read_audio(Path(path), sample_rate), sample_rate,
                                           settings), settings)
