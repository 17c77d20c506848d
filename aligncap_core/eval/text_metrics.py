"""N-gram caption metrics: BLEU (sacrebleu and COCO), ROUGE-L, CIDEr, distinct-n.

Every metric here sees the same tokens, produced by `tokenize`: NFKC-normalised, lower-cased,
punctuation dropped, words kept whole ("don't" stays one token). COCO's PTBTokenizer needs a
Stanford CoreNLP JVM per call and splits clitics ("do n't"); the regex tokenizer is used
instead so every metric agrees and no extra JVM starts. Scores are therefore close to, not
identical with, numbers computed through the COCO toolkit's own tokenizer.

Inputs are already tokenized strings (tokens joined by single spaces) and references are
non-empty per row: `compute_metrics` does that preparation and drops rows without references.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

# A word is a run of letters/digits (any script), optionally joined by apostrophes.
_WORD = re.compile(r"[^\W_]+(?:'[^\W_]+)*")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'"})


def tokenize(text: object) -> list[str]:
    """Lower-cased word tokens of `text`; punctuation and whitespace are dropped.

    None -> []. Non-ASCII letters are kept ("café" is one token); curly apostrophes are
    normalised to "'" so "don’t" and "don't" match.
    """
    if text is None:
        return []
    s = unicodedata.normalize("NFKC", str(text)).translate(_APOSTROPHES).lower()
    return _WORD.findall(s)


def normalize(text: object) -> str:
    """`tokenize(text)` joined by single spaces: the form every n-gram metric is fed."""
    return " ".join(tokenize(text))


def sacrebleu_bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]], max_order: int = 4) -> list[float]:
    """Corpus BLEU-1..max_order from sacrebleu, scaled to 0-1 (sacrebleu reports 0-100).

    BLEU-n is sacrebleu's `BLEU(max_ngram_order=n)`: geometric mean of clipped 1..n-gram
    precisions pooled over the corpus, times the brevity penalty (closest reference length),
    default `exp` smoothing. Text is pre-tokenized, so sacrebleu's own tokenizer is off.
    Rows may have different numbers of references (missing slots are passed as None).
    """
    from sacrebleu.metrics import BLEU

    width = max(len(r) for r in refs)
    # sacrebleu wants reference *streams* (one list per reference slot); None marks a missing one
    streams = [[r[k] if k < len(r) else None for r in refs] for k in range(width)]
    out = []
    for n in range(1, max_order + 1):
        bleu = BLEU(tokenize="none", max_ngram_order=n, force=True)
        out.append(bleu.corpus_score(list(hyps), streams).score / 100.0)
    return out


def coco_bleu(hyps: Sequence[str], refs: Sequence[Sequence[str]], max_order: int = 4) -> list[float]:
    """Corpus BLEU-1..max_order from pycocoevalcap (the numbers captioning papers report), 0-1.

    Differs from sacrebleu's: no smoothing (a tiny epsilon only), and the brevity penalty uses
    the "closest" reference length per caption as in the COCO toolkit.
    """
    from pycocoevalcap.bleu.bleu import Bleu

    gts = {i: list(r) for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    scores, _ = Bleu(max_order).compute_score(gts, res, verbose=0)
    return [float(s) for s in scores]


def cider(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Corpus CIDEr (Vedantam et al. 2015) from pycocoevalcap's `Cider`; range 0-10.

    This is CIDEr, not CIDEr-D: pycocoevalcap 1.2 ships only `Cider` (TF-IDF weighted 1-4-gram
    cosine similarity, x10, with a Gaussian length penalty; no clipping of counts). The IDF comes
    from the evaluated corpus's references, so the value depends on the corpus: a single-row
    corpus always scores 0 (every n-gram has document frequency 1 = log(1)).
    """
    from pycocoevalcap.cider.cider import Cider

    gts = {i: list(r) for i, r in enumerate(refs)}
    res = {i: [h] for i, h in enumerate(hyps)}
    score, _ = Cider().compute_score(gts, res)
    return float(score)


class _WhitespaceTokenizer:
    """rouge-score tokenizer for already-normalised text (its default drops non-ASCII words)."""

    @staticmethod
    def tokenize(text: str) -> list[str]:
        return text.split()


def rouge_l(hyps: Sequence[str], refs: Sequence[Sequence[str]]) -> float:
    """Mean over captions of the best ROUGE-L F-measure against any of its references; 0-1.

    ROUGE-L F is the harmonic mean of LCS/len(hyp) and LCS/len(ref) (rouge-score, no stemming).
    An empty caption scores 0.
    """
    from rouge_score.rouge_scorer import RougeScorer

    scorer = RougeScorer(["rougeL"], tokenizer=_WhitespaceTokenizer())
    total = 0.0
    for h, rs in zip(hyps, refs, strict=True):
        total += max(scorer.score(r, h)["rougeL"].fmeasure for r in rs)
    return total / len(hyps)


def distinct_n(hyps: Sequence[str], n: int = 2) -> float | None:
    """Distinct-n: unique n-grams / total n-grams over all captions (n-grams never cross
    caption boundaries); 0-1, higher is more diverse. None when no caption has n tokens."""
    seen: set[tuple[str, ...]] = set()
    total = 0
    for h in hyps:
        toks = h.split()
        grams = [tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else None
