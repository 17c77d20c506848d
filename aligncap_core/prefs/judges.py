"""Judges that score candidate captions (preference round step 2).

A judge maps `JudgeItem`s (one candidate caption + the clip's evidence) to `Judgment`s with a
1-10 score per criterion, in the spirit of AlignCap's GPT-3.5 scoring:
  faithfulness  it is a caption of *how the speaker sounds*, as the instruction asks;
  factual       it agrees with the evidence (reference captions, known attributes);
  richness      it names specific emotional clues, not "a person is speaking";
  fluency       it reads as one natural sentence, without loops or repeated phrases.

`RubricJudge` (offline, deterministic, the default) computes these from the emotion clue
parser; `OpenAIJudge` (`prefs.openai_judge`) asks an OpenAI-compatible LLM. `make_judge(cfg)`
builds either from a config dict. The types both judges share (`JudgeItem`, `Judgment`, `Judge`,
`RubricWeights`, the criteria) live in `prefs.judge_types` and are re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from aligncap_core.clues import ClueResult, EmotionClueParser
from aligncap_core.errors import ConfigError
from aligncap_core.eval.clue_metrics import clue_keys, known_attributes

# The shared types moved to `judge_types`; importing them from here keeps working.
from aligncap_core.prefs.judge_types import (  # noqa: F401 - re-exported
    CRITERIA,
    MAX_SCORE,
    MIN_SCORE,
    RUBRIC_VERSION,
    Judge,
    JudgeItem,
    Judgment,
    RubricWeights,
    clamp,
)

_MARKUP = re.compile(r"<[^<>\s]{1,40}>|\[/?[A-Za-z_]+\]|</?s>")
_WORD = re.compile(r"[a-z0-9']+")
NEUTRAL_FACTUAL = 7.0  # nothing verifiable asserted: neither credited nor penalised


def evidence_attributes(known: dict | None, refs: Sequence[ClueResult]) -> dict[str, str]:
    """Attribute truth for one clip: the known labels, completed by values the references
    assert unanimously (a clip without labels is judged against its references)."""
    truth = known_attributes(known)  # eval's filter: vocabulary names with vocabulary values
    from_refs: dict[str, set[str]] = {}
    for r in refs:
        for k, v in r.attributes.items():
            from_refs.setdefault(k, set()).add(v)
    for k, vs in from_refs.items():
        if k not in truth and len(vs) == 1:
            truth[k] = next(iter(vs))
    return truth


def contradicted(result: ClueResult, truth: dict[str, str]) -> list[str]:
    """Attributes whose asserted value differs from the truth: the per-attribute form of
    `eval.clue_metrics.hallucination_rate` (normal vs non-normal counts; unmentioned does not)."""
    return sorted(k for k, v in truth.items() if result.attributes.get(k, v) != v)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def fluency_score(text: str) -> tuple[float, str]:
    """10 minus penalties for low word diversity and repeated bigrams/trigrams.

    Natural captions repeat function words ("a ... a"), so diversity is only penalised below
    0.8 distinct words; any repeated bigram is a loop symptom ("very very sad sad").
    """
    w = _words(text)
    if len(w) < 2:
        return MAX_SCORE, ""
    distinct = len(set(w)) / len(w)
    penalty = 12.0 * max(0.0, 0.8 - distinct)
    notes = []
    for n, weight in ((2, 8.0), (3, 6.0)):
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        if grams:
            rep = 1.0 - len(set(grams)) / len(grams)
            penalty += weight * rep
            if rep > 0:
                notes.append(f"repeated {n}-grams")
    if distinct < 0.8:
        notes.append(f"distinct words {distinct:.2f}")
    return round(clamp(MAX_SCORE - penalty), 4), ", ".join(dict.fromkeys(notes))


class RubricJudge:
    """Offline, deterministic rubric judge built on the emotion clue parser.

    Per candidate (all texts parsed in one `parse_many` call):
      factual      7 when nothing checkable is asserted; + agreement_bonus per attribute that
                   matches the evidence, - contradiction_penalty per contradicted one.
      richness     1 + matched_clue_points per clue key shared with the evidence (reference
                   clue keys and the true attribute values) + extra_clue_points per other
                   uncontradicted clue; 1 for a generic caption.
      faithfulness 10, minus 5 for stray audio tokens / markup, 6 for a copy of the transcript
                   (or 4 for a caption mostly made of its words with no clue), 3 outside the
                   word bounds; 1 for an empty caption (every criterion is then 1).
      fluency      see `fluency_score`.
    Overall: `RubricWeights.overall` (weighted mean, generic penalty).
    """

    name = "rubric"

    def __init__(self, weights: RubricWeights | None = None,
                 parser: EmotionClueParser | None = None):
        self.weights = weights or RubricWeights()
        self._parser = parser

    @property
    def parser(self) -> EmotionClueParser:
        if self._parser is None:
            self._parser = EmotionClueParser()
        return self._parser

    def score(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        if not items:
            return []
        refs = sorted({r for it in items for r in it.references})
        parsed = self.parser.parse_many([it.candidate for it in items] + refs)
        cands, ref_parsed = parsed[: len(items)], dict(zip(refs, parsed[len(items):], strict=True))
        return [self._judge(it, c, [ref_parsed[r] for r in it.references])
                for it, c in zip(items, cands, strict=True)]

    def _judge(self, item: JudgeItem, cand: ClueResult, refs: list[ClueResult]) -> Judgment:
        w = self.weights
        text = item.candidate.strip()
        words = _words(text)
        if not words:
            crit = dict.fromkeys(CRITERIA, MIN_SCORE)
            return Judgment(MIN_SCORE, crit, "empty caption", self.name)
        truth = evidence_attributes(item.attributes, refs)
        keys = clue_keys(cand)
        generic = not keys  # eval.clue_metrics.generic_rate's definition, per caption
        notes: list[str] = []

        # factual
        bad = contradicted(cand, truth)
        agree = [k for k, v in truth.items() if cand.attributes.get(k) == v]
        if bad:
            notes.append("contradicts " + ", ".join(
                f"{k}={cand.attributes[k]} (evidence {truth[k]})" for k in bad))
        factual = (NEUTRAL_FACTUAL if not (bad or agree) else
                   clamp(NEUTRAL_FACTUAL + w.agreement_bonus * len(agree)
                         - w.contradiction_penalty * len(bad)))

        # richness
        evidence_keys = set().union(*(clue_keys(r) for r in refs)) if refs else set()
        evidence_keys |= {(k, v) for k, v in truth.items() if k != "gender"}
        matched = keys & evidence_keys
        extra = {k for k in keys - matched if k[0] not in bad}
        richness = MIN_SCORE if generic else clamp(
            MIN_SCORE + w.matched_clue_points * len(matched) + w.extra_clue_points * len(extra))
        notes.append("generic caption" if generic else f"{len(matched)} matched clues")

        # faithfulness
        faith = MAX_SCORE
        if _MARKUP.search(text):
            faith -= 5.0
            notes.append("markup/audio tokens")
        tw = _words(item.transcript)
        if tw and words == tw:
            faith -= 6.0
            notes.append("copies the transcript")
        elif tw and generic and sum(x in set(tw) for x in words) / len(words) >= 0.7:
            faith -= 4.0
            notes.append("mostly transcript words")
        if not w.min_words <= len(words) <= w.max_words:
            faith -= 3.0
            notes.append(f"{len(words)} words")
        faith = clamp(faith)

        flu, flu_note = fluency_score(text)
        if flu_note:
            notes.append(flu_note)
        crit = {"faithfulness": round(faith, 4), "factual": round(factual, 4),
                "richness": round(richness, 4), "fluency": flu}
        return Judgment(w.overall(crit, generic), crit, "; ".join(notes), self.name)


def make_judge(cfg: dict | None = None) -> Judge:
    """A judge from config: `{"kind": "rubric", "weights": {...}}` (default) or
    `{"kind": "openai", "base_url": ..., "model": ..., "api_key_env": "OPENAI_API_KEY", ...}`
    (the other keys are `OpenAIJudgeConfig` fields)."""
    cfg = dict(cfg or {"kind": "rubric"})
    kind = cfg.pop("kind", "rubric")
    if kind == "rubric":
        weights = cfg.pop("weights", None) or {}
        if cfg:
            raise ConfigError(f"rubric judge: unknown keys {sorted(cfg)} (known: kind, weights)")
        try:
            return RubricJudge(RubricWeights(**weights))
        except TypeError as e:
            raise ConfigError(f"rubric judge weights: {e}") from None
    if kind == "openai":
        from aligncap_core.prefs.openai_judge import OpenAIJudge, OpenAIJudgeConfig

        try:
            return OpenAIJudge(OpenAIJudgeConfig(**cfg))
        except TypeError as e:
            raise ConfigError(f"openai judge config: {e}") from None
    raise ConfigError(f"unknown judge kind {kind!r}; use 'rubric' or 'openai'")
