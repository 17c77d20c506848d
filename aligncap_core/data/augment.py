"""Seeded audio augmentation of a prepared dataset whose labels stay physically true.

    augment_dataset("runs/prep", "runs/prep-aug", AugmentConfig(copies=2, seed=0))
    aligncap data augment runs/prep runs/prep-aug --copies 2 --seed 0 [--config augment.yaml]

Only `train` rows are augmented. valid, test and zeroshot rows are copied unchanged and never
get augmented copies, so evaluation always runs on the clips as synthesised or recorded.

Transforms (each with `enabled` and `p`, the chance that it is applied to a copy; a copy that
draws none gets one enabled transform chosen uniformly, so no copy is a plain duplicate):

| name     | what it does                                            | moves labels      |
|----------|---------------------------------------------------------|-------------------|
| speed    | resample_poly speed change: F0 x s, duration / s        | pitch, speed      |
| tempo    | WSOLA time-stretch (F0 kept): duration / f              | speed             |
| pitch    | WSOLA stretch + resample_poly: F0 x 2^(st/12), same     | pitch             |
|          | duration                                                |                   |
| gain     | multiply by 10^(dB/20)                                  | volume            |
| resample | sr -> 8 or 16 kHz -> sr (soxr VHQ): band-limits to the   | none              |
|          | intermediate Nyquist                                    |                   |
| reverb   | exponentially decaying noise impulse response (RT60 s), | none              |
|          | mixed wet/dry at the dry level; the tail lengthens the  |                   |
|          | clip by up to RT60                                      |                   |
| noise    | white or pink noise at an SNR from a list (>= 10 dB)    | none              |

tempo, pitch and gain have two modes. `range` draws the amount from a configured range.
`target` picks a label for the attribute the transform moves, from the labels that are
reachable within `max_*` (and, with `emotion_consistent`, allowed by the clip's emotion
profile), then aims at that label's band centre (`profiles.TARGET`) with some jitter. A target
can be the clip's current label. speed always uses `range`.

Relabelling. A row of the built-in corpus carries `measured`: its F0, duration and level
relative to the same voice's normal rendering of the same sentence (f0_ratio, duration_ratio,
level_db_diff; `checks.compare`). The reference is rebuilt from the row and the stored clip as
measured here: ref_f0 = f0(clip) / f0_ratio, ref_duration = duration(clip) / duration_ratio,
ref_level = level(clip) - level_db_diff. The stored clip is measured again, not taken from
`measured`, because `prepare` resampled it (22.05 -> 24 kHz moves the YIN F0 by up to 2%); this
way an unchanged clip measures exactly its row's ratios. After the label-moving transforms
(always applied first) the clip is measured again (`measure.measure`), compared with the
reference (`checks.compare`) and each of pitch, speed and volume gets the label whose band in
`checks.THRESHOLDS` contains the new value; then `checks.check` must pass (>= 10 voiced frames,
peak < 0.99). A value in the gap between two bands is never guessed: the copy is rejected.

speed and pitch resample the signal, so the formants (timbre) move with F0 by the same factor
while the speaker's gender label is kept; that is why the defaults stay within +-5% (speed) and
5 semitones (pitch: formants moved by at most 33%). tempo keeps F0 and formants.
Formant-preserving shifts (LPC residual, cepstral envelope correction) were tried and left out:
on the espeak voices they changed octave-band levels by up to 9 dB.

Degradations (resample, reverb, noise) are applied after the relabelling and do not change the
labels: they change the channel, not how the speaker spoke. Assumptions: at SNR >= 10 dB the
pitch and speed of the speech stay plainly audible (lower SNRs are a config error); the reverb
is mixed at the dry level. Re-measuring F0 and duration on a noisy or reverberant clip would
measure the noise floor and the tail rather than the speech, so these are not re-measured.
The level is checked instead: the degraded clip's power over the frames that were speech in
the clean clip must still pass the volume check, and the peak must stay below 0.99.

Captions. Captions depend only on the labels and on a few measured gates ("almost shouting"
needs level_db_diff >= 6, "almost whispering" <= -8, "monotone"/"flat" spread_ratio <= 0.5,
"sing-song"/"expressive" >= 1.5). When a label or a gate changes, the captions are rewritten by
the corpus's own generator (`captions.write_captions`, seeded per copy, same number of
captions) and `caption_attributes` with them; otherwise the source captions are kept.

Rejects. A copy is never dropped silently: it is kept or written to `rejects.jsonl` with a
reason from `REJECT_REASONS` and counted; kept + rejected == produced. With
`emotion_consistent` (default) a copy whose new label the corpus never draws for its emotion
and intensity (a loud "sad" clip) is rejected: the emotion label must stay plausible too.
Train rows without a
reference (`measured` / pitch-speed-volume attributes, e.g. real data) are not augmented and
are counted under `skipped`.

Output folder (a prepared dataset, usable by `data clues` / `data tokenize` / training):
    manifest.jsonl    every source row (audio copied) followed by its kept copies. A copy has id
                      `<id>-aug<k>`, `augmented_from`, `augment` {copy, transforms with their
                      parameters, labels_before when a label changed, captions kept or
                      regenerated, check of the degraded level}, new `attributes`, `measured`,
                      `audio_sha256`, `duration_s`; `source_audio`/`source_sha256` name the
                      source clip. Stale keys are removed: `codes` from every row (re-run `data
                      tokenize`), `sha256` (the synth PCM hash) from copies, and `clues`,
                      `clue_attributes`, `p_act` from copies whose captions were rewritten
                      (re-run `data clues`).
    rejects.jsonl     id, augmented_from, reason, message, augment, measured, attributes
    augment.json      config and counts (no timings: reproducible byte for byte)
    fingerprint.json  like prepare's (content hash of the kept rows and the settings)
    audio/<id>.wav    mono float32 WAV at the source rate (`audio.encode_wav`)

Determinism: every draw for copy k of row `id` comes from `default_rng([seed, hash(id), k,
...])`, one stream per transform, so the output is byte-identical for a seed and does not
depend on the row order or on the other rows. Audio files already on disk with identical bytes
are left alone, files are replaced atomically and the manifest is written last, so an
interrupted run leaves the previous output readable and a re-run rewrites nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from aligncap_core.data import audio
from aligncap_core.data.prepare import AUDIO_FORMAT, STALE_KEYS, safe_name
from aligncap_core.data.synth import profiles as P
from aligncap_core.data.synth.captions import write_captions
from aligncap_core.data.synth.checks import MAX_PEAK, QUANTITY, THRESHOLDS, check, compare
from aligncap_core.data.synth.measure import Measurement, frame_levels_db, measure
from aligncap_core.errors import ConfigError, DataError
from aligncap_core.utils import (
    atomic_write,
    fingerprint,
    sha256_bytes,
    sha256_file,
    stable_json,
    write_jsonl,
)
from aligncap_core.utils import progress as progress_bar

PROSODY = ("speed", "tempo", "pitch", "gain")  # applied first, then re-measured and relabelled
DEGRADE = ("resample", "reverb", "noise")  # applied after; labels kept, level checked
ORDER = PROSODY + DEGRADE  # the order transforms are applied in (numbers seed the streams)

REJECT_REASONS: dict[str, str] = {
    "ambiguous": "a measured quantity fell between two label bands (or is not a number)",
    "too_few_voiced": "fewer than 10 voiced frames: the F0 is not trustworthy",
    "clipped": "the peak reached 0.99 of full scale",
    "volume_changed": "after noise / reverb / resampling the level no longer fits the volume label",
    "emotion_inconsistent": "a new label is never drawn for the clip's emotion and intensity",
}

MIN_SNR_DB = 10.0
_ACTIVE_DB = 35.0  # measure.py's active-frame threshold
_CAPTIONS_STREAM = 100  # rng stream of rewritten captions (numbers are part of the seed)
_SIGNAL_STREAM = 200  # rng stream of noise / reverb signals


# --- config ------------------------------------------------------------------------------------

def _pair(key: str, v: Any, lo: float | None = None, hi: float | None = None) -> tuple[float, float]:
    if not (isinstance(v, (list, tuple)) and len(v) == 2 and all(_is_num(x) for x in v)):
        raise ConfigError(f"{key} must be a [min, max] pair of numbers, got {v!r}")
    a, b = float(v[0]), float(v[1])
    if a > b:
        raise ConfigError(f"{key} must be [min, max] with min <= max, got {v!r}")
    if (lo is not None and a < lo) or (hi is not None and b > hi):
        raise ConfigError(f"{key} must lie within [{lo}, {hi}], got {v!r}")
    return a, b


def _is_num(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def _common(name: str, c: Any) -> None:
    if not isinstance(c.enabled, bool):
        raise ConfigError(f"{name}.enabled must be true or false, got {c.enabled!r}")
    if not (_is_num(c.p) and 0.0 <= c.p <= 1.0):
        raise ConfigError(f"{name}.p must be a probability in [0, 1], got {c.p!r}")
    mode = getattr(c, "mode", "range")
    if mode not in ("range", "target"):
        raise ConfigError(f"{name}.mode must be 'range' or 'target', got {mode!r}")


def _positive(key: str, v: Any) -> float:
    if not (_is_num(v) and v > 0):
        raise ConfigError(f"{key} must be a number > 0, got {v!r}")
    return float(v)


@dataclass
class SpeedConfig:
    """Speed perturbation (pitch and tempo together): factor s > 1 is faster and higher."""

    enabled: bool = True
    p: float = 0.2
    factor: tuple[float, float] = (0.95, 1.05)

    def __post_init__(self) -> None:
        _common("speed", self)
        self.factor = _pair("speed.factor", self.factor, 0.5, 2.0)


@dataclass
class TempoConfig:
    """Time-stretch without pitch change: factor f > 1 is faster (duration / f)."""

    enabled: bool = True
    p: float = 0.3
    mode: str = "target"
    factor: tuple[float, float] = (0.9, 1.1)  # range mode
    jitter: float = 0.06  # target mode: duration ratio drawn in TARGET x exp(+-jitter)
    max_factor: float = 1.6  # target mode: largest stretch (either way) used to reach a target

    def __post_init__(self) -> None:
        _common("tempo", self)
        self.factor = _pair("tempo.factor", self.factor, 0.5, 2.0)
        self.jitter = _positive("tempo.jitter", self.jitter) if self.jitter else 0.0
        if _positive("tempo.max_factor", self.max_factor) < 1 or self.max_factor > 2:
            raise ConfigError(f"tempo.max_factor must be in [1, 2], got {self.max_factor!r}")


@dataclass
class PitchConfig:
    """Pitch shift in semitones, duration kept."""

    enabled: bool = True
    p: float = 0.3
    mode: str = "target"
    semitones: tuple[float, float] = (-2.0, 2.0)  # range mode
    jitter: float = 0.06  # target mode: F0 ratio drawn in TARGET x exp(+-jitter)
    # target mode: largest shift used to reach a target. The resampling moves the formants with
    # F0 (by 2^(st/12)) while the gender label is kept, so large shifts are not offered.
    max_semitones: float = 5.0

    def __post_init__(self) -> None:
        _common("pitch", self)
        self.semitones = _pair("pitch.semitones", self.semitones, -12.0, 12.0)
        self.jitter = _positive("pitch.jitter", self.jitter) if self.jitter else 0.0
        if _positive("pitch.max_semitones", self.max_semitones) > 12:
            raise ConfigError(f"pitch.max_semitones must be in (0, 12], got {self.max_semitones!r}")


@dataclass
class GainConfig:
    """Level change in dB; the volume label is re-derived from the measured level."""

    enabled: bool = True
    p: float = 0.5
    mode: str = "target"
    db: tuple[float, float] = (-8.0, 8.0)  # range mode
    jitter_db: float = 1.5  # target mode: level drawn in TARGET +- jitter_db
    max_db: float = 14.0  # target mode: largest gain (either way) used to reach a target
    max_peak: float = 0.95  # target mode: targets whose predicted peak exceeds this are skipped

    def __post_init__(self) -> None:
        _common("gain", self)
        self.db = _pair("gain.db", self.db, -40.0, 40.0)
        self.jitter_db = _positive("gain.jitter_db", self.jitter_db) if self.jitter_db else 0.0
        _positive("gain.max_db", self.max_db)
        if not (_is_num(self.max_peak) and 0 < self.max_peak < MAX_PEAK):
            raise ConfigError(f"gain.max_peak must be in (0, {MAX_PEAK}), got {self.max_peak!r}")


@dataclass
class ResampleConfig:
    """Band-limiting chain sr -> rate -> sr (a telephone / wideband channel)."""

    enabled: bool = True
    p: float = 0.2
    rates: tuple[int, ...] = (8000, 16000)

    def __post_init__(self) -> None:
        _common("resample", self)
        if (not isinstance(self.rates, (list, tuple)) or not self.rates
                or not all(isinstance(r, int) and not isinstance(r, bool) and r >= 2000 for r in self.rates)):
            raise ConfigError(f"resample.rates must be a non-empty list of rates in Hz (integers >= 2000), "
                              f"got {self.rates!r}")
        self.rates = tuple(self.rates)


@dataclass
class ReverbConfig:
    """Room reverberation: decaying-noise impulse response, RT60 in seconds, wet share."""

    enabled: bool = True
    p: float = 0.3
    rt60: tuple[float, float] = (0.2, 0.6)
    wet: tuple[float, float] = (0.1, 0.4)

    def __post_init__(self) -> None:
        _common("reverb", self)
        self.rt60 = _pair("reverb.rt60", self.rt60, 0.05, 3.0)
        self.wet = _pair("reverb.wet", self.wet, 0.0, 1.0)


@dataclass
class NoiseConfig:
    """Additive noise at an SNR (dB, against the active speech level) from a list."""

    enabled: bool = True
    p: float = 0.4
    snr_db: tuple[float, ...] = (30.0, 20.0, 10.0)
    colors: tuple[str, ...] = ("white", "pink")

    def __post_init__(self) -> None:
        _common("noise", self)
        if (not isinstance(self.snr_db, (list, tuple)) or not self.snr_db
                or not all(_is_num(s) for s in self.snr_db)):
            raise ConfigError(f"noise.snr_db must be a non-empty list of numbers (dB), got {self.snr_db!r}")
        if min(self.snr_db) < MIN_SNR_DB:
            raise ConfigError(f"noise.snr_db must be >= {MIN_SNR_DB:g} dB (below that the pitch and "
                              f"speed labels are no longer plainly audible), got {list(self.snr_db)}")
        self.snr_db = tuple(float(s) for s in self.snr_db)
        if (not isinstance(self.colors, (list, tuple)) or not self.colors
                or any(c not in ("white", "pink") for c in self.colors)):
            raise ConfigError(f"noise.colors must be a non-empty list of 'white' / 'pink', got {self.colors!r}")
        self.colors = tuple(self.colors)


_SECTIONS = {"speed": SpeedConfig, "tempo": TempoConfig, "pitch": PitchConfig, "gain": GainConfig,
             "resample": ResampleConfig, "reverb": ReverbConfig, "noise": NoiseConfig}


@dataclass
class AugmentConfig:
    """What `augment_dataset` does; `from_dict` builds one from YAML, naming any bad key."""

    copies: int = 1  # augmented copies per train clip (0 = copy the dataset unchanged)
    seed: int = 0
    # Reject copies whose new pitch / speed / volume label is never drawn for the clip's emotion
    # at its intensity (profiles.PROFILES), e.g. a loud "sad" clip; emotions not in the
    # profiles (other data) are not constrained. Target modes only aim at allowed labels.
    emotion_consistent: bool = True
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    tempo: TempoConfig = field(default_factory=TempoConfig)
    pitch: PitchConfig = field(default_factory=PitchConfig)
    gain: GainConfig = field(default_factory=GainConfig)
    resample: ResampleConfig = field(default_factory=ResampleConfig)
    reverb: ReverbConfig = field(default_factory=ReverbConfig)
    noise: NoiseConfig = field(default_factory=NoiseConfig)

    def __post_init__(self) -> None:
        for k in ("copies", "seed"):
            v = getattr(self, k)
            if not isinstance(v, int) or isinstance(v, bool) or v < 0:
                raise ConfigError(f"{k} must be an integer >= 0, got {v!r}")
        if not isinstance(self.emotion_consistent, bool):
            raise ConfigError(f"emotion_consistent must be true or false, got {self.emotion_consistent!r}")
        for name, cls in _SECTIONS.items():
            if not isinstance(getattr(self, name), cls):
                raise ConfigError(f"{name} must be a mapping of {cls.__name__} keys")
        if self.copies and not any(getattr(self, n).enabled for n in ORDER):
            raise ConfigError("every transform is disabled (enabled: false); enable one or set copies: 0")

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> AugmentConfig:
        """Build from a (YAML) mapping; unknown keys at any depth raise ConfigError naming them."""
        d = dict(d or {})
        top = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - top)
        if unknown:
            raise ConfigError(f"augment config: unknown key {', '.join(unknown)} (known: {', '.join(sorted(top))})")
        kwargs: dict[str, Any] = {}
        for k, v in d.items():
            if k in _SECTIONS:
                sub = _SECTIONS[k]
                if v is None:
                    v = {}
                if not isinstance(v, dict):
                    raise ConfigError(f"augment config: {k} must be a mapping, got {type(v).__name__}")
                known = {f.name for f in dataclasses.fields(sub)}
                bad = sorted(set(v) - known)
                if bad:
                    raise ConfigError(f"augment config: unknown key {', '.join(f'{k}.{b}' for b in bad)} "
                                      f"(known: {', '.join(sorted(known))})")
                kwargs[k] = sub(**v)
            else:
                kwargs[k] = v
        return cls(**kwargs)

    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples -> lists


def load_augment_config(path: str | os.PathLike | None = None, **overrides: Any) -> AugmentConfig:
    """AugmentConfig from a YAML file (or defaults) with non-None `overrides` (copies, seed) on top."""
    from aligncap_core.utils import read_yaml_mapping

    d = read_yaml_mapping(path, "augment config") if path else {}
    d.update({k: v for k, v in overrides.items() if v is not None})
    return AugmentConfig.from_dict(d)


# --- signal transforms -------------------------------------------------------------------------

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


# --- labels ------------------------------------------------------------------------------------

def label_for(attr: str, value: float) -> str | None:
    """The label whose `checks.THRESHOLDS` band holds `value`; None between bands (or nan)."""
    if value != value:
        return None
    for label, (lo, hi) in THRESHOLDS[attr].items():
        if lo <= value <= hi:
            return label
    return None


def allowed_labels(attributes: dict, attr: str) -> set[str] | None:
    """Labels of `attr` the corpus draws for this emotion at this intensity (None: unconstrained)."""
    prof = P.PROFILES.get(attributes.get("emotion"))
    if prof is None:
        return None
    weights = getattr(prof, attr)
    if attributes.get("intensity") == "strong":
        weights = prof.strong.get(attr, weights)
    return {k for k, w in weights.items() if w > 0}


def has_reference(row: dict) -> bool:
    m, a = row.get("measured"), row.get("attributes")
    return (isinstance(m, dict) and isinstance(a, dict)
            and all(_is_num(m.get(q)) for q in QUANTITY.values())
            and all(m.get(q) != 0 for q in ("f0_ratio", "duration_ratio"))
            and all(a.get(k) in THRESHOLDS[k] for k in QUANTITY))


def reference(row: dict, clip: Measurement) -> Measurement:
    """The voice's normal rendering as this measurement sees it, rebuilt from the stored clip and
    the row's ratios (see the module docstring)."""
    m = row["measured"]
    spread = m.get("spread_ratio")
    return Measurement(
        f0_hz=clip.f0_hz / m["f0_ratio"],
        f0_spread_st=clip.f0_spread_st / spread if _is_num(spread) and spread > 0 else clip.f0_spread_st,
        duration_s=clip.duration_s / m["duration_ratio"],
        level_dbfs=clip.level_dbfs - m["level_db_diff"],
        peak=float("nan"),
        voiced_frames=0,
    )


def _gates(measured: dict) -> tuple[bool, ...]:
    """The measured conditions captions.py words depend on, besides the labels."""
    lv, sp = measured.get("level_db_diff", 0.0), measured.get("spread_ratio", 1.0)
    return lv >= 6.0, lv <= -8.0, sp <= 0.5, sp >= 1.5


# --- planning one copy -------------------------------------------------------------------------

def _id_key(row_id: str) -> int:
    return int(sha256_bytes(row_id.encode("utf-8"))[:8], 16)


def _target(rng: np.random.Generator, attr: str, current: float, labels: list[str],
            jitter: float, log_scale: bool) -> tuple[str, float]:
    """(label, amount): a label drawn uniformly from `labels` and the multiplicative factor (or dB
    step) that moves `current` to that label's TARGET with jitter."""
    label = labels[int(rng.integers(len(labels)))]
    centre = P.TARGET[attr][label]
    if log_scale:
        goal = centre * math.exp(rng.uniform(-jitter, jitter))
        return label, goal / current
    return label, centre + rng.uniform(-jitter, jitter) - current


def plan_copy(row: dict, k: int, cfg: AugmentConfig, sr: int) -> list[dict]:
    """The transforms (with parameters) of copy k of `row`: deterministic for (seed, id, k)."""
    key = _id_key(row["id"])
    pick = np.random.default_rng([cfg.seed, key, k])
    enabled = [n for n in ORDER if getattr(cfg, n).enabled
               and not (n == "resample" and not any(r < sr for r in cfg.resample.rates))]
    draws = {n: pick.random() for n in ORDER}  # one draw each, enabled or not: stable streams
    chosen = [n for n in enabled if draws[n] < getattr(cfg, n).p]
    if not chosen and enabled:
        chosen = [enabled[int(pick.integers(len(enabled)))]]
    m, attrs = row["measured"], row["attributes"]
    pred = {"pitch": float(m["f0_ratio"]), "speed": float(m["duration_ratio"]),
            "volume": float(m["level_db_diff"])}
    peak = float(m.get("peak", 0.0) or 0.0)

    def candidates(attr: str, reachable: list[str]) -> list[str]:
        allowed = allowed_labels(attrs, attr) if cfg.emotion_consistent else None
        out = [lb for lb in reachable if allowed is None or lb in allowed]
        return sorted(out) or [attrs[attr]]

    plan = []
    for n in chosen:
        rng = np.random.default_rng([cfg.seed, key, k, ORDER.index(n) + 1])
        c = getattr(cfg, n)
        if n == "speed":
            s = round(float(rng.uniform(*c.factor)), 4)
            pred["pitch"] *= s
            pred["speed"] /= s
            plan.append({"name": "speed", "factor": s})
        elif n == "tempo":
            if c.mode == "target":
                lim = math.log(c.max_factor)
                reach = [lb for lb, v in P.TARGET["speed"].items() if abs(math.log(v / pred["speed"])) <= lim]
                label, ratio = _target(rng, "speed", pred["speed"], candidates("speed", reach), c.jitter, True)
                f = round(float(np.clip(1.0 / ratio, 1.0 / c.max_factor, c.max_factor)), 4)
                plan.append({"name": "tempo", "factor": f, "target": label})
            else:
                f = round(float(rng.uniform(*c.factor)), 4)
                plan.append({"name": "tempo", "factor": f})
            pred["speed"] /= f
        elif n == "pitch":
            if c.mode == "target":
                lim = c.max_semitones
                reach = [lb for lb, v in P.TARGET["pitch"].items() if abs(12 * math.log2(v / pred["pitch"])) <= lim]
                label, ratio = _target(rng, "pitch", pred["pitch"], candidates("pitch", reach), c.jitter, True)
                st = round(float(np.clip(12.0 * math.log2(ratio), -lim, lim)), 3)
                plan.append({"name": "pitch", "semitones": st, "target": label})
            else:
                st = round(float(rng.uniform(*c.semitones)), 3)
                plan.append({"name": "pitch", "semitones": st})
            pred["pitch"] *= 2.0 ** (st / 12.0)
        elif n == "gain":
            if c.mode == "target":
                # reachable within max_db, and without the peak passing max_peak at the top jitter
                reach = [lb for lb, v in P.TARGET["volume"].items() if abs(v - pred["volume"]) <= c.max_db
                         and peak * 10.0 ** ((v + c.jitter_db - pred["volume"]) / 20.0) <= c.max_peak]
                label, db = _target(rng, "volume", pred["volume"], candidates("volume", reach),
                                    c.jitter_db, False)
                db = round(float(np.clip(db, -c.max_db, c.max_db)), 2)
                plan.append({"name": "gain", "db": db, "target": label})
            else:
                db = round(float(rng.uniform(*c.db)), 2)
                plan.append({"name": "gain", "db": db})
            pred["volume"] += db
        elif n == "resample":
            rates = [r for r in c.rates if r < sr]
            plan.append({"name": "resample", "rate": int(rates[int(rng.integers(len(rates)))])})
        elif n == "reverb":
            plan.append({"name": "reverb", "rt60_s": round(float(rng.uniform(*c.rt60)), 3),
                         "wet": round(float(rng.uniform(*c.wet)), 3)})
        elif n == "noise":
            plan.append({"name": "noise", "snr_db": float(c.snr_db[int(rng.integers(len(c.snr_db)))]),
                         "color": str(c.colors[int(rng.integers(len(c.colors)))])})
    return plan


# --- one copy ----------------------------------------------------------------------------------

@dataclass
class Outcome:
    """A kept copy (samples set, reason None) or a rejected one (reason set)."""

    samples: np.ndarray | None
    attributes: dict
    measured: dict | None
    check: dict = field(default_factory=dict)
    reason: str | None = None
    message: str = ""


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
    raise ConfigError(f"unknown transform {name!r} (known: {', '.join(ORDER)})")


def augment_clip(row: dict, x: np.ndarray, sr: int, transforms: list[dict], *,
                 emotion_consistent: bool = True, signal_seed: list[int] | None = None,
                 clip_measurement: Measurement | None = None) -> Outcome:
    """Apply `transforms` to the clip `x` of `row`, relabel by measurement, check the level.

    `transforms` are dicts as from `plan_copy` (e.g. {"name": "gain", "db": 8}); they are applied
    in ORDER whatever their order in the list. signal_seed seeds the noise / reverb signals.
    clip_measurement: `measure(x, sr)` when the caller has it. Never raises on a bad result:
    a copy that cannot be labelled truthfully comes back with `reason` set.
    """
    transforms = sorted(transforms, key=lambda t: ORDER.index(t["name"]))
    attrs = dict(row["attributes"])
    x = np.asarray(x, dtype=np.float64)
    sig = np.random.default_rng([*(signal_seed or [0]), _SIGNAL_STREAM])
    y = x
    measured = dict(row["measured"])
    if any(t["name"] in PROSODY for t in transforms):
        clip = clip_measurement or measure(x, sr)
        ref = reference(row, clip)
        for t in transforms:
            if t["name"] in PROSODY:
                y = apply_transform(y, t, sr, sig)
        measured = compare(measure(y, sr), ref)
        new = {}
        for attr, q in QUANTITY.items():
            label = label_for(attr, measured[q])
            if label is None:
                bands = ", ".join(f"{lb} {lo:g}..{hi:g}" for lb, (lo, hi) in THRESHOLDS[attr].items())
                return Outcome(None, attrs, measured, reason="ambiguous",
                               message=f"{attr}: {q} {measured[q]} lies between the label bands ({bands})")
            new[attr] = label
        verdict = check(new, measured)
        if not verdict["pitch"]:
            return Outcome(None, attrs, measured, reason="too_few_voiced",
                           message=f"only {measured['voiced_frames']} voiced frames (need 10)")
        if not verdict["volume"]:
            return Outcome(None, attrs, measured, reason="clipped",
                           message=f"peak {measured['peak']} >= {MAX_PEAK}")
        if emotion_consistent:
            for attr in QUANTITY:
                allowed = allowed_labels(attrs, attr)
                if allowed is not None and new[attr] not in allowed:
                    return Outcome(None, attrs, measured, reason="emotion_inconsistent",
                                   message=f"{attr} {new[attr]} is never drawn for emotion "
                                           f"{attrs.get('emotion')} at intensity {attrs.get('intensity')} "
                                           f"(allowed: {', '.join(sorted(allowed))})")
        attrs.update(new)
    degrade = [t for t in transforms if t["name"] in DEGRADE]
    info: dict = {}
    if degrade:
        mask = active_mask(y, sr)
        clean_db = level_over(y, mask, sr)
        z = y
        for t in degrade:
            z = apply_transform(z, t, sr, sig)
        diff = round(float(measured["level_db_diff"]) + level_over(z, mask, sr) - clean_db, 2)
        peak = round(float(np.max(np.abs(z))), 4)
        info = {"level_db_diff": diff, "peak": peak}
        if not check(attrs, {**measured, "level_db_diff": diff, "peak": peak})["volume"]:
            if peak >= MAX_PEAK:
                return Outcome(None, attrs, measured, info, "clipped", f"peak {peak} >= {MAX_PEAK} after "
                               f"{', '.join(t['name'] for t in degrade)}")
            return Outcome(None, attrs, measured, info, "volume_changed",
                           f"level_db_diff {diff} after {', '.join(t['name'] for t in degrade)} is outside "
                           f"the volume band of {attrs['volume']!r} {THRESHOLDS['volume'][attrs['volume']]}")
        y = z
    if not np.all(np.isfinite(y)):  # not expected: guards the WAV against a numeric fault
        return Outcome(None, attrs, measured, info, "clipped", "non-finite samples")
    return Outcome(y.astype(np.float32), attrs, measured, info)


# --- dataset -----------------------------------------------------------------------------------

def _read_rows(path: Path) -> list[dict]:
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                r = json.loads(line)
            except ValueError as e:
                raise DataError(f"{path} line {n}: bad JSON ({e}); is this a prepared dataset?") from e
            if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not isinstance(r.get("audio"), str):
                raise DataError(f"{path} line {n}: not a prepared row (needs id and audio); "
                                "run `aligncap data prepare` first")
            rows.append(r)
    return rows


def _write_if_changed(path: Path, data: bytes) -> None:
    if path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data:
        return
    with atomic_write(path, "wb") as f:
        f.write(data)


def _copy_source(src: Path, dest: Path, sha: str | None) -> str:
    """Copy a source clip (skipped when dest already holds it); returns its sha256."""
    sha = sha or sha256_file(src)
    if not (dest.is_file() and dest.stat().st_size == src.stat().st_size and sha256_file(dest) == sha):
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dest)
    return sha


_COPY_DROP = ("sha256", "source_audio", "source_sha256")
_CLUE_KEYS = ("clues", "clue_attributes", "p_act")


def augment_dataset(data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    cfg: AugmentConfig | None = None, progress: bool = True) -> dict:
    """Write `data_dir`'s rows plus augmented copies of its train rows to `out_dir`.

    See the module docstring for the output layout and the labelling rules. Returns {rows_read,
    train_rows, skipped, produced, kept, rejected, rejects_by_reason, relabeled, label_changes,
    captions_regenerated, transforms, written, seconds, out_dir}. Raises DataError when data_dir
    is not a prepared dataset or an audio file is missing, ConfigError for bad settings.
    """
    t0 = time.perf_counter()
    cfg = cfg or AugmentConfig()
    data = Path(data_dir).resolve()
    out = Path(out_dir).resolve()
    manifest = data / "manifest.jsonl"
    if not manifest.is_file():
        raise DataError(f"{manifest} not found: augment a prepared dataset (`aligncap data prepare`)")
    if out == data:
        raise ConfigError(f"OUT {out_dir} is the source dataset; choose another folder")
    rows = _read_rows(manifest)
    ids = {r["id"] for r in rows}
    if len(ids) != len(rows):
        raise DataError(f"{manifest}: duplicate ids; re-run `aligncap data prepare`")
    clash = sorted(f"{r['id']}-aug{k}" for r in rows if r.get("split") == "train"
                   for k in range(1, cfg.copies + 1) if f"{r['id']}-aug{k}" in ids)
    if clash:
        raise DataError(f"{manifest}: ids {', '.join(clash[:5])} already exist; augment the original "
                        "dataset, not an augmented one")
    (out / "audio").mkdir(parents=True, exist_ok=True)

    train = [r for r in rows if r.get("split") == "train"]
    eligible = [r for r in train if has_reference(r)] if cfg.copies else []
    skipped = Counter()
    if cfg.copies and len(eligible) < len(train):
        skipped["no_reference"] = len(train) - len(eligible)
    eligible_ids = {r["id"] for r in eligible}

    written: list[dict] = []
    rejects: list[dict] = []
    reasons: Counter = Counter()
    applied: Counter = Counter()
    changes: Counter = Counter()
    n_relabeled = n_regen = produced = 0
    show = progress and sys.stderr.isatty()
    with progress_bar(disable=not show) as bar:
        task = bar.add_task("augment", total=len(eligible) * cfg.copies)
        for r in rows:
            src = Path(r["audio"]) if os.path.isabs(r["audio"]) else data / r["audio"]
            if not src.is_file():
                raise DataError(f"{r['id']}: audio file not found: {src}; re-run `aligncap data prepare`")
            name = safe_name(r["id"])
            rel = f"audio/{name}.wav"
            sha = _copy_source(src, out / rel, r.get("audio_sha256"))
            written.append({**{k: v for k, v in r.items() if k not in STALE_KEYS}, "audio": rel,
                            "audio_sha256": sha})
            if r["id"] not in eligible_ids:
                continue
            x, sr = _read_audio(src)
            clip = measure(x, sr)
            for k in range(1, cfg.copies + 1):
                new_id = f"{r['id']}-aug{k}"
                plan = plan_copy(r, k, cfg, sr)
                res = augment_clip(r, x, sr, plan, emotion_consistent=cfg.emotion_consistent,
                                   signal_seed=[cfg.seed, _id_key(r["id"]), k], clip_measurement=clip)
                produced += 1
                record = {"copy": k, "seed": cfg.seed, "transforms": plan}
                if res.reason is not None:
                    reasons[res.reason] += 1
                    rejects.append({"id": new_id, "augmented_from": r["id"], "reason": res.reason,
                                    "message": f"{new_id}: {res.message}", "augment": record,
                                    "measured": res.measured, "check": res.check or None,
                                    "attributes": r["attributes"]})
                else:
                    written.append(_copy_row(r, new_id, k, res, record, sr, out, cfg.seed, str(src)))
                    for t in plan:
                        applied[t["name"]] += 1
                    changed = {a: f"{r['attributes'][a]}->{res.attributes[a]}" for a in QUANTITY
                               if r["attributes"][a] != res.attributes[a]}
                    n_relabeled += bool(changed)
                    changes.update(f"{a} {c}" for a, c in changed.items())
                    n_regen += record["captions"] == "regenerated"
                kept = produced - len(rejects)
                rate = produced / max(time.perf_counter() - t0, 1e-9)
                bar.update(task, advance=1, description=f"augment kept {kept} rejected {len(rejects)} "
                           f"({rate:.1f} copies/s)")

    kept = produced - len(rejects)
    if kept + len(rejects) != produced or len(written) != len(rows) + kept:  # the contract
        raise DataError(f"internal error: {produced} copies produced but {kept} kept + {len(rejects)} rejected")
    counts = {
        "rows_read": len(rows), "train_rows": len(train), "skipped": dict(sorted(skipped.items())),
        "produced": produced, "kept": kept, "rejected": len(rejects),
        "rejects_by_reason": dict(sorted(reasons.items())), "relabeled": n_relabeled,
        "label_changes": dict(sorted(changes.items())), "captions_regenerated": n_regen,
        "transforms": dict(sorted(applied.items())), "written": len(written),
    }
    settings = {"audio_format": AUDIO_FORMAT, "sample_rate": _rate_of(written), "augment": cfg.to_dict()}
    hashed = [{k: v for k, v in w.items() if k != "source_audio"} for w in written]
    fp = fingerprint(settings, hashed)
    write_jsonl(out / "rejects.jsonl", rejects)
    with atomic_write(out / "augment.json") as f:
        json.dump({"config": cfg.to_dict(), "reject_reasons": REJECT_REASONS, **counts}, f, indent=2, sort_keys=True)
    with atomic_write(out / "fingerprint.json") as f:
        json.dump({"fingerprint": fp, "content_sha256": sha256_bytes(stable_json([settings, hashed]).encode()),
                   "kept": len(written), "settings": settings, "source": str(data), "source_kind": "augment"},
                  f, indent=2)
    write_jsonl(out / "manifest.jsonl", written)  # last: the commit point of this run
    referenced = {w["audio"].split("/", 1)[1] for w in written}
    for p in (out / "audio").iterdir():  # audio of rows no longer written (earlier runs)
        if p.name not in referenced and (p.suffix == ".wav" or p.name.endswith(".tmp")):
            p.unlink(missing_ok=True)
    seconds = time.perf_counter() - t0
    summary = {**counts, "copies": cfg.copies, "seed": cfg.seed, "seconds": round(seconds, 2),
               "out_dir": str(out)}
    if show:
        from rich.console import Console

        why = ", ".join(f"{k} {v}" for k, v in reasons.items()) or "none"
        Console(stderr=True).print(f"augment: kept {kept} of {produced} copies, rejected {len(rejects)} "
                                   f"({why}) in {seconds:.1f} s -> {out}")
    return summary


def _rate_of(rows: list[dict]) -> int | None:
    rates = {r.get("sample_rate") for r in rows}
    return rates.pop() if len(rates) == 1 else None


def _read_audio(path: Path) -> tuple[np.ndarray, int]:
    try:
        x, sr = audio.decode(str(path))
    except audio.AudioProblem as e:
        raise DataError(f"{path}: {e.message}; re-run `aligncap data prepare`") from e
    return audio.to_mono(x).astype(np.float64), int(sr)


def _copy_row(r: dict, new_id: str, k: int, res: Outcome, record: dict, sr: int, out: Path,
              seed: int, source: str) -> dict:
    """The manifest row of a kept copy; writes its audio."""
    wav = audio.encode_wav(res.samples, sr)
    rel = f"audio/{safe_name(new_id)}.wav"
    _write_if_changed(out / rel, wav)
    attrs = res.attributes
    row = {k2: v for k2, v in r.items() if k2 not in STALE_KEYS and k2 not in _COPY_DROP}
    changed = {a: r["attributes"][a] for a in QUANTITY if r["attributes"][a] != attrs[a]}
    if changed or _gates(res.measured) != _gates(r["measured"]):
        rng = np.random.default_rng([seed, _id_key(r["id"]), k, _CAPTIONS_STREAM])
        n = max(len(r.get("captions") or []), 1)
        captions, stated = write_captions(rng, attrs, res.measured, n=n)
        row.update(captions=captions, caption_attributes=stated)
        for key in _CLUE_KEYS:
            row.pop(key, None)
        record["captions"] = "regenerated"
    else:
        record["captions"] = "kept"
    if changed:
        record["labels_before"] = changed
    if res.check:
        record["check"] = res.check
    row.update({
        "id": new_id, "audio": rel, "attributes": attrs, "measured": res.measured,
        "duration_s": round(len(res.samples) / sr, 4), "sample_rate": sr,
        "source_audio": source, "source_sha256": r.get("audio_sha256"),
        "audio_sha256": sha256_bytes(wav), "augmented_from": r["id"], "augment": record,
    })
    return row
