"""Does the teacher copy its prompt? The share of P_act's attribute values its captions state.

The text teacher reads `transcript + P_act` (e.g. "Emotional clues: emotion sad; pitch low;
speed slow; ..."). During distillation the student is pulled towards the teacher's caption
distribution, so a teacher that writes "sounding happy" for a prompt that says "emotion sad"
pulls the student towards a false caption. Validation loss does not show this: a teacher at a
good loss can still put most of its emotion-word mass on the wrong value
(docs/experiments/kd_vs_sft.md). So the teacher is selected and stopped on its *copy rate*:

    copy_rate = sum over valid clips and the attributes P_act states (clue_attributes) of
                [the teacher's greedy caption states that same value] / number of such pairs

An attribute the caption leaves out counts as not copied (the teacher should say everything the
prompt tells it). `copy_rate_<attr>` is the same per attribute.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from aligncap_core.vocab import ATTRIBUTES

ATTRS = ("emotion", "pitch", "speed", "volume", "gender")


def prompt_attributes(row: dict) -> dict[str, str]:
    """The vocabulary attributes the row's acoustic prompt states (`data clues` merged them
    into `clue_attributes`)."""
    attrs = row.get("clue_attributes") or {}
    return {a: v for a, v in attrs.items() if a in ATTRS and v in ATTRIBUTES[a]}


def copy_rate(captions: Sequence[str], rows: Sequence[dict], parser: Any = None) -> dict[str, float]:
    """{"copy_rate", "copy_rate_<attr>", "copy_pairs"} of `captions` (one per row) against the
    rows' prompt attributes; rates are None when the prompts state nothing."""
    if parser is None:
        from aligncap_core.clues import EmotionClueParser

        parser = EmotionClueParser()
    parsed = parser.parse_many(list(captions))
    hit: dict[str, int] = dict.fromkeys(ATTRS, 0)
    total: dict[str, int] = dict.fromkeys(ATTRS, 0)
    for p, row in zip(parsed, rows, strict=True):
        for a, v in prompt_attributes(row).items():
            total[a] += 1
            hit[a] += p.attributes.get(a) == v
    n = sum(total.values())
    out: dict[str, Any] = {"copy_rate": sum(hit.values()) / n if n else None, "copy_pairs": n}
    for a in ATTRS:
        out[f"copy_rate_{a}"] = hit[a] / total[a] if total[a] else None
    return out


@torch.no_grad()
def teacher_captions(model: Any, tokenizer: Any, rows: Sequence[dict], *, acoustic_prompt: bool,
                     max_new_tokens: int = 48, batch_size: int = 32) -> list[str]:
    """The teacher's greedy caption of each row (transcript + P_act prompt, as in training)."""
    from aligncap_core.model.batching import teacher_prompt_ids
    from aligncap_core.model.generate import GenerationSettings, generate_captions
    from aligncap_core.train.data import teacher_text

    prompts = [teacher_prompt_ids(tokenizer, teacher_text(r, acoustic_prompt)) for r in rows]
    settings = GenerationSettings(max_new_tokens=max_new_tokens, batch_size=batch_size)
    was_training = model.training
    model.eval()
    try:
        return generate_captions(model, tokenizer, prompts, settings)
    finally:
        model.train(was_training)


def teacher_copy_rate(model: Any, tokenizer: Any, rows: Sequence[dict], *, acoustic_prompt: bool,
                      parser: Any = None) -> dict[str, float]:
    """Greedy-caption `rows` with the teacher and score its copy rate (see the module doc)."""
    caps = teacher_captions(model, tokenizer, rows, acoustic_prompt=acoustic_prompt)
    return copy_rate(caps, rows, parser)
