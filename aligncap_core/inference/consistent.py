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
   the candidates make is more likely false than worth it;
4. when the chosen caption still states an uncertain attribute (every candidate states it),
   caption the clip once more, greedily, with that attribute's words suppressed (`omit_words`:
   the clue lexicon's words for it, e.g. every gender noun and pronoun), and choose again with
   that caption among the candidates. The parser checks what it says, so a suppression that
   slips through can only lose the choice, never add a false statement. Kept off its likeliest
   words, the model sometimes falls into a loop ("... at someone says the sentence at someone
   says the sentence ..."), which the parser reads as stating nothing uncertain and so lets
   win: an unreadable caption, but not a false one. `retry_ngram` 3 forbids the re-decoding to
   repeat one of its own token trigrams: far fewer loops, but the fluent captions it writes
   instead state some wrong values; measured, it is off by default
   (docs/experiments/zeroshot_ceiling.md, "Loops in the re-decoded captions").

5. when the chosen caption *still* states an attribute below the bar (step 4's captions lost
   the sure statements too, so the choice kept it), that statement's phrase is deleted from
   the caption (`strike_unsure`, `inference.strike`), kept only when the parser then reads
   exactly the caption's other statements; `strike` off skips it
   (docs/experiments/zeroshot_ceiling.md, "Striking the statements below the bar").
The choice and the agreement per attribute are returned with the caption (`Decision`; the
attributes struck in `struck`, those still stated below the bar in `unsure`), so a user can see
why a caption says what it says and which of its statements to doubt.

An attribute may also be *withheld* from a clip before any candidate is looked at (the level
check, `inference.domain`): it counts as agreement 0, so stating it costs `risk`, and step 4
captions the clip without its words when every candidate states it. The decision names it and
the reason (`Decision.withheld`). The voice and pitch checks withhold the same way, once the
candidates are parsed: gender when their majority gender is the one the clip's vocal tract
contradicts, pitch when their majority pitch is not what the clip's F0 tells for human voices.

A value may also be *told* by a cue of the clip (`domain.Told`: on a recording unlike the
training audio, the gender its formant spacing reads): it counts as agreement 1 and any other
value of its attribute as 0, so a candidate stating it is preferred and one contradicting it
costs `risk`. Step 4 then decodes with the other value's words suppressed ("woman", "she", ...
when told male) and, where the chosen caption does not state the told value, once more
starting with its words ("A man"; `tell_prefix`), a caption offered only when it does not loop
(`repeats`). A chosen caption that still leaves the attribute out gets the value put into its
subject ("The speaker's speech ..." -> "The male speaker's speech ...", `put_told`), kept only
when the parser then reads exactly the caption's statements plus the told one. The decision
says what was told and why (`Decision.told`), and `told["put"]` / `told["missing"]` when the
value was put in or is not stated.
"""

from __future__ import annotations

import dataclasses
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from aligncap_core.errors import ConfigError
from aligncap_core.inference.domain import merged

ATTRS = ("emotion", "pitch", "speed", "volume", "gender")
STRATEGIES = ("greedy", "consistent")


@dataclass(frozen=True)
class DecodingSettings:
    """How captions are chosen. strategy: "greedy" (one argmax caption) or "consistent" (this
    module). samples, temperature, top_p: the sampled candidates besides the greedy one.
    risk: cost of a false statement relative to the gain of a true one (threshold
    risk / (1 + risk) on the agreement). seed: sampling seed (same seed, same captions).
    level_check: leave volume and emotion out of the caption of a clip whose level is more than
    level_margin_db (dB) outside the training audio's range, when the checkpoint records one
    (`inference.domain`; greedy decoding too). voice_check: leave gender out of a caption
    whose candidates state the gender the clip's formant spacing contradicts, when the
    checkpoint records a voice boundary (`inference.domain`, on by default); voice_margin: the
    spacing must be this far past the boundary (log ratio; 0.03 = 3%) to contradict a gender.
    pitch_check:
    leave pitch out of a caption where the clip's F0 does not tell it for human voices'
    spread of normal F0 (`inference.domain`, off by default; for human recordings).
    retry_ngram: n > 0: step 4's re-decoding (and greedy decoding's, for withheld attributes)
    never repeats one of its own n-grams of tokens (0, the default: no such rule).
    ood_checks: a recording unlike the training audio (its level more than level_margin_db, or
    its band edge more than band_margin_hz (Hz), outside the training clips' range) gets the
    pitch check (and the voice check) whatever pitch_check / voice_check say (on by default; the
    built-in corpus' clips are never outside it). ood_gender: on such a recording the caption
    states the gender the clip's formant spacing reads (`domain.voice_told`) instead of the
    model's (on by default; with ood_checks). ood_emotion: on such a recording the caption does
    not state an emotion (`domain.unlike_withheld`; on by default, with ood_checks).
    strike: a statement the chosen caption still makes below the agreement bar (or of a
    withheld attribute) is deleted from it where the parser then reads exactly the other
    statements (`inference.strike`; on by default)."""

    strategy: str = "consistent"
    samples: int = 8
    temperature: float = 0.8
    top_p: float = 0.95
    risk: float = 3.0
    seed: int = 0
    level_check: bool = True
    level_margin_db: float = 3.0
    voice_check: bool = True
    voice_margin: float = 0.0
    pitch_check: bool = False
    ood_checks: bool = True
    retry_ngram: int = 0
    band_margin_hz: float = 500.0
    ood_gender: bool = True
    ood_emotion: bool = True
    strike: bool = True

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
        if self.level_margin_db < 0:
            raise ConfigError(f"decoding level_margin_db must be >= 0, got {self.level_margin_db}")
        if not 0 <= self.voice_margin < 0.5:
            raise ConfigError(f"decoding voice_margin must be in [0, 0.5), got {self.voice_margin}")
        if self.band_margin_hz < 0:
            raise ConfigError(f"decoding band_margin_hz must be >= 0, got {self.band_margin_hz}")
        if self.retry_ngram < 0:
            raise ConfigError(f"decoding retry_ngram must be >= 0, got {self.retry_ngram}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Decision:
    """Why a caption was chosen: index (0 = greedy), its utility, the agreement q_a of each
    attribute's majority value, the attributes left out although some candidate stated
    them, and those withheld with the reason (`domain.Withheld.to_dict`). When the returned
    caption states a withheld attribute all the same (no caption without it won the choice),
    `withheld["stated"]` names it and the reason says so (`flag_stated`). told: the values
    stated from a cue of the clip instead of the model's reading (`domain.Told.to_dict`);
    `told["missing"]` names those the returned caption does not state (`flag_stated`).
    struck: the attributes whose statement was deleted from the chosen caption because the
    candidates did not agree with it (`strike_unsure`). unsure: those the returned caption
    still states below the agreement bar (or withheld): no deletion read right, or `strike`
    is off; a statement to doubt, named so a user can."""

    index: int
    utility: float
    agreement: dict[str, tuple[str, float]] = field(default_factory=dict)
    omitted: list[str] = field(default_factory=list)
    withheld: dict | None = None
    told: dict | None = None
    struck: list[str] = field(default_factory=list)
    unsure: list[str] = field(default_factory=list)


def flag_stated(decision: Decision | None, said: dict[str, str]) -> Decision | None:
    """`decision` with `withheld["stated"]` and a line in its reason when the caption (its
    parsed attributes `said`) states an attribute the checks withheld; else unchanged. A
    reason saying "gender is not stated" next to a caption that states it would be a quiet
    lie; this makes it a visible one. Likewise a value `told` that the caption does not state
    (`told["missing"]`)."""
    if decision is None:
        return decision
    if decision.told:
        missing = [a for a, v in decision.told["attributes"].items() if said.get(a) != v]
        if missing:
            t = dict(decision.told, missing=missing)
            t["reason"] = (f"{t['reason']}; but the returned caption does not state "
                           f"{', '.join(missing)} so (no caption that does was chosen)")
            decision = dataclasses.replace(decision, told=t)
    if not decision.withheld:
        return decision
    stated = [a for a in decision.withheld["attributes"] if a in said]
    if not stated:
        return decision
    w = dict(decision.withheld, stated=stated)
    w["reason"] = (f"{w['reason']}; but the returned caption still states {', '.join(stated)} "
                   "(no caption decoded without it was chosen)")
    return dataclasses.replace(decision, withheld=w)


def agreement(parsed: Sequence[Any]) -> dict[str, Counter]:
    """attribute -> Counter of the values the candidates state."""
    votes: dict[str, Counter] = {a: Counter() for a in ATTRS}
    for p in parsed:
        for a in ATTRS:
            if a in p.attributes:
                votes[a][p.attributes[a]] += 1
    return votes


def choose(parsed: Sequence[Any], risk: float, voters: Sequence[Any] | None = None,
           withheld: Any = None, told: Any = None) -> Decision:
    """The candidate (index into `parsed`, 0 = greedy) of highest expected utility; the
    agreement is counted over `voters` (default: the candidates themselves). A `withheld`
    attribute (`domain.Withheld`) counts as agreement 0: stating it costs `risk`. A `told`
    value (`domain.Told`) counts as agreement 1, any other value of its attribute as 0."""
    voters = parsed if voters is None else voters
    n = len(voters)
    votes = agreement(voters)
    barred = set(withheld.attributes) if withheld is not None else set()
    fixed = dict(told.attributes) if told is not None else {}

    def q(a: str, v: str) -> float:
        if a in fixed:
            return float(v == fixed[a])
        return 0.0 if a in barred else votes[a][v] / n

    best_i, best_u = 0, float("-inf")
    for i, p in enumerate(parsed):
        u = sum(q(a, v) - risk * (1 - q(a, v)) for a, v in p.attributes.items() if a in ATTRS)
        if u > best_u + 1e-9:
            best_i, best_u = i, u
    chosen = parsed[best_i].attributes
    majority = {a: c.most_common(1)[0] for a, c in votes.items() if c}
    return Decision(best_i, round(best_u, 4),
                    {a: (v, round(k / n, 3)) for a, (v, k) in majority.items()},
                    [a for a in majority if a not in chosen],
                    withheld.to_dict() if withheld is not None else None,
                    told.to_dict() if told is not None else None)


def omit_words(attr: str, keep: str | None = None) -> list[str]:
    """Words whose suppression keeps a caption from stating `attr`: the clue lexicon's
    single words for every value of it (the first part of hyphenated ones) and the nouns its
    phrases are built on ("pitch", "pace", "volume"). With `keep`, only the words of its other
    values: what keeps a caption from stating any value but `keep` ("woman", "she", ... for
    keep="male")."""
    from aligncap_core.clues import lexicon as lx

    bank = {"emotion": lx.EMOTION, "pitch": lx.PITCH, "speed": lx.SPEED, "volume": lx.VOLUME,
            "gender": lx.GENDER}[attr]

    def single(values: Any) -> set[str]:
        return {w.split("-")[0] for v in values for w in lx.phrase_list(bank[v]) if " " not in w}

    if keep is not None:
        words = single(v for v in bank if v != keep) - single([keep])
    else:
        words = single(bank) | set(OMIT_EXTRA.get(attr, ()))
    return sorted(w for w in words if w.isalpha())


# the words phrases about an attribute hang on, and context-dependent ones (lexicon.AMBIGUOUS)
OMIT_EXTRA = {"pitch": ("pitch", "pitched", "register", "high", "low", "deep", "mid", "medium"),
              "speed": ("pace", "tempo", "speed", "rate", "paced"),
              "volume": ("volume", "loudness", "level", "almost")}


# the lead-ins an emotion follows ("...; she sounds", ", sounding"), left at the end of a caption
# decoded with the emotion words suppressed
_LEAD_IN = (r"(?:[;,]\s*(?:and\s+)?(?:the speaker|he|she|they|the man|the woman)?\s*"
            r"(?:sounds|seems|comes across as)|,?\s*(?:sounding|seeming|coming across as))")
_DANGLING = re.compile(_LEAD_IN + r"\s*\.?\s*$", re.IGNORECASE)
_LEAD_IN_WORD = re.compile(_LEAD_IN + r"\b", re.IGNORECASE)


def trim_dangling(text: str) -> str:
    """A caption decoded with an attribute's words suppressed, without the clause its emotion
    would have ended: "The speaker's speech is slow and soft; she sounds" -> "The speaker's
    speech is slow and soft." (the sentence is ended there). Other captions are returned as
    they are."""
    cut = _DANGLING.sub("", text.rstrip())
    return text if cut == text.rstrip() else cut.rstrip(" ,;") + "."


def cut_lead_in(text: str) -> str:
    """A caption decoded with the emotion words suppressed, ended before the first lead-in an
    emotion would have followed, wherever it is: kept off its emotion there, the model loops
    ("...; the speaker sounds sounds sounds ...") or strings other words together ("...; the
    speaker sounds loud; the speaker sounds loud, expressive voice is ..."). "The speaker's
    speech is slow; the speaker sounds sounds sounds" -> "The speaker's speech is slow."
    A caption that starts with a lead-in ("Sounding calm, ...") or has none is returned as it
    is."""
    m = _LEAD_IN_WORD.search(text)
    if m is None or not text[:m.start()].strip(" ,;"):
        return text
    return text[:m.start()].rstrip(" ,;") + "."


def omit_token_ids(tokenizer: Any, attrs: Sequence[str], keep: dict[str, str] | None = None) -> list[int]:
    """First token ids of `omit_words` of each attribute (as a word start with and without a
    leading space, lower-case and capitalised), to suppress in generation; for each attribute
    of `keep` (attribute -> value), those of its other values but not of the kept one."""
    def first_ids(words: Sequence[str]) -> set[int]:
        ids: set[int] = set()
        for w in words:
            for form in (w, " " + w, w.capitalize(), " " + w.capitalize()):
                toks = tokenizer(form, add_special_tokens=False)["input_ids"]
                if toks:
                    ids.add(int(toks[0]))
        return ids

    out = set().union(*(first_ids(omit_words(a)) for a in attrs))
    for a, v in (keep or {}).items():
        others = omit_words(a, v)  # the other values' words; the rest are the kept value's
        kept = set(omit_words(a)) - set(others)
        out |= first_ids(others) - first_ids(sorted(kept))
    return sorted(out)


def consistent_captions(generate: Any, prompts: Sequence[Sequence[int]], settings: DecodingSettings,
                        parser: Any, omit: Any = None, withheld: Sequence[Any] | None = None,
                        checks: Sequence[Any] | None = None, told: Sequence[Any] | None = None,
                        ) -> tuple[list[str], list[Decision]]:
    """One caption per prompt. `generate(prompts, do_sample, n, seed)` returns the decoded
    captions, n per prompt in order (the captioner's generation closure); `omit(prompts, attrs,
    tell, start)` greedily captions `prompts` with the words of `attrs` suppressed, with `tell`
    (attribute -> value) those of the told attribute's other values too and, with `start`,
    starting with the words that state it (`tell_prefix`) (step 4; None skips it); `withheld`:
    per prompt, a `domain.Withheld` or None (module docstring); `checks`: per prompt, a function of what the candidates state (attribute -> the most stated label) to
    a `domain.Withheld` or None (the voice and pitch checks, `domain.clip_verdict`; None: no
    check); `told`: per prompt, a `domain.Told` or None (values stated from a cue of the clip:
    module docstring)."""
    held = list(withheld) if withheld is not None else [None] * len(prompts)
    tells = list(told) if told is not None else [None] * len(prompts)
    greedy = generate(prompts, False, 1, None)
    sampled = generate(prompts, True, settings.samples, settings.seed)
    k = settings.samples
    groups = [[greedy[i], *sampled[i * k:(i + 1) * k]] for i in range(len(prompts))]
    flat = parser.parse_many([c for g in groups for c in g])
    parsed = [flat[i * (k + 1):(i + 1) * (k + 1)] for i in range(len(prompts))]
    for i, check in enumerate(checks or ()):
        if check is not None:
            said = {a: votes.most_common(1)[0][0] for a, votes in agreement(parsed[i]).items() if votes}
            if tells[i] is not None:  # the pitch check reads F0 against the told gender
                said.update(tells[i].attributes)
            held[i] = merged(held[i], check(said))
    decisions = [choose(p, settings.risk, withheld=w, told=t)
                 for p, w, t in zip(parsed, held, tells, strict=True)]
    pool = [list(p) for p in parsed]  # every candidate's parse, retries included
    if omit is not None:
        threshold = settings.risk / (1 + settings.risk)
        retry: dict[tuple, list[int]] = {}
        for i, d in enumerate(decisions):
            said = parsed[i][d.index].attributes
            barred = set(held[i].attributes) if held[i] is not None else set()
            fixed = dict(tells[i].attributes) if tells[i] is not None else {}
            unsure = {a for a, v in said.items() if a in ATTRS and a not in fixed and (
                a in barred or d.agreement.get(a, (v, 0.0))[1] < threshold)}
            missing = any(said.get(a) != v for a, v in fixed.items())
            if unsure or missing:  # a withheld attribute is suppressed too, whether this caption says it or not
                attrs = tuple(sorted((unsure | barred) - set(fixed)))
                tell = tuple(sorted(fixed.items()))
                # a told attribute's other values are suppressed, and where the caption does
                # not state the told value, a caption starting with it is offered too
                retry.setdefault((attrs, tell, False), []).append(i)
                if missing:
                    retry.setdefault((attrs, tell, True), []).append(i)
        for (attrs, tell, start), idx in retry.items():
            extra = omit([prompts[i] for i in idx], attrs, dict(tell), start) if tell else \
                omit([prompts[i] for i in idx], attrs)
            for i, text, p in zip(idx, extra, parser.parse_many(extra), strict=True):
                if start and repeats(text):  # the told start is offered only as a readable caption
                    continue
                groups[i].append(text)
                pool[i].append(p)
                # the agreement stays that of the k + 1 freely decoded candidates
                decisions[i] = choose(pool[i], settings.risk, voters=parsed[i], withheld=held[i],
                                      told=tells[i])
    texts = [g[d.index] for g, d in zip(groups, decisions, strict=True)]
    said = [pool[i][d.index].attributes for i, d in enumerate(decisions)]
    texts, said, decisions = tell_in(texts, said, decisions, tells, parser)
    texts, said, decisions = strike_unsure(texts, said, decisions, parsed, held, tells,
                                           settings.risk, parser, settings.strike)
    return texts, [flag_stated(d, a) for d, a in zip(decisions, said, strict=True)]


def strike_unsure(texts: list[str], said: list[dict], decisions: list[Any], parsed: Sequence[Any],
                  held: Sequence[Any], tells: Sequence[Any], risk: float,
                  parser: Any, strike_out: bool = True) -> tuple[list[str], list[dict], list[Any]]:
    """The chosen captions with each statement below the agreement bar (risk / (1 + risk) of
    the freely decoded candidates `parsed` state its value) or of a withheld attribute deleted
    (`strike.strike`; not with `strike_out` False), a told value never; the decisions name what
    was struck (`struck`) and what is still stated below the bar (`unsure`)."""
    from aligncap_core.inference.strike import strike

    threshold = risk / (1 + risk)
    unsure = []
    for i, stated in enumerate(said):
        votes, n = agreement(parsed[i]), len(parsed[i])
        barred = set(held[i].attributes) if held[i] is not None else set()
        fixed = set(tells[i].attributes) if tells[i] is not None else set()
        unsure.append([a for a, v in stated.items() if a in ATTRS and a not in fixed
                       and (a in barred or votes[a][v] / n < threshold)])
    if not any(unsure):
        return texts, said, decisions
    struck: list[list[str]] = [[] for _ in texts]
    if strike_out:
        texts, said, struck = strike(texts, said, unsure, parser.parse_many(texts), parser)
    decisions = [dataclasses.replace(d, struck=k, unsure=[a for a in u if a in s]) if u else d
                 for d, k, u, s in zip(decisions, struck, unsure, said, strict=True)]
    return texts, said, decisions


# the subjects a told value is put into: "the speaker" -> "the male speaker", "a person" -> "a man"
_SUBJECT = re.compile(r"\b(?P<det>the|a|this)\s+(?:(?P<speaker>speaker)|(?P<person>person))\b", re.IGNORECASE)
# a told value's (adjective, noun): "the male speaker", "a man"; a caption starting with it
# starts "A man" / "A woman" (`tell_prefix`), like the built-in references' subjects
TOLD_WORDS = {"gender": {"female": ("female", "woman"), "male": ("male", "man")}}


def put_told(text: str, attr: str, value: str) -> str | None:
    """`text` with the told value put into its first subject ("The speaker's speech ..." ->
    "The male speaker's speech ..."; "A person speaks ..." -> "A woman speaks ..."), or None
    when it has none (or the value has no words, `TOLD_WORDS`)."""
    words = TOLD_WORDS.get(attr, {}).get(value)
    m = _SUBJECT.search(text)
    if words is None or m is None:
        return None
    put = f"{m['det']} {words[0]} speaker" if m["speaker"] else f"{m['det']} {words[1]}"
    return text[:m.start()] + put + text[m.end():]


def tell_in(texts: list[str], said: list[dict], decisions: list[Any], tells: Sequence[Any],
            parser: Any) -> tuple[list[str], list[dict], list[Any]]:
    """Where a caption leaves a told attribute out, the told value put into its subject
    (`put_told`), kept only when the parser then reads exactly the caption's statements plus
    the told value; the decision says so (`told["put"]`). Captions, their statements and
    decisions, updated."""
    todo = []
    for i, t in enumerate(tells):
        if t is not None:
            for a, v in t.attributes.items():
                edited = put_told(texts[i], a, v) if a not in said[i] else None
                if edited is not None:
                    todo.append((i, a, v, edited))
    texts, said, decisions = list(texts), list(said), list(decisions)
    for (i, a, v, edited), p in zip(todo, parser.parse_many([e for *_, e in todo]) if todo else [],
                                    strict=True):
        if dict(p.attributes) == {**said[i], a: v}:
            texts[i], said[i] = edited, dict(p.attributes)
            t = dict(decisions[i].told, put=[a])
            t["reason"] += f" (put into the model's caption, which did not state {a})"
            decisions[i] = dataclasses.replace(decisions[i], told=t)
    return texts, said, decisions


def repeats(text: str, n: int = 4) -> bool:
    """Whether a caption repeats a run of n words ("... at someone says the sentence at someone
    says the sentence ..."): a decoding that fell into a loop."""
    words = re.findall(r"[\w']+", text.lower())
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) < len(grams)


def tell_prefix(tell: dict[str, str] | None) -> str:
    """The words a caption stating `tell` (attribute -> value) starts with ("A man"; "" for
    None), from `TOLD_WORDS`."""
    if not tell:
        return ""
    unknown = [f"{a}={v}" for a, v in tell.items() if v not in TOLD_WORDS.get(a, {})]
    if unknown or len(tell) > 1:
        raise ConfigError(f"no caption start states {', '.join(unknown) or tell} (TOLD_WORDS)")
    a, v = next(iter(tell.items()))
    return f"A {TOLD_WORDS[a][v][1]}"


def join_prefix(prefix: str, text: str) -> str:
    """`prefix` and the caption decoded after it, as one caption ("A woman" + "speaks ..." ->
    "A woman speaks ..."; "A man" + "'s voice ..." -> "A man's voice ...")."""
    if not prefix:
        return text
    return prefix + ("" if text[:1] in ("'", ",", ".", ";", ":", "!", "?", "") else " ") + text


def greedy_captions(free: Any, prompts: Sequence[Sequence[int]], parser: Any, omit: Any,
                    withheld: Sequence[Any] | None = None, checks: Sequence[Any] | None = None,
                    told: Sequence[Any] | None = None) -> tuple[list[str], list[Decision | None]]:
    """One caption per prompt, greedily (`free(prompts)`: the captioner's own decoding). A
    prompt with attributes withheld is captioned once, with their words suppressed
    (`omit(prompts, attrs)`) instead of freely; a caption stating what its checks
    (`consistent_captions`' `checks`) withhold, or not stating what it is `told`, is captioned
    once more without those words (and the told attribute's other values'), starting with the
    told value's words (without that start where it loops), and the told value is put into its
    subject where it still leaves it out (`tell_in`). The decision is None
    but for those (`Decision.withheld` / `Decision.told` say what and why)."""
    held = list(withheld) if withheld is not None else [None] * len(prompts)
    tells = list(told) if told is not None else [None] * len(prompts)
    texts = [""] * len(prompts)
    decisions: list[Decision | None] = [None] * len(prompts)
    keys = [w.attributes if w is not None else () for w in held]
    for attrs in dict.fromkeys(keys):
        idx = [k for k, a in enumerate(keys) if a == attrs]
        part = [prompts[k] for k in idx]
        for k, t in zip(idx, omit(part, attrs) if attrs else free(part), strict=True):
            texts[k] = t
            if attrs:
                decisions[k] = Decision(0, 0.0, withheld=held[k].to_dict())
    withheld_first = [k for k in range(len(prompts)) if decisions[k] is not None]
    checked = sorted({k for k, v in enumerate(checks or ()) if v is not None}
                     | {k for k, t in enumerate(tells) if t is not None})
    need = sorted({*withheld_first, *checked})  # each caption parsed once
    said = dict(zip(need, parser.parse_many([texts[k] for k in need]) if need else [], strict=True))
    for k in withheld_first:
        decisions[k] = flag_stated(decisions[k], said[k].attributes)
    redone = []
    for k in checked:
        fixed = dict(tells[k].attributes) if tells[k] is not None else {}
        check = checks[k] if checks else None
        verdict = check({**said[k].attributes, **fixed}) if check is not None else None
        missing = {a: v for a, v in fixed.items() if said[k].attributes.get(a) != v}
        if verdict is not None or missing:
            w = merged(held[k], verdict)
            attrs = tuple(a for a in (w.attributes if w is not None else ()) if a not in fixed)
            if fixed:  # starting with the told value; where that loops, without its other values
                texts[k] = omit([prompts[k]], attrs, fixed, True)[0]
                if repeats(texts[k]):
                    texts[k] = omit([prompts[k]], attrs, fixed, False)[0]
            else:
                texts[k] = omit([prompts[k]], attrs)[0]
            decisions[k] = Decision(0, 0.0, withheld=w.to_dict() if w is not None else None,
                                    told=tells[k].to_dict() if tells[k] is not None else None)
            redone.append(k)
    for k in sorted(set(checked) - set(redone)):  # told, and the free caption states it
        if tells[k] is not None:
            decisions[k] = dataclasses.replace(decisions[k] or Decision(0, 0.0), told=tells[k].to_dict())
    final = dict(zip(redone, (p.attributes for p in parser.parse_many([texts[k] for k in redone]))
                     if redone else [], strict=True))
    told_k = [k for k in range(len(prompts)) if tells[k] is not None]
    got = tell_in([texts[k] for k in told_k], [dict(final.get(k, said[k].attributes)) for k in told_k],
                  [decisions[k] for k in told_k], [tells[k] for k in told_k], parser)
    for k, text, attrs, d in zip(told_k, *got, strict=True):
        texts[k], final[k], decisions[k] = text, attrs, d
    for k, attrs in final.items():
        decisions[k] = flag_stated(decisions[k], attrs)
    return texts, decisions
