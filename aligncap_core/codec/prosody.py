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

With `voice_bins` > 0 the stream opens with one clip-level voice token, `<pv{k}>`: the clip's
formant spacing (`formant_spacing`, a vocal-tract-length cue) quantised on a
log scale between voice_min_hz and voice_max_hz (`<pv_u>`: too few voiced frames to measure):

    <prosody> <pv5> <pf7> <pl5> ... </prosody>

Why: F0 alone does not say a human speaker's gender (acted emotional speech puts men at
150-260 Hz, where women speak), and a student given only F0 reads real men as women. Fitted on
the built-in corpus and scored on real speech, the formant spacing alone reads gender 0.92 where
the median F0 reads 0.69 (docs/experiments/realdata_transfer.md).

The stream is computed from the waveform (a few ms per clip, no model), so it needs no cache:
training reads the prepared audio, captioning the audio it is given.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

import numpy as np

from aligncap_core.errors import ConfigError

PROSODY_START, PROSODY_END = "<prosody>", "</prosody>"
UNVOICED = "<pf_u>"
NO_VOICE = "<pv_u>"
TOKEN_RE = re.compile(r"<pf\d+>|<pf_u>|<pl\d+>|<pv\d+>|<pv_u>|<prosody>|</prosody>")
# voice tokens every vocabulary holds (`prosody_vocab()`), so a student of any teacher can read them
DEFAULT_VOICE_BINS = 16


@dataclass(frozen=True)
class ProsodySettings:
    """hop_s: seconds of audio per (F0, level) pair (0.08: 25 tokens per second).
    f0_bins over [f0_min_hz, f0_max_hz], log-spaced (24 over 60-480 Hz: 1.5 semitones each);
    level_bins over [level_min_db, level_max_db] dBFS (10 over -70..-10: 6 dB each). Values
    outside a range go to its first / last bin. voice_bins: the clip-level formant-spacing
    token over [voice_min_hz, voice_max_hz], log-spaced (0: none, the stream of earlier
    checkpoints; 16 over 850-1400 Hz: 3.1% each). trim_db > 0: both streams (the codes and
    this one) cover only the clip's active span, from trim_pad_s before its first to trim_pad_s
    after its last 10 ms frame within trim_db of its loudest (`active_span`); 0 keeps the whole
    clip, as earlier checkpoints read it."""

    hop_s: float = 0.08
    f0_bins: int = 24
    f0_min_hz: float = 60.0
    f0_max_hz: float = 480.0
    level_bins: int = 10
    level_min_db: float = -70.0
    level_max_db: float = -10.0
    voice_bins: int = 0
    voice_min_hz: float = 850.0
    voice_max_hz: float = 1400.0
    trim_db: float = 0.0
    trim_pad_s: float = 0.1

    def __post_init__(self) -> None:
        if not 0.01 <= self.hop_s <= 1.0:
            raise ConfigError(f"prosody.hop_s must be in [0.01, 1] seconds, got {self.hop_s}")
        if self.f0_bins < 2 or self.level_bins < 2:
            raise ConfigError("prosody.f0_bins and prosody.level_bins must be >= 2")
        if not 0 < self.f0_min_hz < self.f0_max_hz or self.level_min_db >= self.level_max_db:
            raise ConfigError("prosody: need 0 < f0_min_hz < f0_max_hz and level_min_db < level_max_db")
        if self.voice_bins < 0 or not 0 < self.voice_min_hz < self.voice_max_hz:
            raise ConfigError("prosody: need voice_bins >= 0 and 0 < voice_min_hz < voice_max_hz")
        if self.trim_db < 0 or self.trim_pad_s < 0:
            raise ConfigError("prosody: trim_db and trim_pad_s must be >= 0 (trim_db 0: no trim)")

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
    """Every prosody token (markers, F0 bins, unvoiced, level bins, voice bins) for the LM's
    vocabulary; without settings, the defaults with `DEFAULT_VOICE_BINS` voice bins."""
    s = settings or ProsodySettings(voice_bins=DEFAULT_VOICE_BINS)
    return ([PROSODY_START, PROSODY_END, UNVOICED] + [f"<pf{k}>" for k in range(s.f0_bins)]
            + [f"<pl{j}>" for j in range(s.level_bins)]
            + ([NO_VOICE] + [f"<pv{k}>" for k in range(s.voice_bins)] if s.voice_bins else []))


# Formant spacing (vocal-tract length cue). LPC of order 12 at 10 kHz on the voiced 25 ms
# frames (10 ms hop, pre-emphasis 0.97, Hamming): the poles below 4.8 kHz with bandwidth under
# 500 Hz are the formants; their clip medians give F3 and F4, and the spacing of a uniform tube
# closed at one end, F_n = (n - 1/2) * dF, from them: dF = (F3 / 2.5 + F4 / 3.5) / 2.
# A longer vocal tract (men) gives a smaller dF: ~1,010 Hz for the men and ~1,110-1,180 Hz for
# the women of the built-in corpus and of real speech alike (docs/experiments/realdata_transfer.md).
_LPC_RATE, _LPC_ORDER = 10_000, 12


def formant_spacing(x: np.ndarray, sr: int, f0: np.ndarray | None = None,
                    f0_hop: float | None = None) -> float:
    """Formant spacing dF in Hz of a clip's voiced frames (nan when fewer than 3 frames have
    four formants). f0 / f0_hop: `yin_track(x, sr)` when the caller has it already."""
    import soxr

    from aligncap_core.data.synth.measure import yin_track

    x = np.asarray(x, dtype=np.float64)
    if f0 is None or f0_hop is None:
        f0, f0_hop = yin_track(x, sr)
    y = soxr.resample(x, sr, _LPC_RATE).astype(np.float64) if sr != _LPC_RATE else x
    n, hop, p = int(0.025 * _LPC_RATE), int(0.010 * _LPC_RATE), _LPC_ORDER
    if len(y) <= n or not len(f0):
        return float("nan")
    y = np.append(y[0], y[1:] - 0.97 * y[:-1])
    starts = np.arange(0, len(y) - n, hop)
    k = ((starts + n / 2) / _LPC_RATE / f0_hop).astype(int)  # the F0 frame at each frame's centre
    starts = starts[(k < len(f0)) & ~np.isnan(f0[np.minimum(k, len(f0) - 1)])]
    frames = np.lib.stride_tricks.sliding_window_view(y, n)[starts] * np.hamming(n)
    r = np.stack([np.einsum("ij,ij->i", frames[:, :n - lag], frames[:, lag:]) for lag in range(p + 1)], 1)
    r = r[r[:, 0] > 1e-10]
    if len(r) < 3:
        return float("nan")
    # LPC by the normal equations, all frames at once (a tiny diagonal load keeps them solvable)
    toeplitz = r[:, np.abs(np.arange(p)[:, None] - np.arange(p)[None, :])]
    toeplitz[:, np.arange(p), np.arange(p)] *= 1 + 1e-9
    a = np.linalg.solve(toeplitz, -r[:, 1:, None])[..., 0]
    companion = np.zeros((len(a), p, p))
    companion[:, 0, :] = -a
    companion[:, np.arange(1, p), np.arange(p - 1)] = 1.0
    roots = np.linalg.eigvals(companion)  # the poles: roots of 1 + a1 z^-1 + ... + ap z^-p
    freq = np.angle(roots) * _LPC_RATE / (2 * np.pi)
    bw = -_LPC_RATE / np.pi * np.log(np.maximum(np.abs(roots), 1e-12))
    ok = (np.imag(roots) > 0) & (freq > 200) & (bw < 500) & (freq < 4800)
    formants = np.sort(np.where(ok, freq, np.inf), axis=1)
    found = formants[ok.sum(axis=1) >= 4, 2:4]
    if len(found) < 3:
        return float("nan")
    f3, f4 = np.median(found, axis=0)
    return float((f3 / 2.5 + f4 / 3.5) / 2)


def prosody_codes(wav: np.ndarray, sample_rate: int, settings: ProsodySettings,
                  track: tuple[np.ndarray, float] | None = None) -> np.ndarray:
    """(2, T) int16: row 0 the F0 bin (f0_bins = unvoiced), row 1 the level bin, T hops.
    track: `yin_track(wav, sample_rate)` when the caller has it already."""
    from aligncap_core.data.synth.measure import frame_levels_db, yin_track

    x = np.asarray(wav, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"prosody_codes needs mono samples, got shape {x.shape}")
    n_hops = max(1, int(np.ceil(len(x) / (settings.hop_s * sample_rate))))
    f0, f0_hop = track if track is not None else yin_track(x, sample_rate)
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


def voice_bin(spacing_hz: float, settings: ProsodySettings) -> int:
    """The voice token's bin of a formant spacing (voice_bins: none measured)."""
    if not np.isfinite(spacing_hz) or spacing_hz <= 0:
        return settings.voice_bins
    lo, hi = np.log(settings.voice_min_hz), np.log(settings.voice_max_hz)
    pos = (np.log(spacing_hz) - lo) / (hi - lo)
    return int(np.clip(pos * settings.voice_bins, 0, settings.voice_bins - 1))


def prosody_stream(wav: np.ndarray, sample_rate: int, settings: ProsodySettings) -> list[str]:
    """The prosody tokens of mono samples: what training and captioning both read."""
    from aligncap_core.data.synth.measure import yin_track

    x = np.asarray(wav, dtype=np.float64)
    track = yin_track(x, sample_rate) if x.ndim == 1 else None
    codes = prosody_codes(x, sample_rate, settings, track)
    voice = voice_bin(formant_spacing(x, sample_rate, *track), settings) if settings.voice_bins else None
    return prosody_to_tokens(codes, settings, voice)


def prosody_to_tokens(codes: np.ndarray, settings: ProsodySettings, voice: int | None = None) -> list[str]:
    """(2, T) prosody codes -> `[<prosody>, <pf..>, <pl..>, ..., </prosody>]`; with a `voice`
    bin (`voice_bin`), its token first."""
    out = [PROSODY_START]
    if voice is not None:
        out.append(NO_VOICE if voice >= settings.voice_bins else f"<pv{voice}>")
    for f, lv in np.asarray(codes).T.tolist():
        out += [UNVOICED if f >= settings.f0_bins else f"<pf{f}>", f"<pl{lv}>"]
    out.append(PROSODY_END)
    return out


def active_span(wav: np.ndarray, sample_rate: int, settings: ProsodySettings) -> tuple[int, int]:
    """Samples [start, end) the student reads of a clip: all of them, or with `trim_db` > 0 the
    span from trim_pad_s before the first to trim_pad_s after the last 10 ms frame within
    trim_db of the loudest one. Leading and trailing silence is not speech: a clip that is
    two-thirds silence (many real recordings) otherwise reads as slow and soft."""
    from aligncap_core.data.synth.measure import frame_levels_db

    n = len(wav)
    if not settings.trim_db or n == 0:
        return 0, n
    levels = frame_levels_db(np.asarray(wav, dtype=np.float64), sample_rate)
    active = np.flatnonzero(levels > levels.max() - settings.trim_db)
    hop, pad = int(0.01 * sample_rate), int(settings.trim_pad_s * sample_rate)
    return max(0, int(active[0]) * hop - pad), min(n, (int(active[-1]) + 1) * hop + pad)


def clip_streams(codes: np.ndarray, wav: np.ndarray, sample_rate: int,
                 settings: ProsodySettings) -> tuple[np.ndarray, list[str]]:
    """(the codes over the clip's `active_span`, the prosody tokens of that span): what the
    student reads of a clip whose codes `(n_q, T)` were encoded from all of `wav`. The one place
    training, evaluation and captioning turn a clip into its two streams."""
    start, end = active_span(wav, sample_rate, settings)
    n, frames = len(wav), codes.shape[-1]
    if (start, end) != (0, n):
        first = start * frames // n
        codes = codes[..., first:max(first + 1, -(-end * frames // n))]
    return codes, prosody_stream(wav[start:end], sample_rate, settings)
