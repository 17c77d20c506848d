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

from collections import Counter
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


def rate_interval(rate: float | None, n: int, confidence: float = 0.95) -> tuple[float | None, float | None]:
    """The Wilson score interval (scipy's `binomtest`) of a share `rate` of `n` clips: where the
    figure could lie on another sample of as many clips of the same kind. On 80 clips a rate of
    0.113 (9 clips) reads 0.060-0.200, so a goal such as "below 0.10" is not settled by one split
    of that size. (None, None) when the rate is None or n is 0."""
    if rate is None or n <= 0:
        return None, None
    from scipy.stats import binomtest

    ci = binomtest(int(round(rate * n)), n).proportion_ci(confidence, method="wilson")
    return float(ci.low), float(ci.high)


def attribute_accuracy(preds: Sequence[ClueResult], attributes: Sequence[dict | None]) -> dict[str, float | None]:
    """Per attribute `a` in the vocabulary, over the rows whose ground truth has `a`, metrics that
    keep *what the captioner heard* apart from *what it chose to say*:

    acc_<a>:           share whose caption asserts exactly the true value; a caption that does
                       not mention `a` counts as wrong (omission-counts-wrong, recall-like).
    mention_<a>:       share whose caption asserts any value for `a` (what it chose to say).
    acc_stated_<a>:    among the captions that state `a`, the share that state the true value
                       (what it heard); None when no caption states `a`.
    contradiction_<a>: share whose caption states a value other than the true one (a caption
                       that says less is not counted; one that says something false is).
    majority_<a>:      accuracy of always stating the split's most frequent true value: the
                       baseline of acc_stated_<a> that needs no audio.
    chance_<a>:        1 / number of vocabulary values: the baseline of a uniform guess.
    All 0-1; None (chance_<a> too) when no row has `a`. acc = mention x acc_stated, and
    mention = acc + contradiction, on every split.
    """
    out: dict[str, float | None] = {}
    for a, values in ATTRIBUTES.items():
        rows = correct = mentioned = 0
        truths: Counter[str] = Counter()
        for p, attrs in zip(preds, attributes, strict=True):
            truth = known_attributes(attrs).get(a)
            if truth is None:
                continue
            rows += 1
            truths[truth] += 1
            said = p.attributes.get(a)
            mentioned += said is not None
            correct += said == truth
        out[f"acc_{a}"] = correct / rows if rows else None
        out[f"mention_{a}"] = mentioned / rows if rows else None
        out[f"acc_stated_{a}"] = correct / mentioned if mentioned else None
        out[f"contradiction_{a}"] = (mentioned - correct) / rows if rows else None
        out[f"majority_{a}"] = truths.most_common(1)[0][1] / rows if rows else None
        out[f"chance_{a}"] = 1 / len(values) if rows else None
    return out


def majority_hallucination_rate(attributes: Sequence[dict | None]) -> float | None:
    """The hallucination rate of a captioner that ignores the audio and states, for every
    attribute, the split's most frequent true value: the per-caption baseline. None when no row
    has attributes."""
    truths = [known_attributes(a) for a in attributes]
    truths = [t for t in truths if t]
    if not truths:
        return None
    majority = {a: Counter(t[a] for t in truths if a in t).most_common(1)[0][0]
                for a in ATTRIBUTES if any(a in t for t in truths)}
    return sum(any(majority[a] != v for a, v in t.items()) for t in truths) / len(truths)
