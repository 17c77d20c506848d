"""Voices, accents and emotion prosody profiles of the synthetic corpus.

A *voice* is an espeak-ng accent (language file) plus a voice variant: `en-gb-scotland+f2`.
Accent changes pronunciation; the variant changes timbre and base F0 (the variants below were
screened by measurement: male median F0 85-110 Hz, female 170-280 Hz at espeak pitch 50).

Zero-shot split (explicit, seed independent): `HELDOUT_VARIANTS` (6 of 31, gender balanced)
and `HELDOUT_ACCENTS` (2 of 8) never appear in train/valid/test. Seen voices are seen variant x
seen accent (25 x 6 = 150); zero-shot voices are every other combination (98), i.e. a new
timbre, a new accent, or both.

An emotion profile gives, for each prosody attribute, the probability of each label (by
intensity) and the espeak pitch range. Labels are then turned into espeak parameters with
per-clip jitter (`sample_prosody`); the measured result is checked against the label in
`corpus.py`, so these numbers only need to make the labels likely, not certain.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .espeak import Prosody


@dataclass(frozen=True)
class Variant:
    name: str  # espeak variant file in espeak-ng-data/voices/!v
    gender: str
    # espeak volume that puts this variant's normal peak near 0.3 of full scale, so "loud"
    # (about 2x amplitude) still has headroom and never clips (variants differ by 2.5x).
    base_volume: int


VARIANTS: tuple[Variant, ...] = (
    Variant("m1", "male", 39), Variant("m2", "male", 39), Variant("m3", "male", 36),
    Variant("m4", "male", 39), Variant("m5", "male", 36), Variant("m6", "male", 34),
    Variant("m7", "male", 34), Variant("Andy", "male", 27), Variant("michel", "male", 34),
    Variant("travis", "male", 31), Variant("klatt3", "male", 41), Variant("klatt4", "male", 28),
    Variant("Gene", "male", 23), Variant("robert", "male", 55), Variant("max", "male", 45),
    Variant("norbert", "male", 24), Variant("Mike", "male", 52),
    Variant("f1", "female", 33), Variant("f2", "female", 35), Variant("f3", "female", 39),
    Variant("f4", "female", 35), Variant("f5", "female", 46), Variant("Annie", "female", 48),
    Variant("Alicia", "female", 41), Variant("Andrea", "female", 34),
    Variant("belinda", "female", 28), Variant("linda", "female", 29), Variant("steph", "female", 47),
    Variant("anika", "female", 43), Variant("grandma", "female", 44), Variant("aunty", "female", 34),
)

# espeak language -> human name of the accent (kept in the row as `accent`).
ACCENTS: dict[str, str] = {
    "en-us": "American",
    "en": "British",
    "en-gb-x-rp": "British (Received Pronunciation)",
    "en-gb-scotland": "Scottish",
    "en-us-nyc": "New York",
    "en-gb-x-gbclan": "Lancashire",
    "en-029": "Caribbean",
    "en-gb-x-gbcwmd": "West Midlands",
}

HELDOUT_VARIANTS: frozenset[str] = frozenset({"m7", "travis", "klatt4", "f4", "linda", "aunty"})
HELDOUT_ACCENTS: frozenset[str] = frozenset({"en-029", "en-gb-x-gbcwmd"})


@dataclass(frozen=True)
class Voice:
    accent: str
    variant: Variant

    @property
    def name(self) -> str:
        """The espeak voice name, also the row's `speaker`."""
        return f"{self.accent}+{self.variant.name}"

    @property
    def gender(self) -> str:
        return self.variant.gender

    @property
    def zeroshot(self) -> bool:
        return self.variant.name in HELDOUT_VARIANTS or self.accent in HELDOUT_ACCENTS


ALL_VOICES: tuple[Voice, ...] = tuple(Voice(a, v) for a in ACCENTS for v in VARIANTS)
SEEN_VOICES: tuple[Voice, ...] = tuple(v for v in ALL_VOICES if not v.zeroshot)
ZEROSHOT_VOICES: tuple[Voice, ...] = tuple(v for v in ALL_VOICES if v.zeroshot)


# --- emotions ---------------------------------------------------------------------------

Weights = dict[str, float]


@dataclass(frozen=True)
class EmotionProfile:
    pitch: Weights
    speed: Weights
    volume: Weights
    range: tuple[int, int]  # espeak pitch range (0 = monotone, 50 = default, 100 = widest)
    # Label weights used instead of the above at strong intensity (pushes to the extremes).
    strong: dict[str, Weights] = field(default_factory=dict)
    has_intensity: bool = True  # neutral/calm: "strongly calm" is not a meaningful label
    strong_p: float = 0.35  # share of clips at strong intensity
    strong_range: tuple[int, int] | None = None


N = "normal"
PROFILES: dict[str, EmotionProfile] = {
    "neutral": EmotionProfile(
        pitch={N: 0.85, "low": 0.075, "high": 0.075}, speed={N: 0.85, "slow": 0.075, "fast": 0.075},
        volume={N: 0.85, "soft": 0.075, "loud": 0.075}, range=(40, 60), has_intensity=False),
    "calm": EmotionProfile(
        pitch={N: 0.6, "low": 0.4}, speed={N: 0.45, "slow": 0.55}, volume={N: 0.45, "soft": 0.55},
        range=(22, 42), has_intensity=False),
    "happy": EmotionProfile(
        pitch={"high": 0.75, N: 0.25}, speed={"fast": 0.5, N: 0.5}, volume={"loud": 0.45, N: 0.55},
        range=(68, 92), strong={"pitch": {"high": 1.0}, "speed": {"fast": 0.75, N: 0.25},
                                "volume": {"loud": 0.75, N: 0.25}}, strong_range=(85, 100)),
    "sad": EmotionProfile(
        pitch={"low": 0.8, N: 0.2}, speed={"slow": 0.8, N: 0.2}, volume={"soft": 0.75, N: 0.25},
        range=(10, 30), strong={"pitch": {"low": 1.0}, "speed": {"slow": 1.0}, "volume": {"soft": 1.0}},
        strong_range=(0, 15)),
    "angry": EmotionProfile(
        pitch={"high": 0.4, N: 0.5, "low": 0.1}, speed={"fast": 0.6, N: 0.4},
        volume={"loud": 0.85, N: 0.15}, range=(55, 85),
        strong={"pitch": {"high": 0.6, N: 0.4}, "speed": {"fast": 0.85, N: 0.15}, "volume": {"loud": 1.0}}),
    "fearful": EmotionProfile(
        pitch={"high": 0.8, N: 0.2}, speed={"fast": 0.75, N: 0.25}, volume={"soft": 0.4, N: 0.6},
        range=(35, 60), strong={"pitch": {"high": 1.0}, "speed": {"fast": 1.0}, "volume": {"soft": 0.5, N: 0.5}}),
    "surprised": EmotionProfile(
        pitch={"high": 0.85, N: 0.15}, speed={N: 0.6, "fast": 0.4}, volume={"loud": 0.5, N: 0.5},
        range=(80, 100), strong={"pitch": {"high": 1.0}, "speed": {N: 0.5, "fast": 0.5},
                                 "volume": {"loud": 0.8, N: 0.2}}),
    "disgusted": EmotionProfile(
        pitch={"low": 0.7, N: 0.3}, speed={"slow": 0.6, N: 0.4}, volume={N: 0.75, "soft": 0.25},
        range=(35, 60), strong={"pitch": {"low": 1.0}, "speed": {"slow": 0.8, N: 0.2},
                                "volume": {N: 0.6, "loud": 0.4}}),
    "bored": EmotionProfile(
        pitch={"low": 0.75, N: 0.25}, speed={"slow": 0.75, N: 0.25}, volume={"soft": 0.5, N: 0.5},
        range=(0, 12), strong={"pitch": {"low": 1.0}, "speed": {"slow": 1.0}, "volume": {"soft": 0.7, N: 0.3}},
        strong_range=(0, 5)),
}
EMOTIONS: tuple[str, ...] = tuple(PROFILES)

# Label -> espeak parameter intervals, (normal intensity, strong intensity). Chosen from a
# sweep over the variants above: pitch 76-95 gives F0 x1.2-1.6, pitch 6-24 gives x0.65-0.85,
# espeak pitch 50 +- 6 stays within +-6%; rate is words per minute (175 default).
PITCH = {"low": ((8, 24), (2, 16)), N: ((47, 53), (47, 53)), "high": ((76, 92), (84, 98))}
RATE = {"slow": ((102, 132), (92, 118)), N: ((166, 186), (166, 186)), "fast": ((232, 290), (262, 320))}
WORDGAP = {"slow": ((0, 3), (2, 5)), N: ((0, 0), (0, 0)), "fast": ((0, 0), (0, 0))}  # x10 ms
# Amplitude factor relative to the variant's base volume: 0.3-0.55 = -10.5..-5.2 dB,
# 1.85-2.4 = +5.3..+7.6 dB (the F0 / rate corrections below come on top).
VOLUME = {"soft": ((0.3, 0.55), (0.22, 0.42)), N: ((0.95, 1.05), (0.95, 1.05)),
          "loud": ((1.85, 2.4), (2.0, 2.45))}

# A linear fit over 500 random renderings of the seen voices (pitch 0-100, range 0-100,
# rate 90-320) gives, relative to the same voice's normal rendering:
#   ln(F0 ratio)  = 0.0096 (pitch - 50) + 0.0027 (range - 50)          (residual sd 0.05)
#   level, dB     = 4.8 ln(F0 ratio) - 1.64 ln(rate / 175)             (residual sd 0.55 dB)
#   ln(dur ratio) = -0.96 ln(rate / 175) + 0.06 wordgap               (residual sd 0.04)
# so the base pitch is offset against the range (to keep "normal" normal) and the volume is
# corrected for F0 and rate (otherwise high pitch alone reads as "loud").
LN_F0_PER_PITCH = 0.0096
RANGE_TO_PITCH = 0.28  # = 0.0027 / 0.0096
DB_PER_LN_F0 = 4.8
DB_PER_LN_RATE = -1.64

# Where a re-rendering aims after a failed check: the middle of each label's band.
TARGET = {"pitch": {"low": 0.75, N: 1.0, "high": 1.38},  # F0 ratio
          "speed": {"slow": 1.55, N: 1.0, "fast": 0.68},  # duration ratio
          "volume": {"soft": -7.5, N: 0.0, "loud": 6.5}}  # dB


@dataclass(frozen=True)
class Correction:
    """Offsets learnt from failed renderings of one clip, applied on top of fresh jitter."""

    pitch: float = 0.0  # espeak pitch units
    level_db: float = 0.0
    rate: float = 1.0  # factor on words per minute

    def after(self, labels: dict[str, str], verdict: dict[str, bool], measured: dict) -> Correction:
        """The correction for the next attempt, moving each failed quantity to its target."""
        pitch, level, rate = self.pitch, self.level_db, self.rate
        if not verdict["pitch"] and measured["f0_ratio"] == measured["f0_ratio"]:
            pitch -= np.log(measured["f0_ratio"] / TARGET["pitch"][labels["pitch"]]) / LN_F0_PER_PITCH
        if not verdict["volume"]:
            level -= measured["level_db_diff"] - TARGET["volume"][labels["volume"]]
            level = min(level, 0.0) if measured["peak"] >= 0.95 else level  # clipping: go down
        if not verdict["speed"]:
            rate *= measured["duration_ratio"] / TARGET["speed"][labels["speed"]]
        return Correction(float(np.clip(pitch, -30, 30)), float(np.clip(level, -8, 8)),
                          float(np.clip(rate, 0.6, 1.6)))


def _draw(rng: np.random.Generator, weights: Weights) -> str:
    labels = sorted(weights)  # sorted: independent of dict order, so the draw is stable
    p = np.array([weights[k] for k in labels], dtype=float)
    return labels[int(rng.choice(len(labels), p=p / p.sum()))]


def draw_intensity(rng: np.random.Generator, emotion: str) -> str | None:
    prof = PROFILES[emotion]
    if not prof.has_intensity:
        return None
    return "strong" if rng.random() < prof.strong_p else "normal"


def draw_labels(rng: np.random.Generator, emotion: str, intensity: str | None) -> dict[str, str]:
    """pitch / speed / volume labels for one clip of `emotion` at `intensity`."""
    prof = PROFILES[emotion]
    strong = prof.strong if intensity == "strong" else {}
    return {attr: _draw(rng, strong.get(attr, getattr(prof, attr))) for attr in ("pitch", "speed", "volume")}


def sample_prosody(rng: np.random.Generator, voice: Voice, emotion: str, intensity: str | None,
                   labels: dict[str, str], correction: Correction = Correction()) -> Prosody:
    """espeak parameters realising `labels` for this voice, with random jitter."""
    prof = PROFILES[emotion]
    k = 1 if intensity == "strong" else 0
    rng_range = prof.strong_range if (k and prof.strong_range) else prof.range
    prange = int(rng.integers(rng_range[0], rng_range[1] + 1))
    lo, hi = PITCH[labels["pitch"]][k]
    base_pitch = rng.uniform(lo, hi) + correction.pitch
    pitch = base_pitch - RANGE_TO_PITCH * (prange - 50)
    lo, hi = RATE[labels["speed"]][k]
    rate = rng.uniform(lo, hi) * correction.rate
    lo, hi = WORDGAP[labels["speed"]][k]
    wordgap = int(rng.integers(lo, hi + 1))
    lo, hi = VOLUME[labels["volume"]][k]
    level_comp_db = (-DB_PER_LN_F0 * LN_F0_PER_PITCH * (base_pitch - 50)
                     - DB_PER_LN_RATE * np.log(rate / 175) + correction.level_db)
    volume = voice.variant.base_volume * rng.uniform(lo, hi) * 10 ** (level_comp_db / 20)
    return Prosody(rate=round(rate), pitch=round(pitch), range=prange, volume=round(volume),
                   wordgap=wordgap).clipped()


def reference_prosody(voice: Voice) -> Prosody:
    """The voice's normal rendering: espeak defaults at the variant's base volume."""
    return Prosody(volume=voice.variant.base_volume)
