"""Voices, accents and emotion signatures of the synthetic corpus.

A *voice* is an espeak-ng accent (language file) plus a voice variant: `en-gb-scotland+f2`.
Accent changes pronunciation; the variant changes timbre and base F0. The corpus speaks with
the normalised copies of the variants (`voicebank.py`: each variant's normal F0 pulled towards
its gender's centre, male ~95-105 Hz, female ~199-227 Hz), so that "high for this voice" is
also high for any voice of that gender and one clip shows its pitch label.

Zero-shot split (explicit, seed independent): `HELDOUT_VARIANTS` (6 of 31, gender balanced)
and `HELDOUT_ACCENTS` (2 of 8) never appear in train/valid/test. Seen voices are seen variant x
seen accent (25 x 6 = 150); zero-shot voices are every other combination (98), i.e. a new
timbre, a new accent, or both.

Emotions. Each emotion has one acoustic *signature* (`EmotionProfile`): its pitch, speed and
volume labels, its espeak pitch range, a voice quality and a clause tune, each a direction the
vocal-affect literature reports for that emotion (Murray & Arnott 1993, Table 1; Banse &
Scherer 1996; Juslin & Laukka 2003, Table 7), chosen so that every two emotions differ in at
least two of these cues. So the emotion is in the audio: a reader of pitch, rate, level,
pitch range, voice quality and final contour can name it (`docs/experiments/attribute_ceiling.py`
measures how well), which an earlier corpus, that drew the labels at random from overlapping
profiles, did not allow (at most 0.52-0.79). Labels are realised as jittered espeak parameters
(`sample_prosody`) and checked by measurement against the same voice's normal rendering of
the same sentence (`corpus.py`, `checks.py`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .espeak import Prosody


@dataclass(frozen=True)
class Variant:
    name: str  # shipped espeak variant file in espeak-ng-data/voices/!v
    gender: str
    # espeak volume that puts the normalised voice's normal level at TARGET_LEVEL_DBFS, so
    # "loud" (+7..+9 dB) keeps headroom and never clips; measured by
    # docs/experiments/calibrate_voices.py
    base_volume: int
    # median F0 (Hz) of the shipped variant at espeak defaults (pitch 50): what voicebank.py
    # normalises; measured by docs/experiments/calibrate_voices.py
    f0_hz: float

    @property
    def espeak_name(self) -> str:
        """The normalised copy the corpus speaks with (voicebank.py)."""
        from .voicebank import variant_file

        return variant_file(self.name)


VARIANTS: tuple[Variant, ...] = (  # name, gender, base_volume, shipped F0 (Hz)
    Variant("m1", "male", 29, 94.1),
    Variant("m2", "male", 32, 101.1),
    Variant("m3", "male", 27, 106.1),
    Variant("m4", "male", 26, 94.4),
    Variant("m5", "male", 29, 103.0),
    Variant("m6", "male", 27, 101.9),
    Variant("m7", "male", 23, 107.7),
    Variant("Andy", "male", 18, 96.0),
    Variant("michel", "male", 24, 105.7),
    Variant("travis", "male", 20, 105.1),
    Variant("klatt3", "male", 30, 102.5),
    Variant("klatt4", "male", 22, 102.6),
    Variant("Gene", "male", 16, 95.6),
    Variant("robert", "male", 30, 100.0),
    Variant("max", "male", 30, 102.5),
    Variant("norbert", "male", 19, 101.1),
    Variant("Mike", "male", 37, 91.9),
    Variant("f1", "female", 21, 182.1),
    Variant("f2", "female", 22, 197.0),
    Variant("f3", "female", 26, 213.1),
    Variant("f4", "female", 22, 180.4),
    Variant("f5", "female", 27, 206.6),
    Variant("Annie", "female", 27, 240.5),
    Variant("Alicia", "female", 27, 249.8),
    Variant("Andrea", "female", 15, 245.1),
    Variant("belinda", "female", 22, 229.7),
    Variant("linda", "female", 22, 229.0),
    Variant("steph", "female", 21, 184.9),
    Variant("anika", "female", 19, 270.0),
    Variant("grandma", "female", 25, 203.3),
    Variant("aunty", "female", 21, 172.4),
)

# Active level of every voice's normal rendering (dBFS): "loud" (up to +9 dB) then peaks below
# ~0.85 of full scale, "soft" (down to -10.5 dB) stays far above the 16-bit noise floor.
TARGET_LEVEL_DBFS = -32.0

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
        """The voice's name, the row's `speaker` (shipped variant name)."""
        return f"{self.accent}+{self.variant.name}"

    def espeak(self, quality: str = "modal") -> str:
        """The espeak voice the corpus renders it with: the normalised variant (voicebank.py)
        in `quality`."""
        from .voicebank import variant_file

        return f"{self.accent}+{variant_file(self.variant.name, quality)}"

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

N = "normal"


@dataclass(frozen=True)
class EmotionProfile:
    """One emotion's acoustic signature. pitch / speed / volume are the clip's labels (every clip
    of the emotion has them; the measured value is checked against the label's band); range is
    the espeak pitch range drawn per clip (0 = monotone, 50 = default, 100 = widest); quality a
    `voicebank.QUALITIES` name; tune the clause-final punctuation espeak reads as the final
    contour ("." falling, "!" exclamative, "?" rising); literature: the directions reported
    for the emotion, relative to neutral speech."""

    pitch: str
    speed: str
    volume: str
    range: tuple[int, int]
    quality: str = "modal"
    tune: str = "."
    literature: str = ""


PROFILES: dict[str, EmotionProfile] = {
    "neutral": EmotionProfile(N, N, N, (42, 58), literature="the reference"),
    "calm": EmotionProfile(
        N, "slow", "soft", (24, 34),
        literature="tenderness/relaxation: slower, softer, narrower F0 range"),
    "sad": EmotionProfile(
        "low", "slow", "soft", (6, 16), "breathy",
        literature="lower F0, narrower range, slower, lower intensity, downward contours"),
    "bored": EmotionProfile(
        "low", "slow", N, (0, 4),
        literature="lower F0, monotone (very narrow range), slower"),
    "disgusted": EmotionProfile(
        "low", N, N, (64, 78), "harsh",
        literature="much lower F0, wider range, 'grumbled chest tone' (rough voice)"),
    "angry": EmotionProfile(
        "high", "fast", "loud", (62, 74), "harsh", "!",
        literature="hot anger: higher F0, wider range, faster, louder, tense/harsh voice"),
    "happy": EmotionProfile(
        "high", N, "loud", (78, 90), tune="!",
        literature="higher F0, much wider range, higher intensity, smooth upward inflections"),
    "fearful": EmotionProfile(
        "high", "fast", "soft", (30, 42),
        literature="much higher F0, faster, intensity not raised (here: softer)"),
    "surprised": EmotionProfile(
        "high", N, N, (92, 100), tune="?",
        literature="higher F0, widest range, rising final contour"),
}
EMOTIONS: tuple[str, ...] = tuple(PROFILES)


def signature(emotion: str) -> tuple[str, ...]:
    """The cues an emotion is told apart by: pitch, speed and volume labels, pitch-range band
    (flat <= 6, narrow <= 20, wide >= 60, else mid), voice quality, final tune."""
    p = PROFILES[emotion]
    lo, hi = p.range
    band = "flat" if hi <= 6 else "narrow" if hi <= 20 else "wide" if lo >= 60 else "mid"
    return (p.pitch, p.speed, p.volume, band, p.quality, p.tune)


def labels_of(emotion: str) -> dict[str, str]:
    """The pitch / speed / volume labels every clip of `emotion` carries."""
    prof = PROFILES[emotion]
    return {"pitch": prof.pitch, "speed": prof.speed, "volume": prof.volume}


# Label -> espeak parameter interval. Chosen from a sweep over the normalised voices: pitch
# 82-96 gives F0 x1.35-1.55, 0-19 gives x0.62-0.74, 47-53 stays within +-5%; rate is words per
# minute (175 default); wordgap adds pauses between words (x10 ms).
PITCH = {"low": (0, 19), N: (47, 53), "high": (82, 96)}
RATE = {"slow": (100, 122), N: (168, 182), "fast": (255, 295)}
WORDGAP = {"slow": (2, 5), N: (0, 0), "fast": (0, 0)}
# Amplitude factor relative to the voice's base volume: 0.3-0.42 = -10.5..-7.5 dB,
# 2.3-2.8 = +7.2..+8.9 dB (the F0 / rate corrections below come on top).
VOLUME = {"soft": (0.30, 0.42), N: (0.97, 1.03), "loud": (2.3, 2.8)}

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
TARGET = {"pitch": {"low": 0.68, N: 1.0, "high": 1.45},  # F0 ratio
          "speed": {"slow": 1.6, N: 1.0, "fast": 0.64},  # duration ratio
          "volume": {"soft": -9.0, N: 0.0, "loud": 8.0}}  # dB


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


def sample_prosody(rng: np.random.Generator, voice: Voice, emotion: str,
                   correction: Correction = Correction()) -> Prosody:
    """espeak parameters realising `emotion`'s signature for this voice, with random jitter."""
    prof = PROFILES[emotion]
    labels = labels_of(emotion)
    prange = int(rng.integers(prof.range[0], prof.range[1] + 1))
    lo, hi = PITCH[labels["pitch"]]
    base_pitch = rng.uniform(lo, hi) + correction.pitch
    pitch = base_pitch - RANGE_TO_PITCH * (prange - 50)
    lo, hi = RATE[labels["speed"]]
    rate = rng.uniform(lo, hi) * correction.rate
    lo, hi = WORDGAP[labels["speed"]]
    wordgap = int(rng.integers(lo, hi + 1))
    lo, hi = VOLUME[labels["volume"]]
    level_comp_db = (-DB_PER_LN_F0 * LN_F0_PER_PITCH * (base_pitch - 50)
                     - DB_PER_LN_RATE * np.log(rate / 175) + correction.level_db)
    volume = voice.variant.base_volume * rng.uniform(lo, hi) * 10 ** (level_comp_db / 20)
    return Prosody(rate=round(rate), pitch=round(pitch), range=prange, volume=round(volume),
                   wordgap=wordgap).clipped()


def spoken_text(sentence: str, tune: str = ".") -> str:
    """`sentence` with its clause-final punctuation replaced by `tune` (what espeak reads)."""
    return sentence.rstrip().rstrip(".?!") + tune


def reference_prosody(voice: Voice) -> Prosody:
    """The voice's normal rendering: espeak defaults at the variant's base volume."""
    return Prosody(volume=voice.variant.base_volume)
