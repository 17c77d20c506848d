"""Context rules over a spaCy Doc: negation scope, modifiers, ambiguity context, quotations.

Each rule has a dependency version (used when the pipeline has a parser) and a window version
(always used; the only one on the blank fallback). The window rules are deliberately short-ranged
and stop at clause breaks ("but", punctuation), because a missed clue costs less than a wrong
attribute.
"""

from __future__ import annotations

import functools

from aligncap_core.clues import lexicon as lx

# Dependency labels that start a new clause: negation above them does not reach below.
_CLAUSE_DEPS = frozenset({"advcl", "ccomp", "relcl", "parataxis", "ROOT", "acl", "csubj", "pcomp"})
_NEG_CHILD_WORDS = frozenset({"not", "n't", "never", "no", "without", "nor", "neither", "hardly", "barely", "scarcely"})
_NEG_VERBS = frozenset({"lack", "avoid", "hide", "suppress", "conceal", "deny", "lose"})
_QUOTES_OPEN = {'"': '"', "“": "”", "‘": "’", "«": "»", "„": "“"}


def _phrases(words: frozenset[str]) -> dict[int, frozenset[tuple[str, ...]]]:
    """Group phrases by token count for suffix/prefix lookups ("a little bit" -> 3)."""
    out: dict[int, set[tuple[str, ...]]] = {}
    for w in words:
        toks = tuple(_split(w))
        out.setdefault(len(toks), set()).add(toks)
    return {n: frozenset(s) for n, s in out.items()}


def _split(phrase: str) -> list[str]:
    # Match spaCy's English tokenizer on the few contractions the lists contain.
    toks: list[str] = []
    for w in phrase.split():
        if w.endswith("n't") and len(w) > 3:
            toks += [w[:-3] if w not in ("can't", "won't") else {"can't": "ca", "won't": "wo"}[w], "n't"]
        else:
            toks.append(w)
    return toks


@functools.lru_cache(maxsize=1)
def _tables() -> dict[str, dict[int, frozenset[tuple[str, ...]]]]:
    return {
        "modifier": _phrases(lx.MODIFIERS),
        "negation": _phrases(lx.NEGATION_CUES | frozenset({"lack of", "absence of"})),
        "non_negating": _phrases(lx.NON_NEGATING),
        "breaker": _phrases(lx.SCOPE_BREAKERS),
    }


def _match_ending(lowers: list[str], end: int, table: dict[int, frozenset[tuple[str, ...]]]) -> int | None:
    """Start of the longest phrase in `table` ending just before `end`, or None."""
    for n in sorted(table, reverse=True):
        if end - n >= 0 and tuple(lowers[end - n:end]) in table[n]:
            return end - n
    return None


def _match_starting(lowers: list[str], start: int, table: dict[int, frozenset[tuple[str, ...]]]) -> int | None:
    """End of the longest phrase in `table` starting at `start`, or None."""
    for n in sorted(table, reverse=True):
        if tuple(lowers[start:start + n]) in table[n]:
            return start + n
    return None


def modifier_start(lowers: list[str], start: int, quoted: list[bool]) -> int:
    """Leftmost token of the run of modifier phrases right before `start` ("really very")."""
    table = _tables()["modifier"]
    p = start
    while p > 0 and not quoted[p - 1]:
        q = _match_ending(lowers, p, table)
        if q is None:
            break
        p = q
    return p


def starts_modifier(lowers: list[str], i: int) -> int | None:
    """End of a modifier phrase starting at token i, or None."""
    return _match_starting(lowers, i, _tables()["modifier"])


def window_negated(lowers: list[str], start: int, size: int) -> bool:
    """A negation cue within `size` tokens before `start`, in the same clause."""
    t = _tables()
    lo = start
    while lo > 0 and start - lo < size and _match_ending(lowers, lo, t["breaker"]) is None:
        lo -= 1
    p = lo
    while p < start:
        skip = _match_starting(lowers, p, t["non_negating"])
        if skip is not None:
            p = skip
            continue
        end = _match_starting(lowers, p, t["negation"])
        if end is not None and end <= start:
            return True
        p += 1
    return False


def dep_negated(tok, span: tuple[int, int] | None = None) -> bool:
    """Negation reaching `tok` through the dependency tree, within its clause.

    Walks up from the clue: a `neg` child or a "no"/"never" determiner on the way negates it
    ("does not sound angry", "no sign of fear"); so does being the object of "without"/"lacks".
    A conjunct joined by "but"/"yet" is a contrast and stops the walk ("not angry but sad").
    Words inside the clue's own `span` (token start, end) do not count ("barely audible").
    """
    lo, hi = span or (tok.i, tok.i + 1)
    x = tok
    for _ in range(10):
        for c in x.children:
            if lo <= c.i < hi:
                continue
            if c.dep_ == "neg" or (c.lower_ in _NEG_CHILD_WORDS and c.dep_ in ("det", "advmod", "preconj", "neg")):
                nxt = x.doc[c.i + 1].lower_ if c.i + 1 < len(x.doc) else ""
                if (c.lower_, nxt) not in _tables()["non_negating"].get(2, frozenset()):
                    return True
        head = x.head
        if x.dep_ == "pobj" and head.lower_ in ("without", "minus"):
            return True
        if x.dep_ == "pobj" and head.i > 0 and f"{x.doc[head.i - 1].lower_} {head.lower_}" in lx.NEGATION_CUES:
            return True  # "free of", "devoid of", "instead of", "rather than"
        if x.dep_ == "pobj" and head.head.lemma_.lower() in ("lack", "absence") and head.lower_ == "of":
            return True
        if x.dep_ in ("dobj", "obj") and head.lemma_.lower() in _NEG_VERBS:
            return True
        if x.dep_ in _CLAUSE_DEPS or head is x:
            return False
        if x.dep_ == "conj":
            if x.pos_ in ("VERB", "AUX"):
                return False
            if any(c.dep_ == "cc" and c.lower_ in ("but", "yet") for c in head.children):
                return False
        x = head
    return False


def quoted_mask(lowers: list[str]) -> list[bool]:
    """True for tokens inside a quotation: quoted words are what is said, not how."""
    mask = [False] * len(lowers)
    i = 0
    while i < len(lowers):
        close = _QUOTES_OPEN.get(lowers[i])
        if close is not None:
            j = next((k for k in range(i + 1, len(lowers)) if lowers[k] == close), None)
            if j is not None:
                for k in range(i + 1, j):
                    mask[k] = True
                i = j + 1
                continue
        i += 1
    return mask


@functools.lru_cache(maxsize=1)
def _classes() -> dict[str, str]:
    return lx.context_classes()


def _cls(tok) -> str | None:
    classes = _classes()
    return classes.get(tok.lower_) or classes.get(tok.lemma_.lower())


def context_class(doc, start: int, end: int, has_parser: bool) -> str | None:
    """What an ambiguous word describes: pitch/voice/volume/speed/intensity/energy/speak/breath.

    Dependency first (the noun it modifies, the subject of "is"/"sounds" it is predicated of,
    the verb it modifies as an adverb), then the nearest neighbours: next token, previous token
    ("pitch high", "speaks low"), then a little further right ("a low, steady pace").
    """
    tok = doc[end - 1]
    if has_parser:
        cands = []
        if tok.dep_ in ("amod", "compound", "nmod", "appos", "conj") or tok.head.pos_ in ("NOUN", "PROPN"):
            cands.append(tok.head)
        if tok.dep_ in ("acomp", "attr", "oprd", "advmod", "xcomp", "npadvmod"):
            cands += [c for c in tok.head.children if c.dep_ in ("nsubj", "nsubjpass")]
            cands.append(tok.head)
        for c in cands:
            if c.i != tok.i and (cls := _cls(c)) is not None:
                return cls
    breakers = lx.SCOPE_BREAKERS - {","}
    order = [end, start - 1, end + 1, end + 2, end + 3, start - 2]
    if start > 0 and doc[start - 1].lower_ in lx.COPULAS:
        order = [start - 2, start - 3, *order]  # predicative: "the volume is low"
    for k in order:
        if not 0 <= k < len(doc):
            continue
        # Do not look past a clause break on the way there.
        lo, hi = (end, k) if k >= end else (k, start - 1)
        if any(doc[m].lower_ in breakers for m in range(lo, hi + 1) if m != k) or doc[k].lower_ in breakers:
            continue
        if k < start and k == start - 2 and doc[start - 1].lower_ == ",":
            continue
        if (cls := _cls(doc[k])) is not None:
            return cls
    return None


def content_target(doc, start: int, end: int, has_parser: bool) -> bool:
    """The word describes what is talked about or someone else ("sad news", "to an angry man").

    Only asked for emotion/tone words: "drops to a whisper" is still about the voice.
    """
    tok = doc[end - 1]
    nxt = doc[end] if end < len(doc) else None
    if nxt is not None and (nxt.lower_ in lx.CONTENT_NOUNS or nxt.lemma_.lower() in lx.CONTENT_NOUNS):
        return True
    # "the words are cheerful": predicated of the content
    if start >= 2 and doc[start - 1].lower_ in lx.COPULAS and doc[start - 2].lower_ in lx.CONTENT_NOUNS:
        return True
    if not has_parser:
        return False
    head = tok.head
    if tok.dep_ in ("acomp", "attr") and any(
        c.dep_ in ("nsubj", "nsubjpass") and c.lemma_.lower() in lx.CONTENT_NOUNS for c in head.children
    ):
        return True
    if tok.dep_ in ("amod", "compound") and head.lemma_.lower() in lx.CONTENT_NOUNS:
        return True
    # "talks about her fear", "speaks to an angry customer"
    target = head if tok.dep_ in ("amod", "compound") else tok
    if target.dep_ == "pobj" and target.head.lower_ in lx.OTHER_TARGET_PREPS:
        return target.lemma_.lower() not in lx.SPEAKER_NOUNS
    return False
