"""Measurement-based relabelling of one copy, its level check and the caption gates."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from aligncap_core.data.augment.config import DEGRADE, ORDER, PROSODY, _is_num
from aligncap_core.data.augment.transforms import active_mask, apply_transform, level_over
from aligncap_core.data.synth import profiles as P
from aligncap_core.data.synth.checks import MAX_PEAK, QUANTITY, THRESHOLDS, check, compare
from aligncap_core.data.synth.measure import Measurement, measure

REJECT_REASONS: dict[str, str] = {
    "ambiguous": "a measured quantity fell between two label bands (or is not a number)",
    "too_few_voiced": "fewer than 10 voiced frames: the F0 is not trustworthy",
    "clipped": "the peak reached 0.99 of full scale",
    "volume_changed": "after noise / reverb / resampling the level no longer fits the volume label",
    "emotion_inconsistent": "the new label is not the one the clip's emotion signature has",
}

_SIGNAL_STREAM = 200  # rng stream of noise / reverb signals


def label_for(attr: str, value: float) -> str | None:
    """The label whose `checks.THRESHOLDS` band holds `value`; None between bands (or nan)."""
    if value != value:
        return None
    for label, (lo, hi) in THRESHOLDS[attr].items():
        if lo <= value <= hi:
            return label
    return None


def allowed_labels(attributes: dict, attr: str) -> set[str] | None:
    """The label of `attr` the clip's emotion signature has (profiles.PROFILES); None when the
    emotion is not one of the corpus' (other data: unconstrained)."""
    prof = P.PROFILES.get(attributes.get("emotion"))
    if prof is None:
        return None
    return {getattr(prof, attr)}


def has_reference(row: dict) -> bool:
    m, a = row.get("measured"), row.get("attributes")
    return (isinstance(m, dict) and isinstance(a, dict)
            and all(_is_num(m.get(q)) for q in QUANTITY.values())
            and all(m.get(q) != 0 for q in ("f0_ratio", "duration_ratio"))
            and all(a.get(k) in THRESHOLDS[k] for k in QUANTITY))


def reference(row: dict, clip: Measurement) -> Measurement:
    """The voice's normal rendering as this measurement sees it, rebuilt from the stored clip and
    the row's ratios (see the package docstring)."""
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


@dataclass
class Outcome:
    """A kept copy (samples set, reason None) or a rejected one (reason set)."""

    samples: np.ndarray | None
    attributes: dict
    measured: dict | None
    check: dict = field(default_factory=dict)
    reason: str | None = None
    message: str = ""


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
                                   message=f"{attr} {new[attr]} is not in the signature of emotion "
                                           f"{attrs.get('emotion')} (it has {attr} "
                                           f"{', '.join(sorted(allowed))})")
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
