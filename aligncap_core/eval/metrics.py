"""`compute_metrics`: every caption metric of method step 7 in one call (ARCHITECTURE.md)."""

from __future__ import annotations

from collections.abc import Sequence

from aligncap_core.errors import ConfigError, DataError
from aligncap_core.eval import clue_metrics as cm
from aligncap_core.eval import text_metrics as tm
from aligncap_core.eval.meteor import MeteorScorer
from aligncap_core.vocab import ATTRIBUTES

REFERENCE_METRICS = ("bleu1", "bleu2", "bleu3", "bleu4", "coco_bleu1", "coco_bleu2", "coco_bleu3", "coco_bleu4",
                     "meteor", "rouge_l", "cider", "clue_precision", "clue_recall", "clue_f1")


# per-attribute metric prefixes (`clue_metrics.attribute_accuracy`), in report order
ATTRIBUTE_METRICS = ("acc", "mention", "acc_stated", "contradiction", "majority", "chance")


# what `inference.evaluate_checkpoint` adds to each split's `compute_metrics` keys
# level_withheld / voice_withheld / pitch_withheld: shares of clips the level / voice / pitch check
# withheld attributes of; voice_told: share of clips whose caption states the gender their formant
# spacing reads, unlike_withheld: of clips whose emotion is left out (both: recordings unlike the
# training audio); struck: of clips with a statement deleted from the chosen caption because the
# candidates did not agree with it (inference.strike); unsure: of clips whose returned caption
# still states something below the agreement bar (no deletion read right, or strike off)
EVALUATION_METRICS = ("kl_gap", "kl_tokens", "level_withheld", "voice_withheld",  # inference.domain
                      "pitch_withheld", "voice_told", "unlike_withheld", "struck", "unsure")


def report_keys() -> list[str]:
    """The metric registry: every metric of one split of an evaluation report, in order. What
    names a metric (the rounds' `select_metric`, the pipeline's and the ablation's tables, the
    plots) names one of these; `check_metric_names` fails on any other name."""
    return metric_keys() + list(EVALUATION_METRICS)


def check_metric_names(names: Sequence[str], what: str) -> None:
    """ConfigError naming `what` when a name is not an evaluation metric (with the closest ones):
    a typo would otherwise select, table or plot nothing, silently."""
    import difflib

    known = report_keys()
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            raise ConfigError(f"{what}: {name!r} is not an evaluation metric"
                              + (f" (did you mean {', '.join(map(repr, close))}?)" if close else "")
                              + "; the metrics are listed by aligncap_core.eval.metrics.report_keys()")


def metric_keys() -> list[str]:
    """Every key `compute_metrics` returns, in order."""
    return (["n", "n_with_refs", "n_with_attributes"] + list(REFERENCE_METRICS[:9]) + ["meteor_error"]
            + list(REFERENCE_METRICS[9:])
            + ["hallucination_rate", "hallucination_low", "hallucination_high", "majority_hallucination_rate",
               "generic_rate", "distinct2"]
            + [f"{p}_{a}" for p in ATTRIBUTE_METRICS for a in ATTRIBUTES])



def compute_metrics(predictions: Sequence[str], references: Sequence[Sequence[str]] | None = None,
                    attributes: Sequence[dict | None] | None = None, *, parser=None,
                    meteor: bool | MeteorScorer = True) -> dict:
    """Caption metrics of `predictions` against `references` and known `attributes`.

    Args:
        predictions: one generated caption per clip (None or "" are scored as empty captions).
        references: per clip, its reference captions (any number; blank ones are ignored).
            Clips with no usable reference count in `n` but are left out of every reference
            metric; `references=None` means no clip has references.
        attributes: per clip, the ground-truth attribute dict (manifest `attributes`) or None.
        parser: an `EmotionClueParser`; default `EmotionClueParser()`.
        meteor: False skips METEOR (and its JVM start-up). A running `MeteorScorer` is used and
            left running (one JVM for several calls: its start-up is ~8 s, scoring 160
            captions ~0.4 s); True starts a JVM for this call and stops it at the end.

    Returns a flat dict (keys in `metric_keys()` order); every score is a float or None:
        n, n_with_refs, n_with_attributes: counts of clips, with references, with attributes.
        bleu1..bleu4: sacrebleu corpus BLEU-n (max_ngram_order=n, exp smoothing), 0-1.
        coco_bleu1..coco_bleu4: pycocoevalcap corpus BLEU-n (the papers' numbers), 0-1.
        meteor: METEOR 1.5 via Java (pycocoevalcap), 0-1; None with `meteor_error` saying why.
        rouge_l: mean best-reference ROUGE-L F (rouge-score), 0-1.
        cider: CIDEr (pycocoevalcap `Cider`; not CIDEr-D, which 1.2 does not ship), 0-10.
        clue_precision, clue_recall, clue_f1: micro-averaged clue-key overlap, 0-1
            (`clue_metrics.clue_prf`).
        hallucination_rate: share of clips with attributes whose caption contradicts one, 0-1.
        hallucination_low, hallucination_high: its 95% Wilson interval over those clips
            (`clue_metrics.rate_interval`): how far another sample of as many clips could read.
        majority_hallucination_rate: the same for a captioner that states every attribute's
            most frequent true value of this set (no audio): the per-caption baseline.
        generic_rate: share of captions with no emotional clue, 0-1.
        distinct2: unique / total bigrams over all captions, 0-1.
        per vocabulary attribute (`clue_metrics.attribute_accuracy`): acc_<attr> (omission counts
            wrong), mention_<attr>, acc_stated_<attr> (accuracy when stated), contradiction_<attr>,
            and the baselines majority_<attr> and chance_<attr>.
    Reference metrics are None when no clip has references; attribute metrics None when no clip
    has attributes; everything but `n` is None for an empty corpus.
    All n-gram metrics use `text_metrics.tokenize` (lower-cased, punctuation dropped).

    Raises DataError when `references` or `attributes` do not have one entry per prediction.
    """
    n = len(predictions)
    references = [[] for _ in range(n)] if references is None else references
    attributes = [None] * n if attributes is None else attributes
    for name, seq in (("references", references), ("attributes", attributes)):
        if len(seq) != n:
            raise DataError(f"compute_metrics: {len(seq)} {name} for {n} predictions; "
                            "pass one entry per prediction (an empty list / None where there is none)")

    out: dict = dict.fromkeys(metric_keys())
    out.update(n=n, n_with_refs=0, n_with_attributes=sum(1 for a in attributes if cm.known_attributes(a)))
    if n == 0:
        out["meteor_error"] = "no captions to score" if meteor is not False else "not computed (meteor=False)"
        return out

    # Start the JVM first: it loads its paraphrase tables while spaCy parses below.
    own = meteor is True
    scorer = meteor if isinstance(meteor, MeteorScorer) else MeteorScorer() if own else None
    try:
        hyps = [tm.normalize(p) for p in predictions]
        raw_refs = [[r for r in (refs or []) if tm.normalize(r)] for refs in references]
        ref_rows = [i for i, rs in enumerate(raw_refs) if rs]
        out["n_with_refs"] = len(ref_rows)

        if parser is None:
            from aligncap_core.clues import EmotionClueParser

            parser = EmotionClueParser()
        flat = [p if p is not None else "" for p in predictions] + [r for i in ref_rows for r in raw_refs[i]]
        parsed = parser.parse_many(flat)
        pred_parsed, ref_parsed = parsed[:n], parsed[n:]

        out["generic_rate"] = cm.generic_rate(pred_parsed)
        out["distinct2"] = tm.distinct_n(hyps, 2)
        out["hallucination_rate"] = cm.hallucination_rate(pred_parsed, attributes)
        out["hallucination_low"], out["hallucination_high"] = cm.rate_interval(
            out["hallucination_rate"], out["n_with_attributes"])
        out["majority_hallucination_rate"] = cm.majority_hallucination_rate(attributes)
        out.update(cm.attribute_accuracy(pred_parsed, attributes))

        if ref_rows:
            h = [hyps[i] for i in ref_rows]
            r = [[tm.normalize(x) for x in raw_refs[i]] for i in ref_rows]
            out.update(zip(("bleu1", "bleu2", "bleu3", "bleu4"), tm.sacrebleu_bleu(h, r), strict=True))
            out.update(zip(("coco_bleu1", "coco_bleu2", "coco_bleu3", "coco_bleu4"), tm.coco_bleu(h, r), strict=True))
            out["rouge_l"] = tm.rouge_l(h, r)
            out["cider"] = tm.cider(h, r)
            # regroup the flat reference parses by row
            grouped, k = [], 0
            for i in ref_rows:
                grouped.append(ref_parsed[k:k + len(raw_refs[i])])
                k += len(raw_refs[i])
            out.update(cm.clue_prf([pred_parsed[i] for i in ref_rows], grouped))
            if scorer is not None:
                out["meteor"], out["meteor_error"] = scorer.score(h, r)
        if scorer is None:
            out["meteor_error"] = "not computed (meteor=False)"
        elif not ref_rows:
            out["meteor_error"] = "no references"
    finally:
        if own and scorer is not None:
            scorer.close()
    return out
