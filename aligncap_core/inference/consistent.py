"""Attribute-consistent decoding: a caption may say less, it must not say something false.

Greedy decoding picks the likeliest *word* at each step, so an emotion with many synonyms
("cheerful", "glad", "happy", "joyful") loses to one with a single dominant word even when the
model puts more mass on it, and a value the model is unsure of is stated as firmly as one it is
sure of. This decoder looks at what the model believes about each *attribute* instead:

1. caption the clip greedily and sample `samples` more captions from the same prompt (one
   shared prompt pass, `model.generate`'s shared-prefix sampler);
2. parse every candidate with the emotion clue parser; for each attribute `a` and value `v`,
   q_a(v) = share of all candidates that state `a = v` (agreement);
3. return the candidate with the highest expected utility (minimum Bayes risk)

       U(c) = sum over the attributes c states of  q_a(c_a) - risk * (1 - q_a(c_a))

   i.e. a statement is worth making when the candidates agree with it more than
   risk / (1 + risk) of the time (0.75 at risk 3), so the chosen caption states the consensus
   value of every attribute the candidates agree on and, when another candidate leaves an
   uncertain attribute out, leaves it out too. Ties go to the greedy caption, then to the
   earlier sample. A caption with no attribute has U = 0: chosen only when every statement
   the candidates make is more likely false than worth it.

The choice and the agreement per attribute are returned with the caption (`Decision`), so a
user can see why a caption says what it says.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aligncap_core.errors import ConfigError

ATTRS = ("emotion", "pitch", "speed", "volume", "gender")
STRATEGIES = ("greedy", "consistent")


@dataclass(frozen=True)
class DecodingSettings:
    """How captions are chosen. strategy: "greedy" (one argmax caption) or "consistent" (this
    module). samples, temperature, top_p: the sampled candidates besides the greedy one.
    risk: cost of a false statement relative to the gain of a true one (threshold
    risk / (1 + risk) on the agreement). seed: sampling seed (same seed, same captions)."""

    strategy: str = "consistent"
    samples: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    risk: float = 3.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"decoding strategy must be one of {', '.join(STRATEGIES)}; "
                              f"got {self.strategy!r}")
        if self.samples < 1:
            raise ConfigError(f"decoding samples must be >= 1, got {self.samples}")
        if self.temperature <= 0 or not 0 < self.top_p <= 1:
            raise ConfigError(f"decoding needs temperature > 0 and 0 < top_p <= 1, got "
                              f"{self.temperature}, {self.top_p}")
        if self.risk < 0:
            raise ConfigError(f"decoding risk must be >= 0, got {self.risk}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    """Why a caption was chosen: index (0 = greedy), its utility, the agreement q_a of each
    attribute's majority value, and the attributes left out although some candidate stated
    them."""

    index: int
    utility: float
    agreement: dict[str, tuple[str, float]] = field(default_factory=dict)
    omitted: list[str] = field(default_factory=list)


def agreement(parsed: Sequence[Any]) -> dict[str, Counter]:
    """attribute -> Counter of the values the candidates state."""
    votes: dict[str, Counter] = {a: Counter() for a in ATTRS}
    for p in parsed:
        for a in ATTRS:
            if a in p.attributes:
                votes[a][p.attributes[a]] += 1
    return votes


def choose(parsed: Sequence[Any], risk: float) -> Decision:
    """The candidate (index into `parsed`, 0 = greedy) of highest expected utility."""
    n = len(parsed)
    votes = agreement(parsed)

    def q(a: str, v: str) -> float:
        return votes[a][v] / n

    best_i, best_u = 0, float("-inf")
    for i, p in enumerate(parsed):
        u = sum(q(a, v) - risk * (1 - q(a, v)) for a, v in p.attributes.items() if a in ATTRS)
        if u > best_u + 1e-9:
            best_i, best_u = i, u
    chosen = parsed[best_i].attributes
    majority = {a: c.most_common(1)[0] for a, c in votes.items() if c}
    return Decision(best_i, round(best_u, 4),
                    {a: (v, round(k / n, 3)) for a, (v, k) in majority.items()},
                    [a for a in majority if a not in chosen])


def consistent_captions(generate: Any, prompts: Sequence[Sequence[int]], settings: DecodingSettings,
                        parser: Any) -> tuple[list[str], list[Decision]]:
    """One caption per prompt. `generate(prompts, do_sample, n, seed)` returns the decoded
    captions, n per prompt in order (the captioner's generation closure)."""
    greedy = generate(prompts, False, 1, None)
    sampled = generate(prompts, True, settings.samples, settings.seed)
    k = settings.samples
    out, decisions = [], []
    groups = [[greedy[i], *sampled[i * k:(i + 1) * k]] for i in range(len(prompts))]
    parsed_flat = parser.parse_many([c for g in groups for c in g])
    for i, g in enumerate(groups):
        d = choose(parsed_flat[i * (k + 1):(i + 1) * (k + 1)], settings.risk)
        out.append(g[d.index])
        decisions.append(d)
    return out, decisions
