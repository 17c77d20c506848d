"""How far a corpus' pitch / speed / volume labels follow from its emotion labels, and whether a
student's wrong statements are the stated emotion's typical values (a whole-profile confusion).

    python docs/experiments/profile_ties.py DATA/manifest.jsonl EVAL/predictions.jsonl [...]
    python docs/experiments/profile_ties.py --untied DATA/manifest.jsonl EVAL/predictions.jsonl

Prints, for the train split, the share of clips whose value is their emotion's most common one
(1.000: the attribute is a function of the emotion) beside the overall majority share; then, over
the predictions' captions, each wrong pitch / speed / volume / gender statement counted by
whether the caption's emotion is wrong too and whether the statement is the stated emotion's
typical (most common train) value. docs/experiments/zeroshot_ceiling.md, "Whole-profile
confusions".
"""

from __future__ import annotations

import json
import sys
from collections import Counter, defaultdict

from aligncap_core.clues import EmotionClueParser

ATTRS = ("pitch", "speed", "volume", "gender")


def main(manifest: str, predictions: list[str]) -> None:
    rows = [json.loads(line) for line in open(manifest) if line.strip()]
    by: dict[str, dict[str, Counter]] = {a: defaultdict(Counter) for a in ATTRS}
    for r in rows:
        if r.get("split") == "train":
            lab = r["attributes"]
            for a in ATTRS:
                if a in lab:
                    by[a][lab["emotion"]][lab[a]] += 1
    typical = {}
    print("train: share of clips whose value is their emotion's most common one (overall majority)")
    for a in ATTRS:
        n = sum(sum(c.values()) for c in by[a].values())
        overall = Counter()
        for c in by[a].values():
            overall.update(c)
        hit = sum(c.most_common(1)[0][1] for c in by[a].values())
        print(f"  {a}: {hit / n:.3f} ({overall.most_common(1)[0][1] / n:.3f})")
        typical[a] = {e: c.most_common(1)[0][0] for e, c in by[a].items()}
    parser, tally = EmotionClueParser(), Counter()
    for path in predictions:
        for r in map(json.loads, open(path)):
            lab, said = r["attributes"] or {}, parser.parse(r["prediction"]).attributes
            emotion_wrong = "emotion" in said and said["emotion"] != lab.get("emotion")
            for a in ATTRS:
                if a in said and a in lab and said[a] != lab[a]:
                    e = said.get("emotion")
                    tally[("emotion wrong too" if emotion_wrong else "emotion right or unstated",
                           "the stated emotion's typical value" if e and typical[a].get(e) == said[a]
                           else "another value")] += 1
    print("wrong pitch / speed / volume / gender statements:")
    for k, v in sorted(tally.items()):
        print(f"  {k[0]}, {k[1]}: {v}")




def untied(manifest: str, predictions: str) -> None:
    """On clips whose pitch / speed / volume label was moved away from their emotion's typical
    value (augmented copies, labels re-measured): per attribute, how often a caption that states
    it says the true (moved) value, and how often the emotion's typical value instead.

        python docs/experiments/profile_ties.py --untied TRAIN_MANIFEST PREDICTIONS
    """
    rows = [json.loads(line) for line in open(manifest) if line.strip()]
    typical: dict[str, dict[str, str]] = {}
    for a in ATTRS[:3]:
        c: dict[str, Counter] = defaultdict(Counter)
        for r in rows:
            if r.get("split") == "train" and a in r["attributes"]:
                c[r["attributes"]["emotion"]][r["attributes"][a]] += 1
        typical[a] = {e: v.most_common(1)[0][0] for e, v in c.items()}
    parser, tally = EmotionClueParser(), Counter()
    for r in map(json.loads, open(predictions)):
        lab, said = r["attributes"] or {}, parser.parse(r["prediction"]).attributes
        for a in ATTRS[:3]:
            if a not in lab:
                continue
            kind = "tied" if typical[a].get(lab["emotion"]) == lab[a] else "moved"
            tally[(a, kind, "clips")] += 1
            if a in said:
                tally[(a, kind, "stated")] += 1
                tally[(a, kind, "true")] += said[a] == lab[a]
                tally[(a, kind, "typical")] += said[a] == typical[a].get(lab["emotion"])
    for a in ATTRS[:3]:
        for kind in ("tied", "moved"):
            n, s = tally[(a, kind, "clips")], tally[(a, kind, "stated")]
            if n:
                print(f"  {a} {kind}: {n} clips, stated {s}, true {tally[(a, kind, 'true')]}, "
                      f"the emotion's typical value {tally[(a, kind, 'typical')]}")


if __name__ == "__main__":
    if sys.argv[1] == "--untied":
        untied(sys.argv[2], sys.argv[3])
    else:
        main(sys.argv[1], sys.argv[2:])
