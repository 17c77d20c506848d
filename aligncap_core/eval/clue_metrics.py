"""Caption metrics built on the emotion grammar parser (`aligncap_core.clues`).

All functions take parsed `ClueResult`s, so one `parse_many` call serves every metric.

Clue keys. A clue is compared by a normalised key, not by its surface text:
  (category, value)      when the parser mapped it onto the attribute vocabulary
                         ("quickly", "fast", "rapid" -> ("speed", "fast"));
  (category, head lemma) otherwise (tone and voice-quality words kept verbatim:
                         "trembling" -> ("tone", "trembling")).
Modifiers ("very", "slightly") are not part of the key. Negated clues ("not loudly") are
excluded everywhere: the parser treats them as asserting nothing, and so do these metrics.
Gender words ("a man") are not *emotional* clues: they are excluded from clue P/R/F1 and from
the generic-caption test, and judged by `hallucination_rate` and `acc_gender` instead.
"""

from __future__ import annotations

from collections.abc import Sequence

from aligncap_core.clues import ClueResult
from aligncap_core.vocab import ATTRIBUTES

# Categories that describe *how* the speaker sounds (ARCHITECTURE.md, method step 2).
EMOTIONAL_CATEGORIES = frozenset({"emotion", "pitch", "speed", "volume", "tone", "voice_quality", "intensity"})


def clue_keys(result: ClueResult) -> set[tuple[str, str]]:
    """The normalised keys of the non-negated emotional clues of one parsed text."""
    keys = set()
    for c in result.clues:
        if c.negated or c.category not in EMOTIONAL_CATEGORIES:
            continue
        if c.value is not None and c.value in ATTRIBUTES.get(c.category, ()):
            keys.add((c.category, c.value))
        else:
            keys.add((c.category, (c.head or c.text).lower()))
    return keys


def clue_prf(preds: Sequence[ClueResult], refs: Sequence[Sequence[ClueResult]]) -> dict[str, float | None]:
    """Micro-averaged clue precision / recall / F1 of each caption against its references.

    Per row: P = keys of the caption, R = union of the keys of all its references.
    precision = sum |P & R| / sum |P|, recall = sum |P & R| / sum |R|, F1 their harmonic mean;
    all in 0-1. None where the denominator is 0 (no clue predicted / none in the references).
    """
    tp = n_pred = n_ref = 0
    for p, rs in zip(preds, refs, strict=True):
        pk = clue_keys(p)
        rk = set().union(*(clue_keys(r) for r in rs)) if rs else set()
        tp += len(pk & rk)
        n_pred += len(pk)
        n_ref += len(rk)
    precision = tp / n_pred if n_pred else None
    recall = tp / n_ref if n_ref else None
    if precision is None or recall is None:
        f1 = None
    else:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {"clue_precision": precision, "clue_recall": recall, "clue_f1": f1}


def generic_rate(preds: Sequence[ClueResult]) -> float | None:
    """Share of captions with no non-negated emotional clue ("A person is speaking.",
    "A man says something."); 0-1, lower is better. None for an empty corpus."""
    if not preds:
        return None
    return sum(1 for p in preds if not clue_keys(p)) / len(preds)


def known_attributes(attrs: dict | None) -> dict[str, str]:
    """Ground-truth attributes that can be compared: vocabulary names with vocabulary values."""
    return {k: v for k, v in (attrs or {}).items() if k in ATTRIBUTES and v in ATTRIBUTES[k]}


def hallucination_rate(preds: Sequence[ClueResult], attributes: Sequence[dict | None]) -> float | None:
    """Share of captions that assert an attribute value contradicting the clip's known one; 0-1.

    Counted over rows whose `attributes` hold at least one vocabulary attribute; a caption
    hallucinates if, for any attribute both it (via the parser's `.attributes`) and the ground
    truth specify, the values differ. `normal` vs a non-normal value is a contradiction
    (a caption saying "high-pitched" for a `pitch: normal` clip); an attribute the caption does
    not mention is not. None when no row has attributes.
    """
    rows = hallucinated = 0
    for p, attrs in zip(preds, attributes, strict=True):
        truth = known_attributes(attrs)
        if not truth:
            continue
        rows += 1
        hallucinated += any(p.attributes.get(k, v) != v for k, v in truth.items())
    return hallucinated / rows if rows else None


def attribute_accuracy(preds: Sequence[ClueResult], attributes: Sequence[dict | None]) -> dict[str, float | None]:
    """Per attribute `a` in the vocabulary, over the rows whose ground truth has `a`:

    acc_<a>:     share whose caption asserts exactly the true value. A caption that does not
                 mention `a` counts as wrong, so this is recall-like, not precision-like.
    mention_<a>: share whose caption asserts any value for `a` (acc_<a> / mention_<a> is the
                 precision of the values the captions do state).
    Both 0-1; None when no row has `a`.
    """
    out: dict[str, float | None] = {}
    for a in ATTRIBUTES:
        rows = correct = mentioned = 0
        for p, attrs in zip(preds, attributes, strict=True):
            truth = known_attributes(attrs).get(a)
            if truth is None:
                continue
            rows += 1
            said = p.attributes.get(a)
            mentioned += said is not None
            correct += said == truth
        out[f"acc_{a}"] = correct / rows if rows else None
        out[f"mention_{a}"] = mentioned / rows if rows else None
    return out
