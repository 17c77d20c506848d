"""Attribute-swap preference pairs for a finished round (po_rounds.md, section 9; an experiment,
not a pair strategy of the product).

For each clip of a round's randomised copies (`round-k/clips/manifest.jsonl`, rows with labels
and `measured`), caption pairs that differ in one attribute value: the corpus' own caption
writer (`data.synth.captions.write_captions`) run twice from the same seed, once on the clip's
labels and once with one label swapped for a wrong value (two wrong emotions, one wrong pitch,
speed, volume and gender per clip), kept when the clue parser reads the first as faithful and
the second as contradicting exactly the swapped attribute (POVID-style injected
hallucinations). Scored with the rubric judge; the prompt ids are the round's own
(`round-k/candidates.jsonl`), so `improve.steps.dpo_step` trains on them as on the round's pairs.

    .venv/bin/python docs/experiments/swap_pairs.py pairs RUN/round-1 OUT/pairs.jsonl
    .venv/bin/python docs/experiments/swap_pairs.py dpo RUN OUT/pairs.jsonl OUT/policy STEPS [LR]

`dpo` trains round 1's DPO step (`improve.steps.dpo_step`, KD term kept) from the run's starting
policy with its config (`RUN/config.json`), STEPS steps and learning rate LR instead of its own;
the step metrics go to OUT/dpo_metrics.jsonl.
"""

from __future__ import annotations

import sys
from collections import Counter

import numpy as np

from aligncap_core.clues import EmotionClueParser
from aligncap_core.data.synth.captions import write_captions
from aligncap_core.data.synth.profiles import EMOTIONS
from aligncap_core.prefs.judge_types import JudgeItem
from aligncap_core.prefs.judges import contradicted, make_judge
from aligncap_core.utils import read_jsonl, write_jsonl

VALUES = {"emotion": list(EMOTIONS), "pitch": ["low", "normal", "high"],
          "speed": ["slow", "normal", "fast"], "volume": ["soft", "normal", "loud"],
          "gender": ["male", "female"]}


def swaps(rng: np.random.Generator, truth: dict, n_emotion: int = 2) -> list[tuple[str, str]]:
    wrong = [e for e in VALUES["emotion"] if e != truth["emotion"]]
    out = [("emotion", str(v)) for v in rng.choice(wrong, n_emotion, replace=False)]
    for a in ("pitch", "speed", "volume", "gender"):
        out.append((a, str(rng.choice([v for v in VALUES[a] if v != truth[a]]))))
    return out


def main(round_dir: str, out: str) -> None:
    rows = read_jsonl(f"{round_dir}/clips/manifest.jsonl")
    prompts = {r["id"]: r["prompt_ids"] for r in read_jsonl(f"{round_dir}/candidates.jsonl")}
    parser = EmotionClueParser()
    found = []
    for i, r in enumerate(rows):
        if r["id"] not in prompts:
            continue  # the round left it out (too long to read at once)
        truth, rng = r["attributes"], np.random.default_rng([0, i])
        for attr, value in swaps(rng, truth):
            for _ in range(20):
                seed = int(rng.integers(1 << 31))
                chosen, c_stated = write_captions(np.random.default_rng(seed), truth, r["measured"], n=1)
                rejected, r_stated = write_captions(np.random.default_rng(seed), {**truth, attr: value},
                                                    r["measured"], n=1)
                if attr in c_stated[0] and r_stated[0].get(attr) == value:
                    pc, pr = parser.parse_many([chosen[0], rejected[0]])
                    if not contradicted(pc, truth) and contradicted(pr, truth) == [attr]:
                        found.append((r, chosen[0], rejected[0], attr, value))
                        break
    items = []
    for r, c, j, _, _ in found:
        kw = dict(references=tuple(r["captions"]), transcript=r["transcript"], attributes=r["attributes"])
        items += [JudgeItem(r["id"], c, **kw), JudgeItem(r["id"], j, **kw)]
    scores = make_judge({"kind": "rubric"}).score(items)
    pairs = []
    for n, (r, c, j, attr, value) in enumerate(found):
        cj, rj = scores[2 * n], scores[2 * n + 1]
        pairs.append({"id": r["id"], "prompt": None, "chosen": c, "rejected": j,
                      "chosen_score": cj.score, "rejected_score": rj.score,
                      "margin": round(cj.score - rj.score, 6), "chosen_criteria": cj.criteria,
                      "rejected_criteria": rj.criteria,
                      "provenance": {"strategy": "attribute_swap", "swapped": [attr, value]},
                      "prompt_ids": prompts[r["id"]], "transcript": r["transcript"],
                      "attributes": r["attributes"]})
    write_jsonl(out, pairs)
    print(f"{len(rows)} clips, {len(pairs)} pairs:",
          dict(Counter(p["provenance"]["swapped"][0] for p in pairs)))


def dpo(run: str, pairs: str, out: str, steps: str, lr: str | None = None) -> None:
    import json
    from pathlib import Path

    from aligncap_core.improve.steps import dpo_step
    from aligncap_core.train.loggers import JsonlLogger

    record = json.loads(Path(run, "config.json").read_text())
    cfg = record["config"]
    cfg["dpo"] = {**cfg["dpo"], "max_steps": int(steps), **({"learning_rate": float(lr)} if lr else {})}
    print(dpo_step(record["from"], pairs, f"{run}/round-1/clips", out, cfg, 1,
                   JsonlLogger(Path(out).parent / "dpo_metrics.jsonl")))


if __name__ == "__main__":
    {"pairs": main, "dpo": dpo}[sys.argv[1]](*sys.argv[2:])
