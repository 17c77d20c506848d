"""How well can *any* captioner name each attribute of the built-in corpus? Two ceilings.

    .venv/bin/python docs/experiments/attribute_ceiling.py runs/demo/data [--codes]

1. Bayes ceiling of `emotion` from the generative process itself (no data needed): the corpus
   draws pitch / speed / volume labels and the espeak pitch range *at random* from each
   emotion's profile (`data/synth/profiles.py`), so several emotions can produce the same
   audio. A reader that knew every label and the exact range could still not beat the printed
   accuracy (uniform emotion prior, as the corpus is balanced).
2. Acoustic ceiling per attribute: a gradient-boosted classifier on five clip-level acoustic
   measurements the corpus stores for every clip (median F0 in Hz, F0 spread, seconds per
   word, level in dBFS, peak), trained on `train`, scored on `valid` and `zeroshot`. This is
   what a model that read F0, loudness and rate perfectly from one clip could do, without
   knowing the speaker's usual voice.
3. With `--codes`: the same classifier on the speech tokens the student reads (bag-of-codes of
   codebook 0, `codec.probe.code_features`), the representation's own ceiling.

Prints one JSON object. Figures in docs/experiments/zeroshot_ceiling.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from aligncap_core.data.synth.profiles import EMOTIONS, PROFILES  # noqa: E402

ATTRS = ("emotion", "pitch", "speed", "volume", "gender")
LABELS = {"pitch": ("low", "normal", "high"), "speed": ("slow", "normal", "fast"),
          "volume": ("soft", "normal", "loud")}


def emotion_joint(emotion: str) -> dict[tuple, float]:
    """P(pitch, speed, volume, range | emotion) of the corpus generator."""
    prof = PROFILES[emotion]
    parts = [(1.0, {}, prof.range)]
    if prof.has_intensity:
        parts = [(1 - prof.strong_p, {}, prof.range),
                 (prof.strong_p, prof.strong, prof.strong_range or prof.range)]
    out: dict[tuple, float] = {}
    for w, strong, (lo, hi) in parts:
        for labels in itertools.product(*LABELS.values()):
            p = w
            for attr, value in zip(LABELS, labels, strict=True):
                p *= strong.get(attr, getattr(prof, attr)).get(value, 0.0)
            for r in range(lo, hi + 1) if p else ():
                out[(*labels, r)] = out.get((*labels, r), 0.0) + p / (hi - lo + 1)
    return out


def bayes_emotion_ceiling() -> dict[str, float]:
    joint = {e: emotion_joint(e) for e in EMOTIONS}

    def ceiling(key) -> float:  # accuracy of the MAP emotion given key(observation)
        by_obs: dict[tuple, dict[str, float]] = {}
        for e, dist in joint.items():
            for obs, p in dist.items():
                cell = by_obs.setdefault(key(obs), {})
                cell[e] = cell.get(e, 0.0) + p
        return sum(max(c.values()) for c in by_obs.values()) / len(EMOTIONS)

    return {"chance": round(1 / len(EMOTIONS), 3),
            "labels_only": round(ceiling(lambda o: o[:3]), 3),
            "labels_and_range_bins_of_10": round(ceiling(lambda o: (*o[:3], o[3] // 10)), 3),
            "labels_and_exact_range": round(ceiling(lambda o: o), 3)}


def acoustic_features(row: dict) -> list[float]:
    m = row["measured"]
    words = max(len(row["transcript"].split()), 1)
    return [m["f0_hz"], m["f0_spread_st"], m["duration_s"] / words, m["level_dbfs"],
            20 * np.log10(max(m["peak"], 1e-6))]


def classifier_ceiling(rows: list[dict], features) -> dict[str, dict[str, float]]:
    from sklearn.ensemble import HistGradientBoostingClassifier

    train = [r for r in rows if r["split"] == "train"]
    x = np.nan_to_num(np.array([features(r) for r in train], dtype=np.float64))
    out: dict[str, dict[str, float]] = {}
    for attr in ATTRS:
        y = np.array([r["attributes"][attr] for r in train])
        clf = HistGradientBoostingClassifier(max_iter=200, random_state=0).fit(x, y)
        out[attr] = {}
        for split in ("valid", "zeroshot"):
            test = [r for r in rows if r["split"] == split]
            xt = np.nan_to_num(np.array([features(r) for r in test], dtype=np.float64))
            yt = np.array([r["attributes"][attr] for r in test])
            out[attr][split] = round(float(np.mean(clf.predict(xt) == yt)), 3)
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data_dir", type=Path, help="a prepared + tokenized data dir (built-in corpus)")
    ap.add_argument("--codes", action="store_true", help="also the bag-of-codes ceiling")
    args = ap.parse_args(argv)
    rows = [json.loads(line) for line in (args.data_dir / "manifest.jsonl").open()]
    result = {"bayes_emotion": bayes_emotion_ceiling(),
              "acoustic": classifier_ceiling(rows, acoustic_features)}
    if args.codes:
        from aligncap_core.codec.dataset import load_codes
        from aligncap_core.codec.probe import code_features

        result["codes_q0"] = classifier_ceiling(
            rows, lambda r: code_features(load_codes(args.data_dir, r)[:1]))
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
