"""Planning one copy: which transforms it gets and their parameters, seeded per (seed, id, copy)."""

from __future__ import annotations

import math

import numpy as np

from aligncap_core.data.augment.config import ORDER, STREAMS, AugmentConfig
from aligncap_core.data.augment.relabel import allowed_labels
from aligncap_core.data.synth import profiles as P
from aligncap_core.utils import sha256_bytes


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
    draws = {n: pick.random() for n in STREAMS}  # one draw each, enabled or not: stable streams
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
        rng = np.random.default_rng([cfg.seed, key, k, STREAMS.index(n) + 1])
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
            if c.keep_formants:
                plan[-1]["formants"] = "kept"
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
        elif n == "voice":
            lo, hi = c.female if attrs.get("gender") == "female" else c.male
            plan.append({"name": "voice", "semitones": round(float(rng.uniform(lo, hi)), 3)})
        elif n == "formant":
            plan.append({"name": "formant", "alpha": round(float(rng.uniform(*c.alpha)), 4)})
        elif n == "jitter":
            plan.append({"name": "jitter", "jitter": round(float(rng.uniform(*c.jitter)), 4),
                         "shimmer": round(float(rng.uniform(*c.shimmer)), 4)})
        elif n == "eq":
            peaks = [[round(float(math.exp(rng.uniform(math.log(150), math.log(6000)))), 1),
                      round(float(rng.uniform(*c.gain_db)), 2)]
                     for _ in range(int(rng.integers(c.max_peaks + 1)))]
            plan.append({"name": "eq", "tilt": round(float(rng.uniform(*c.tilt_db_per_octave)), 3),
                         "peaks": peaks})
        elif n == "bandpass":
            plan.append({"name": "bandpass", "low_hz": round(float(rng.uniform(*c.low_hz)), 1),
                         "high_hz": round(float(rng.uniform(*c.high_hz)), 1)})
        elif n == "codec":
            plan.append({"name": "codec", "codec": str(c.codecs[int(rng.integers(len(c.codecs)))])})
    return plan
