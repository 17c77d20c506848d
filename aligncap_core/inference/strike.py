"""Striking an unsure statement out of a caption, the rest of it kept.

The consistent decoder (`inference.consistent`) means to state an attribute only when the
candidates agree on its value, but when every candidate states the attribute its re-decoding
without the attribute's words often loses the sure statements too, so the chosen caption keeps
the unsure one ("... in a squeaky voice, sounding bored." with "bored" on 4 of 9 candidates).
This module deletes the unsure statement's phrase from the chosen caption instead:

- the phrase is the clue the parser found (`Clue.text`, its modifier included), widened to the
  words it hangs on: a preposition and article before it ("at a steady pace"), the noun after
  such a phrase ("in a high-pitched voice"), an emotion's lead-in ("sounding", "filled with",
  "; the speaker sounds"); a gender noun is replaced by "speaker" ("A man says" -> "A speaker
  says") rather than deleted;
- each widening is deleted with the separator before it or after it, or alone; the edits that
  leave a dangling word ("in a voice", "is and loud", "A, high-pitched") are dropped;
- the parser reads every remaining edit, and the shortest deletion that states exactly the
  caption's statements less the struck one is kept. None: the caption is returned as it is, and
  the caller keeps the statement (and its decision says so).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

# words a phrase about an attribute hangs on, before it ...
_BEFORE = (
    r"(?:at|in|with|of|for)\s+(?:a|an|the)\s+",
    r"(?:with|in|of|filled with|full of)\s+",
    r"(?:(?:the speaker|he|she|they|the man|the woman)\s+)?"
    r"(?:sounding|seeming|coming across as|sounds|seems|comes across as)\s+",
)
# ... and after it, where it was an adjective of one of these nouns ("in a high-pitched voice")
_AFTER = r"\s+(?:voice|tone|pace|speed|tempo|volume|pitch|register)\b"
_SEP_BEFORE = re.compile(r"(?:,\s*and|;\s*and|,|;|\s+and)\s*$", re.IGNORECASE)
_SEP_AFTER = re.compile(r"^\s*(?:,\s*and|,|;|\s+and)\s+", re.IGNORECASE)
# an edit that leaves one of these words before a separator, the end, or "and" left a hole
# ("in a voice", "is and loud", "sounding.", "There is in the man's voice", "A, high-pitched",
# "The man's speech is his voice is flat")
_HOLE = re.compile(
    r"\b(?:a|an|the|at|in|with|of|and|as|is|are|his|her|their|by|to|for|sounding|seeming|sounds|"
    r"seems|across|almost|very|quite|rather|slightly|somewhat|clearly|audibly)\s*(?:[,.;]|$|\band\b)"
    r"|\b(?:a|an)\s+(?:voice|tone|pace|speed|tempo|volume|pitch|register)\b|\bthere is\s+in\b"
    r"|\b(?:a|an|the)\s+(?:a|an|the|at|in|with|of|and|to)\b|\b(?:is|are)\s+(?:his|her|their|its)\b",
    re.IGNORECASE)
_GENDER_NOUNS = re.compile(r"\b(?:man|woman|lady|gentleman|guy|girl|boy)\b", re.IGNORECASE)


def tidy(text: str) -> str:
    """Spaces and separators after a deletion: no space before punctuation, no doubled
    separators, a capital first letter, a full stop at the end."""
    t = re.sub(r"\s+", " ", text).strip(" ,;")
    t = re.sub(r"\s+([,.;])", r"\1", t)
    t = re.sub(r"[,;]\s*([,.;])", r"\1", t)
    t = t[:1].upper() + t[1:]
    return t if not t or t.endswith((".", "!", "?")) else t + "."


def article(left: str, right: str) -> str:
    """`left` with its last word, an indefinite article, made to fit the word `right` starts
    with: "An " + "squeaky voice" -> "A ", "a " + "angry voice" -> "an "."""
    m = re.search(r"\b(a|an)\s*$", left, re.IGNORECASE)
    w = re.match(r"[\s,;]*([a-z])", right, re.IGNORECASE)
    if m is None or w is None:
        return left
    word = ("an" if w.group(1).lower() in "aeiou" else "a")
    word = word.capitalize() if m.group(1)[0].isupper() else word
    return left[:m.start()] + word + " "


def edits(text: str, phrase: str, attr: str) -> list[str]:
    """Every readable caption made by deleting `phrase` (the first time it occurs, any case)
    with the words it hangs on and one separator, shortest deletion first; a gender noun is
    replaced by "speaker" instead."""
    low = text.lower()
    s = low.find(phrase.lower())
    if s < 0 or not phrase.strip():
        return []
    e = s + len(phrase)
    if attr == "gender" and _GENDER_NOUNS.fullmatch(phrase.strip()):
        return [tidy(text[:s] + "speaker" + text[e:])]
    # the words the phrase hangs on go with it: "at a steady pace", not "at a ... and"
    spans = set()
    for before in _BEFORE:
        if m := re.search(before + r"$", low[:s]):
            after = re.match(_AFTER, low[e:])
            spans.add((m.start(), e + after.end() if after else e))
    spans = spans or {(s, e)}
    out: dict[str, int] = {}
    for a, b in spans:
        # a phrase between separators goes with one of them ("at a steady pace and at ..."); one
        # inside a clause goes alone ("a bored female speaker")
        cuts = [(m.start(), b) for m in [_SEP_BEFORE.search(low[:a])] if m]
        cuts += [(a, b + m.end()) for m in [_SEP_AFTER.match(low[b:])] if m]
        for x, y in cuts or [(a, b)]:
            t = tidy(article(text[:x], text[y:]) + " " + text[y:])
            # the words around the cut (and the caption's start) must not be left hanging
            j = len(tidy(text[:x] + " ")) - 1 if x else 0
            holes = [h.start() for h in _HOLE.finditer(t)]
            if len(t.split()) >= 4 and not any(abs(h - j) < 30 or h < 12 for h in holes):
                out.setdefault(t, y - x)
    return sorted(out, key=lambda t: (out[t], t))


def strike(texts: Sequence[str], said: Sequence[dict], unsure: Sequence[Sequence[str]],
           parsed: Sequence[Any], parser: Any) -> tuple[list[str], list[dict], list[list[str]]]:
    """Each caption with its `unsure` attributes struck out, one at a time (`edits`), where an
    edit states exactly the caption's statements (`said`) less the struck one. `parsed`: each
    caption's parse (its clues give the phrases). Returns the captions, their statements and
    the attributes struck from each."""
    texts, said = list(texts), [dict(s) for s in said]
    struck: list[list[str]] = [[] for _ in texts]
    for i, attrs in enumerate(unsure):
        clues = parsed[i].clues
        for attr in attrs:
            phrases = [c.text for c in clues if c.category == attr and c.value == said[i].get(attr)
                       and not c.negated]
            if not phrases or len(set(p.lower() for p in phrases)) > 1:
                continue  # stated twice in other words: one deletion cannot take it out
            options = edits(texts[i], phrases[0], attr)
            want = {a: v for a, v in said[i].items() if a != attr}
            for t, p in zip(options, parser.parse_many(options) if options else [], strict=True):
                if dict(p.attributes) == want:
                    texts[i], said[i], clues = t, want, p.clues
                    struck[i].append(attr)
                    break
    return texts, said, struck
