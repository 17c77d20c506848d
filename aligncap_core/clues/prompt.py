"""The acoustic prompt P_act = Insert(P_T, idx, clues) (ARCHITECTURE.md, method step 3).

A template P_T is text with an insertion point: either a `{clues}` placeholder or a character
index `idx`. The clues are rendered grouped by category in a fixed order, e.g.
"emotion very happy; pitch high; speed fast; tone trembling, excited", and inserted there:

    >>> build_acoustic_prompt(EmotionClueParser().parse("A woman speaks quickly, sounding tense."))
    'Emotional clues: speed fast; tone tense; gender female. Describe how the speaker sounds.'

Templates are configurable: a built-in name, a string, a {"text", "idx"} dict, or a YAML/JSON
file of named templates (`load_templates`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from aligncap_core.clues.parser import CATEGORIES, Clue, ClueResult
from aligncap_core.errors import ConfigError

PLACEHOLDER = "{clues}"
EMPTY = "none"


@dataclass(frozen=True)
class PromptTemplate:
    """P_T with its insertion point: `text` containing `{clues}`, or plain text and `idx`."""

    text: str
    idx: int | None = None

    def __post_init__(self):
        if self.idx is None and PLACEHOLDER not in self.text:
            raise ConfigError(f"prompt template needs a {PLACEHOLDER} placeholder or an idx: {self.text!r}")
        if self.idx is not None and not 0 <= self.idx <= len(self.text):
            raise ConfigError(f"prompt template idx {self.idx} is outside the text (length {len(self.text)})")

    def insert(self, clues_text: str) -> str:
        """Insert(P_T, idx, clues)."""
        if self.idx is not None:
            return self.text[:self.idx] + clues_text + self.text[self.idx:]
        return self.text.replace(PLACEHOLDER, clues_text)


TEMPLATES: dict[str, PromptTemplate] = {
    "default": PromptTemplate("Emotional clues: {clues}. Describe how the speaker sounds."),
    "short": PromptTemplate("Clues: {clues}."),
    "instruction": PromptTemplate(
        "The voice has these qualities: {clues}. Write one sentence describing the speaker's emotion "
        "and speaking style."),
}


def load_templates(source: str | os.PathLike | Mapping) -> dict[str, PromptTemplate]:
    """Named templates from a mapping or a YAML/JSON file: {name: "text {clues}"} or
    {name: {"text": ..., "idx": ...}}. Built-in names not given stay available."""
    if not isinstance(source, Mapping):
        import yaml  # JSON is YAML too

        path = Path(source)
        try:
            source = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (OSError, yaml.YAMLError) as e:
            raise ConfigError(f"cannot read prompt templates from {path}: {e}") from e
        if not isinstance(source, Mapping):
            raise ConfigError(f"{path}: prompt templates must be a mapping of name -> template")
    out = dict(TEMPLATES)
    for name, spec in source.items():
        out[str(name)] = as_template(spec)
    return out


def as_template(template: str | Mapping | PromptTemplate | None,
                templates: Mapping[str, PromptTemplate] | None = None) -> PromptTemplate:
    """A PromptTemplate from a built-in/known name, a template string, or a {"text", "idx"} dict."""
    templates = TEMPLATES if templates is None else templates
    if template is None:
        return templates["default"]
    if isinstance(template, PromptTemplate):
        return template
    if isinstance(template, Mapping):
        if "text" not in template:
            raise ConfigError(f"prompt template mapping needs a 'text' key: {dict(template)!r}")
        return PromptTemplate(str(template["text"]), template.get("idx"))
    if template in templates:
        return templates[template]
    if isinstance(template, str):
        if PLACEHOLDER not in template:
            raise ConfigError(f"unknown prompt template {template!r}: give a name ({', '.join(templates)}) "
                              f"or a text with {PLACEHOLDER}")
        return PromptTemplate(template)
    raise ConfigError(f"prompt template must be a name, a string or a mapping, got {type(template).__name__}")


def format_clues(clues: Iterable[Clue]) -> str:
    """Clues grouped by category: "emotion very angry; pitch high; tone trembling, tense".

    Normalised clues show their vocabulary value (with the modifier: "very angry"), others their
    text; negated ones read "not loud". Duplicates are dropped; empty -> "none".
    """
    groups: dict[str, list[str]] = {}
    for c in clues:
        if c.category not in CATEGORIES:
            continue
        if c.value is not None:
            item = f"{c.modifier} {c.value}" if c.modifier and c.category != "gender" else c.value
        else:
            item = c.text.strip().lower()
        if c.negated:
            item = f"not {item}"
        items = groups.setdefault(c.category, [])
        if item and item not in items:
            items.append(item)
    parts = [f"{cat} {', '.join(groups[cat])}" for cat in CATEGORIES if groups.get(cat)]
    return "; ".join(parts) or EMPTY


def build_acoustic_prompt(clues_or_result: ClueResult | Iterable[Clue] | Iterable[Mapping],
                          template: str | Mapping | PromptTemplate | None = None) -> str:
    """P_act: the template with the formatted clues inserted (clue dicts are accepted too)."""
    clues = clues_or_result.clues if isinstance(clues_or_result, ClueResult) else clues_or_result
    clues = [c if isinstance(c, Clue) else Clue.from_dict(c) for c in clues]
    return as_template(template).insert(format_clues(clues))


def teacher_input(transcript: str | None, p_act: str, use_prompt: bool = True) -> str:
    """The teacher's text input: the transcript, then P_act (or the transcript alone).

    Both variants share the "Transcript:" line so an ablation without the prompt changes
    nothing else in the input.
    """
    line = f"Transcript: {(transcript or '').strip()}"
    return f"{line}\n{p_act}" if use_prompt and p_act else line


def template_from_option(spec: str | None) -> PromptTemplate:
    """The CLI's `--template`: a built-in name, a text with {clues}, or a YAML/JSON file of named
    templates (`FILE` uses its "default" entry, `FILE:NAME` another one)."""
    if spec is None:
        return TEMPLATES["default"]
    path, _, name = spec.partition(":") if not Path(spec).exists() else (spec, "", "")
    if Path(path).is_file():
        templates = load_templates(path)
        return as_template(name or "default", templates)
    return as_template(spec)
