"""Signal transforms of one copy: speed, tempo (WSOLA), pitch, gain, resample chain, reverb, noise;
the voice-timbre and channel transforms (formant, jitter, eq, bandpass, codec) are in channel.py."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np

from aligncap_core.data import audio
from aligncap_core.data.augment.config import ORDER
from aligncap_core.data.synth.measure import frame_levels_db
from aligncap_core.errors import ConfigError

_ACTIVE_DB = 35.0  # measure.py's active-frame threshold


def _ratio(x: float, max_den: int = 64) -> tuple[int, int]:
    """(up, down) with up / down ~= x (resample_poly arguments)."""
    f = Fraction(x).limit_denominator(max_den)
    return max(f.numerator, 1), max(f.denominator, 1)


def _resample_poly(x: np.ndarray, up: int, down: int) -> np.ndarray:
    from scipy.signal import resample_poly

    if up == down:
        return np.asarray(x, dtype=np.float64)
    return resample_poly(np.asarray(x, dtype=np.float64), up, down)


def speed_change(x: np.ndarray, factor: float) -> tuple[np.ndarray, float]:
    """Play `factor` times faster (F0 x factor, duration / factor). Returns (y, exact factor)."""
    up, down = _ratio(1.0 / factor)
    return _resample_poly(x, up, down), down / up


def wsola(x: np.ndarray, factor: float, sr: int) -> np.ndarray:
    """WSOLA time-stretch (Verhelst & Roelands 1993): `factor` > 1 is faster, length / factor.

    30 ms Hann frames at 50% overlap; each analysis frame is shifted by up to +-12 ms (one period
    of an 83 Hz voice) to the position that best continues the previous frame (normalised
    cross-correlation), so periods line up and the pitch is kept.
    """
    x = np.asarray(x, dtype=np.float64)
    n = int(round(0.030 * sr)) // 2 * 2
    hs, tol = n // 2, int(round(0.012 * sr))
    n_out = int(round(len(x) / factor))
    if n_out < 1 or len(x) < n:
        return x[: max(n_out, 1)].copy()
    win = 0.5 - 0.5 * np.cos(2 * np.pi * np.arange(n) / n)  # periodic Hann: sums to 1 at hop n/2
    xp = np.concatenate([np.zeros(tol), x, np.zeros(2 * n + 2 * tol)])
    n_frames = n_out // hs + 2
    y = np.zeros(n_frames * hs + n)
    sq = np.concatenate([[0.0], np.cumsum(xp * xp)])
    prev = 0
    for k in range(n_frames):
        if k == 0:
            pos = 0
        else:
            nominal = min(int(round(k * hs * factor)), len(x))
            lo = nominal - tol  # candidate positions lo .. lo + 2 tol (in x coordinates)
            region = xp[lo + tol : lo + tol + n + 2 * tol]
            target = xp[prev + tol + hs : prev + tol + hs + n]
            corr = np.correlate(region, target, mode="valid")
            starts = np.arange(lo + tol, lo + tol + 2 * tol + 1)
            energy = sq[starts + n] - sq[starts]
            pos = lo + int(np.argmax(corr / np.sqrt(energy + 1e-9)))
        y[k * hs : k * hs + n] += win * xp[pos + tol : pos + tol + n]
        prev = pos
    return y[:n_out]


def pitch_shift(x: np.ndarray, semitones: float, sr: int) -> tuple[np.ndarray, float]:
    """F0 x 2^(st/12) with the duration kept (WSOLA stretch, then resample). Returns (y, exact st)."""
    up, down = _ratio(2.0 ** (-semitones / 12.0))  # resample by 1/f raises F0 by f
    f = down / up
    stretched = wsola(x, 1.0 / f, sr)
    y = _resample_poly(stretched, up, down)
    y = y[: len(x)] if len(y) >= len(x) else np.concatenate([y, np.zeros(len(x) - len(y))])
    return y, 12.0 * math.log2(f)


def band_limit(x: np.ndarray, sr: int, rate: int) -> np.ndarray:
    """sr -> rate -> sr with soxr VHQ (prepare's resampler); same length as x."""
    y = audio.resample(audio.resample(np.asarray(x, dtype=np.float32), sr, rate), rate, sr).astype(np.float64)
    return y[: len(x)] if len(y) >= len(x) else np.concatenate([y, np.zeros(len(x) - len(y))])


def reverb_ir(rng: np.random.Generator, rt60: float, sr: int) -> np.ndarray:
    """Late-reverb impulse response: Gaussian noise x exp(-6.91 t / RT60) (-60 dB at RT60),
    1 ms of pre-delay, unit energy. Length RT60 seconds."""
    n = max(int(round(rt60 * sr)), 2)
    t = np.arange(n) / sr
    h = rng.standard_normal(n) * np.exp(-6.907755 * t / rt60)
    h[: int(0.001 * sr)] = 0.0
    return h / np.sqrt(np.sum(h * h))


def add_reverb(x: np.ndarray, rng: np.random.Generator, rt60: float, wet: float, sr: int) -> np.ndarray:
    """(1 - wet) dry + wet reverberant, scaled so the total power ~ the dry power; the output is
    longer than x by the impulse response (the room keeps ringing after the speech ends)."""
    from scipy.signal import fftconvolve

    h = reverb_ir(rng, rt60, sr)
    rev = fftconvolve(np.asarray(x, dtype=np.float64), h)
    dry = np.concatenate([np.asarray(x, dtype=np.float64), np.zeros(len(h) - 1)])
    return ((1.0 - wet) * dry + wet * rev) / math.sqrt((1.0 - wet) ** 2 + wet ** 2)


def noise_signal(rng: np.random.Generator, n: int, color: str) -> np.ndarray:
    """White or pink (1/f power) Gaussian noise, unit mean power."""
    w = rng.standard_normal(n)
    if color == "pink":
        spec = np.fft.rfft(w)
        f = np.arange(len(spec), dtype=np.float64)
        f[0] = 1.0
        spec /= np.sqrt(f)
        spec[0] = 0.0
        w = np.fft.irfft(spec, n)
    return w / math.sqrt(np.mean(w * w))


def active_mask(x: np.ndarray, sr: int) -> np.ndarray:
    """measure.py's speech frames: 10 ms frames within 35 dB of the loudest one."""
    lv = frame_levels_db(np.asarray(x, dtype=np.float64), sr)
    return lv > lv.max() - _ACTIVE_DB


def level_over(x: np.ndarray, mask: np.ndarray, sr: int) -> float:
    """Mean power (dBFS) of the frames of `x` selected by `mask` (frames beyond x count as 0)."""
    lv = frame_levels_db(np.asarray(x, dtype=np.float64), sr)
    p = 10.0 ** (lv / 10.0)
    p = np.concatenate([p, np.zeros(max(0, len(mask) - len(p)))])[: len(mask)]
    return float(10.0 * np.log10(np.mean(p[mask]) + 1e-12)) if mask.any() else -120.0


def add_noise(x: np.ndarray, rng: np.random.Generator, snr_db: float, color: str, sr: int) -> np.ndarray:
    """x + noise whose mean power is `snr_db` below x's active speech level (measure.py level)."""
    x = np.asarray(x, dtype=np.float64)
    speech_db = level_over(x, active_mask(x, sr), sr)
    noise = noise_signal(rng, len(x), color) * 10.0 ** ((speech_db - snr_db) / 20.0)
    return x + noise


def apply_transform(x: np.ndarray, t: dict, sr: int, rng: np.random.Generator) -> np.ndarray:
    """Apply one planned transform (a dict from `plan_copy`); updates `t` with exact values."""
    name = t["name"]
    if name == "speed":
        y, exact = speed_change(x, t["factor"])
        t["factor_exact"] = round(exact, 6)
        return y
    if name == "tempo":
        return wsola(x, t["factor"], sr)
    if name == "pitch":
        if t.get("formants") == "kept":  # the same shift with the envelope put back
            from aligncap_core.data.augment.channel import voice_shift

            y, exact = voice_shift(x, t["semitones"], sr)
        else:
            y, exact = pitch_shift(x, t["semitones"], sr)
        t["semitones_exact"] = round(exact, 4)
        return y
    if name == "gain":
        return np.asarray(x, dtype=np.float64) * 10.0 ** (t["db"] / 20.0)
    if name == "resample":
        return band_limit(x, sr, t["rate"])
    if name == "reverb":
        return add_reverb(x, rng, t["rt60_s"], t["wet"], sr)
    if name == "noise":
        return add_noise(x, rng, t["snr_db"], t["color"], sr)
    from aligncap_core.data.augment import channel

    if name == "voice":
        return channel.voice_shift(x, t["semitones"], sr)[0]
    if name == "formant":
        return channel.formant_warp(x, t["alpha"], sr)
    if name == "jitter":
        return channel.jitter_shimmer(x, rng, t["jitter"], t["shimmer"], sr)
    if name == "eq":
        return channel.equalise(x, t["tilt"], [tuple(p) for p in t["peaks"]], sr)
    if name == "bandpass":
        return channel.bandpass(x, t["low_hz"], t["high_hz"], sr)
    if name == "codec":
        return channel.codec_roundtrip(x, t["codec"], sr)
    raise ConfigError(f"unknown transform {name!r} (known: {', '.join(ORDER)})")
