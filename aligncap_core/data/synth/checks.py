"""Label verification: a clip's pitch / speed / volume labels must agree with measurement.

Every clip is compared with the *same voice's* normal rendering of the *same sentence*
(espeak defaults at the voice's base volume):

| label         | measured quantity                         | passes when                     |
|---------------|-------------------------------------------|---------------------------------|
| pitch high    | f0_ratio = median F0 / reference median F0 | >= 1.28 (at least +28%, ~4.3 st) |
| pitch low     |                                           | <= 0.80 (at least -20%, ~3.9 st) |
| pitch normal  |                                           | 0.94 .. 1.065                    |
| speed fast    | duration_ratio = active duration / ref    | <= 0.76 (>= 32% higher rate)     |
| speed slow    |                                           | >= 1.35                          |
| speed normal  |                                           | 0.92 .. 1.085                    |
| volume loud   | level_db_diff = active level - ref, dB    | >= +5.5 dB                       |
| volume soft   |                                           | <= -5.5 dB                       |
| volume normal |                                           | -1.5 .. +1.5 dB                  |

The gaps between bands (e.g. F0 +6.5..+28%) are deliberately unlabelled: a clip that lands
there is regenerated, so "normal" and "high" are always at least ~20% apart in F0, 20% in
duration and 4 dB in level: wide enough that one clip of an unknown voice shows its label
(the voices' normal F0 and level are normalised per gender, `voicebank.py`). Any clip whose peak reaches 0.99 of full scale fails the volume
check (clipping distorts the level and the timbre). A clip with fewer than 10 voiced frames
fails the pitch check (its F0 is not trustworthy).
"""

from __future__ import annotations

from .measure import Measurement

THRESHOLDS: dict[str, dict[str, tuple[float, float]]] = {
    # attribute -> label -> (min, max) of the measured quantity, inclusive
    "pitch": {"high": (1.28, float("inf")), "low": (0.0, 0.80), "normal": (0.94, 1.065)},
    "speed": {"fast": (0.0, 0.76), "slow": (1.35, float("inf")), "normal": (0.92, 1.085)},
    "volume": {"loud": (5.5, float("inf")), "soft": (float("-inf"), -5.5), "normal": (-1.5, 1.5)},
}
QUANTITY = {"pitch": "f0_ratio", "speed": "duration_ratio", "volume": "level_db_diff"}
MAX_PEAK = 0.99
MIN_VOICED_FRAMES = 10


def compare(clip: Measurement, ref: Measurement) -> dict[str, float]:
    """Relative measurements of a clip against its reference (rounded so rows are stable)."""
    return {
        "f0_hz": round(clip.f0_hz, 2),
        "f0_ratio": round(clip.f0_hz / ref.f0_hz, 4),
        "f0_spread_st": round(clip.f0_spread_st, 2),
        "spread_ratio": round(clip.f0_spread_st / max(ref.f0_spread_st, 0.1), 3),
        "duration_s": round(clip.duration_s, 3),
        "duration_ratio": round(clip.duration_s / ref.duration_s, 4),
        "level_dbfs": round(clip.level_dbfs, 2),
        "level_db_diff": round(clip.level_dbfs - ref.level_dbfs, 2),
        "peak": round(clip.peak, 4),
        "voiced_frames": clip.voiced_frames,
    }


def check(labels: dict[str, str], measured: dict[str, float]) -> dict[str, bool]:
    """attribute -> whether the measurement agrees with the label (pitch, speed, volume)."""
    out = {}
    for attr, quantity in QUANTITY.items():
        lo, hi = THRESHOLDS[attr][labels[attr]]
        value = measured[quantity]
        ok = value == value and lo <= value <= hi  # value == value rejects nan
        if attr == "pitch":
            ok = ok and measured["voiced_frames"] >= MIN_VOICED_FRAMES
        if attr == "volume":
            ok = ok and measured["peak"] < MAX_PEAK
        out[attr] = bool(ok)
    return out
