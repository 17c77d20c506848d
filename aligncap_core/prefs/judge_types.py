"""The types every judge shares: what is judged (`JudgeItem`), the verdict (`Judgment`), the
`Judge` protocol, the criteria and score range, and the `RubricWeights` that combine the criteria
into one score.

They live apart from the judges so that `judges` (the rubric judge and the `make_judge` factory)
and `openai_judge` both import them without importing each other; `judges` re-exports them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Protocol, runtime_checkable

from aligncap_core.errors import ConfigError

# Bump when the rubric (criteria, prompt, weights) changes: cached LLM judgments are keyed by it.
RUBRIC_VERSION = "aligncap-rubric-v1"
CRITERIA = ("faithfulness", "factual", "richness", "fluency")
MIN_SCORE, MAX_SCORE = 1.0, 10.0


@dataclass(frozen=True)
class JudgeItem:
    """One candidate caption of one clip, with everything a judge may use as evidence.

    attributes: known ground-truth attributes (vocabulary names/values; others are ignored).
    """

    clip_id: str
    candidate: str
    instruction: str = "Describe how the speaker sounds."
    references: tuple[str, ...] = ()
    transcript: str = ""
    attributes: dict[str, str] = field(default_factory=dict)


@dataclass
class Judgment:
    """score: overall 1-10 (None when skipped); criteria: CRITERIA -> 1-10; reason: short text.
    skipped=True means the judge could not score the item (error says why): never use it."""

    score: float | None
    criteria: dict[str, float]
    reason: str
    judge: str
    skipped: bool = False
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Judgment:
        return cls(**{f.name: d[f.name] for f in fields(cls) if f.name in d})

    @classmethod
    def failed(cls, judge: str, error: str) -> Judgment:
        return cls(score=None, criteria={}, reason="", judge=judge, skipped=True, error=error)


@runtime_checkable
class Judge(Protocol):
    name: str

    def score(self, items: Sequence[JudgeItem]) -> list[Judgment]:
        """One Judgment per item, same order; failures are `skipped`, never raised."""
        ...


def clamp(x: float, lo: float = MIN_SCORE, hi: float = MAX_SCORE) -> float:
    return max(lo, min(hi, float(x)))


@dataclass(frozen=True)
class RubricWeights:
    """How the criteria combine into one score, and the rubric judge's point values.

    faithfulness/factual/richness/fluency: weights of the overall score (a weighted mean, so
        only their ratios matter). Factual agreement weighs most: a fluent caption with the
        wrong emotion is worse than a plain one with the right emotion (AlignCap's hallucination
        target).
    generic_penalty: points off the overall score for a caption with no emotional clue
        ("A person is speaking."): such captions are fluent and never contradict anything, so
        without it they would rank above specific captions with one small error.
    contradiction_penalty: factual points off per contradicted attribute (factual hallucination).
    agreement_bonus: factual points per attribute that matches the evidence.
    matched_clue_points / extra_clue_points: richness points per clue that matches the evidence /
        per other (unverifiable, uncontradicted) clue.
    min_words / max_words: a caption is one sentence; outside these bounds faithfulness drops.
    """

    faithfulness: float = 0.25
    factual: float = 0.35
    richness: float = 0.25
    fluency: float = 0.15
    generic_penalty: float = 1.5
    contradiction_penalty: float = 3.0
    agreement_bonus: float = 1.0
    matched_clue_points: float = 2.5
    extra_clue_points: float = 1.0
    min_words: int = 3
    max_words: int = 60

    def __post_init__(self) -> None:
        ws = [self.faithfulness, self.factual, self.richness, self.fluency]
        if any(w < 0 for w in ws) or sum(ws) <= 0:
            raise ConfigError(f"rubric weights must be >= 0 with a positive sum, got {ws}")
        if self.min_words < 1 or self.max_words < self.min_words:
            raise ConfigError(f"rubric word bounds invalid: {self.min_words}..{self.max_words}")

    def overall(self, criteria: dict[str, float], generic: bool = False) -> float:
        """Weighted mean of the criteria (1-10), minus the generic penalty, clamped to 1-10."""
        w = {c: getattr(self, c) for c in CRITERIA}
        mean = sum(w[c] * criteria[c] for c in CRITERIA) / sum(w.values())
        return round(clamp(mean - (self.generic_penalty if generic else 0.0)), 4)
