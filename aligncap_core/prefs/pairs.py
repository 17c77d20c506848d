"""Chosen/rejected caption pairs from judged candidates (preference round step 3).

    judged = judge_clips(judge, clips)          # scores samples *and* references, one batch
    pairs = build_preference_pairs(judged, strategy="golden_vs_sample", round=1,
                                   policy="runs/distill/step-00000400", judge=judge.name)
    write_pairs("runs/round-1/pairs.jsonl", pairs)

Strategies:
  golden_vs_sample (SpeechAlign): chosen = the best-scored reference caption, rejected = sampled
      captions, lowest score first. A sample scoring within `min_margin` of that reference is
      skipped: the judge rates it as good as the golden caption, and pushing its likelihood
      down would teach the policy to avoid good captions (SpeechAlign rejects every sample; the
      margin removes those false negatives). A sample equal to a reference is never rejected.
  best_vs_worst (AlignCap): the i-th best vs the i-th worst sample (i = 0, 1, ...), while the
      score gap is >= min_margin and the two halves do not meet.
  faithful_vs_contradicting: rejected = sampled captions that contradict the clip's evidence
      (its known attributes, else what its references state unanimously: `judges.
      evidence_attributes`), most contradictions first; chosen = the best-scored sample that
      contradicts nothing and states at least one verified value, else the best-scored
      reference. Both sides come from the same clip and (usually) the same policy, and the pair
      differs where the hallucination is, so DPO's signal is about the false statement, not
      about wording; min_margin does not apply (a contradiction is the reason for the pair).
Ties are broken deterministically: by score, then by caption text. Skipped judgments are never
used. At most `max_pairs_per_clip` pairs per clip.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aligncap_core.errors import ConfigError, DataError
from aligncap_core.prefs.candidates import normalize_caption
from aligncap_core.prefs.judge_types import Judge, JudgeItem, Judgment
from aligncap_core.utils import read_jsonl, write_jsonl

STRATEGIES = ("golden_vs_sample", "best_vs_worst", "faithful_vs_contradicting")
PAIR_FIELDS = ("id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", "margin",
               "provenance")
# Clip fields copied onto each pair row when present (the DPO round reads teacher_text).
PASS_THROUGH = ("teacher_text", "prompt_ids", "instruction", "transcript", "attributes")


def judge_clips(judge: Judge, clips: Sequence[dict]) -> list[dict]:
    """Score every candidate and every reference caption of `clips` in one `judge.score` call.

    clips: `{"id", "prompt", "candidates": [str], "references": [str], "instruction"?,
    "transcript"?, "attributes"?, ...}`. Returns the rows with `candidates` and `references`
    turned into `[(text, Judgment)]` (other keys kept), the input of `build_preference_pairs`.
    """
    items: list[JudgeItem] = []
    for c in clips:
        refs = tuple(c.get("references") or ())
        kw = dict(references=refs, transcript=c.get("transcript") or "",
                  attributes=dict(c.get("attributes") or {}))
        if c.get("instruction"):
            kw["instruction"] = c["instruction"]
        items += [JudgeItem(c["id"], t, **kw) for t in [*c.get("candidates", ()), *refs]]
    judgments = iter(judge.score(items))
    out = []
    for c in clips:
        row = dict(c)
        row["candidates"] = [(t, next(judgments)) for t in c.get("candidates", ())]
        row["references"] = [(t, next(judgments)) for t in c.get("references") or ()]
        out.append(row)
    return out


def _scored(entries: Sequence, clip: str, what: str) -> list[tuple[str, Judgment]]:
    """Valid (text, judgment) entries: skipped or unscored ones are dropped."""
    out = []
    for e in entries:
        if not (isinstance(e, list | tuple) and len(e) == 2):
            raise ConfigError(f"{clip}: {what} must be (text, Judgment) pairs; score the "
                              "references with the same judge (prefs.pairs.judge_clips)")
        text, j = e
        if isinstance(j, dict):
            j = Judgment.from_dict(j)
        if not j.skipped and j.score is not None:
            out.append((text, j))
    return out


def _by_score(entries: list[tuple[str, Judgment]], best_first: bool) -> list[tuple[str, Judgment]]:
    # stable, total order: score, then text (the text breaks ties the same way on every run)
    if best_first:
        return sorted(entries, key=lambda e: (-e[1].score, e[0]))
    return sorted(entries, key=lambda e: (e[1].score, e[0]))


def _pair(row: dict, chosen: tuple[str, Judgment], rejected: tuple[str, Judgment],
          provenance: dict) -> dict[str, Any]:
    (ct, cj), (rt, rj) = chosen, rejected
    out = {"id": row["id"], "prompt": row.get("prompt"), "chosen": ct, "rejected": rt,
           "chosen_score": cj.score, "rejected_score": rj.score,
           "margin": round(cj.score - rj.score, 6),
           "chosen_criteria": cj.criteria, "rejected_criteria": rj.criteria,
           "provenance": provenance}
    out.update({k: row[k] for k in PASS_THROUGH if row.get(k) is not None})
    return out


def build_preference_pairs(judged: Sequence[dict], strategy: str = "golden_vs_sample",
                           min_margin: float = 1.0, max_pairs_per_clip: int = 2, *,
                           round: int, policy: str, judge: str, parser: Any = None) -> list[dict]:
    """Pairs `{"id", "prompt", "chosen", "rejected", "chosen_score", "rejected_score", "margin",
    "chosen_criteria", "rejected_criteria", "provenance": {round, policy, judge, strategy,
    min_margin}}` (+ PASS_THROUGH fields of the clip), clips in input order.

    judged: rows of `judge_clips` (`candidates` / `references` as `[(text, Judgment)]`;
    Judgment dicts are accepted too). See the module doc for the strategies. parser: the
    emotion clue parser faithful_vs_contradicting checks captions with (default: a new one).
    """
    if strategy not in STRATEGIES:
        raise ConfigError(f"unknown pair strategy {strategy!r}; use one of {', '.join(STRATEGIES)}")
    if min_margin < 0:
        raise ConfigError(f"min_margin must be >= 0, got {min_margin}")
    if max_pairs_per_clip < 1:
        raise ConfigError(f"max_pairs_per_clip must be >= 1, got {max_pairs_per_clip}")
    prov = {"round": int(round), "policy": str(policy), "judge": str(judge),
            "strategy": strategy, "min_margin": float(min_margin)}
    if strategy == "faithful_vs_contradicting":
        return _contrast_pairs(judged, max_pairs_per_clip, prov, parser)
    pairs: list[dict] = []
    for row in judged:
        clip = row.get("id")
        if not clip:
            raise ConfigError("build_preference_pairs: a judged row has no 'id'")
        samples = _scored(row.get("candidates") or (), clip, "candidates")
        if strategy == "golden_vs_sample":
            refs = _scored(row.get("references") or (), clip, "references")
            if not refs:
                continue  # no usable golden caption (none, or its judgment was skipped)
            golden = _by_score(refs, best_first=True)[0]
            ref_keys = {normalize_caption(t) for t, _ in refs}
            rejected = [s for s in _by_score(samples, best_first=False)
                        if normalize_caption(s[0]) not in ref_keys
                        and golden[1].score - s[1].score >= min_margin]
            pairs += [_pair(row, golden, r, prov) for r in rejected[:max_pairs_per_clip]]
        else:
            # worst = best reversed (not a second sort): with tied scores the two halves stay
            # disjoint, so a caption is never paired with itself
            best = _by_score(samples, best_first=True)
            worst = best[::-1]
            for i in range(min(max_pairs_per_clip, len(samples) // 2)):
                if best[i][1].score - worst[i][1].score < min_margin:
                    break  # later pairs are closer still
                pairs.append(_pair(row, best[i], worst[i], prov))
    return pairs


def _contrast_pairs(judged: Sequence[dict], max_pairs_per_clip: int, prov: dict,
                    parser: Any) -> list[dict]:
    """faithful_vs_contradicting (module doc), with every text parsed in one call."""
    from aligncap_core.prefs.judges import contradicted, evidence_attributes

    if parser is None:
        from aligncap_core.clues import EmotionClueParser

        parser = EmotionClueParser()
    rows = []
    for row in judged:
        clip = row.get("id")
        if not clip:
            raise ConfigError("build_preference_pairs: a judged row has no 'id'")
        rows.append((row, _scored(row.get("candidates") or (), clip, "candidates"),
                     _scored(row.get("references") or (), clip, "references")))
    texts = sorted({t for _, samples, refs in rows for t, _ in (*samples, *refs)})
    parsed = dict(zip(texts, parser.parse_many(texts), strict=True))
    pairs: list[dict] = []
    for row, samples, refs in rows:
        truth = evidence_attributes(row.get("attributes"), [parsed[t] for t, _ in refs])
        if not truth:
            continue  # nothing to check a caption against
        bad = {t: contradicted(parsed[t], truth) for t, _ in samples}
        faithful = [s for s in _by_score(samples, best_first=True) if not bad[s[0]]
                    and any(parsed[s[0]].attributes.get(k) == v for k, v in truth.items())]
        golden = [r for r in _by_score(refs, best_first=True) if not contradicted(parsed[r[0]], truth)]
        chosen = faithful[0] if faithful else golden[0] if golden else None
        rejected = sorted((s for s in samples if bad[s[0]]),
                          key=lambda s: (-len(bad[s[0]]), s[1].score, s[0]))
        if chosen is None:
            continue
        for r in rejected[:max_pairs_per_clip]:
            pairs.append(_pair(row, chosen, r, {**prov, "contradicts": bad[r[0]],
                                                "chosen_from": "sample" if faithful else "reference"}))
    return pairs


def write_pairs(path: str | Path, pairs: Sequence[dict]) -> Path:
    """Pairs as JSON Lines, written atomically. Returns the path."""
    write_jsonl(path, pairs)
    return Path(path)


def read_pairs(path: str | Path) -> list[dict]:
    """Pairs written by `write_pairs`; a row missing a field is an error naming its line."""
    try:
        rows = read_jsonl(path)
    except FileNotFoundError:
        raise DataError(f"{path}: pairs file not found") from None
    except ValueError as e:
        raise DataError(f"{path}: not valid JSON Lines ({e})") from None
    for n, r in enumerate(rows, 1):
        missing = [k for k in PAIR_FIELDS if k not in r]
        if missing:
            raise DataError(f"{path} line {n} ({r.get('id', '?')}): missing {missing}")
        if not (isinstance(r["chosen"], str) and isinstance(r["rejected"], str)):
            raise DataError(f"{path} line {n} ({r['id']}): chosen/rejected must be strings")
    return rows
