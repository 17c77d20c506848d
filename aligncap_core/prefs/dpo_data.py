"""Pair rows -> token ids for the DPO round, and the collator that keeps the teacher inputs.

Row layout (one preference pair):
    prompt_ids         bos + instruction + <audio> ... </audio>   (the student's input)
    chosen_ids         caption ids + eos, tokenized as `model.batching` does for training
    rejected_ids       same for the rejected caption
    teacher_prompt_ids bos + teacher text (transcript + P_act); only when lambda_kd > 0
The teacher sequence is teacher_prompt_ids + chosen_ids: teacher and student predict the very
same chosen-caption ids, so the token-level KD term compares them position by position.

We tokenize here instead of letting TRL tokenize the strings: TRL tokenizes prompt+completion
as one string and splits at the common prefix, which for the micro tokenizer gives the same ids
(the audio tokens are added tokens and `</audio>` ends every prompt; checked in
tests/core/test_dpo.py), but for hub tokenizers that add bos themselves or prefix-space the
text after a special token it would not reproduce `model.batching`'s caption ids, and the KD
alignment with the teacher would silently compare different tokens.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from aligncap_core.errors import ConfigError
from aligncap_core.model.batching import (
    CaptionExample,
    build_example,
    pad_examples,
    teacher_prompt_ids,
)
from aligncap_core.model.checkpoint import AUDIO_TOKEN_RE
from aligncap_core.model.losses import IGNORE_INDEX
from aligncap_core.prefs.candidates import audio_token_ids_of, encode_prompt

log = logging.getLogger(__name__)
TEACHER_COLUMN = "teacher_prompt_ids"
TEACHER_KEYS = ("teacher_input_ids", "teacher_attention_mask", "teacher_caption_start",
                "teacher_caption_len")


@dataclass
class TeacherInfo:
    """Where the KD teacher of the DPO round comes from.

    adapter: None = the base with every adapter disabled is the teacher (from-scratch base,
        text-trained in full); a name ("teacher") = that adapter of the policy checkpoint.
    texts: clip id -> teacher input text (transcript + acoustic prompt, `clues.teacher_input`),
        for pair rows that do not carry a `teacher_text` field themselves.
    """

    adapter: str | None = None
    texts: dict[str, str] = field(default_factory=dict)

    @classmethod
    def coerce(cls, info: TeacherInfo | dict | None) -> TeacherInfo:
        if info is None or isinstance(info, TeacherInfo):
            return info or cls()
        unknown = set(info) - {"adapter", "texts"}
        if unknown:
            raise ConfigError(f"teacher_info: unknown keys {sorted(unknown)} (known: adapter, texts)")
        return cls(adapter=info.get("adapter"), texts=dict(info.get("texts") or {}))

    def text_for(self, row: dict) -> str:
        text = row.get("teacher_text") or self.texts.get(row["id"])
        if not text:
            raise ConfigError(f"{row['id']}: no teacher text for the KD term (pair row has no "
                              "'teacher_text' and teacher_info.texts has no entry); pass it, or "
                              "set lambda_kd=0")
        return text


def _caption_ids(tokenizer: Any, prompt_ids: list[int], caption: str) -> list[int]:
    # build_example tokenizes the caption on its own, exactly as the KD training examples do
    ex = build_example(tokenizer, prompt_ids, caption)
    return ex.input_ids[ex.caption_start:]


class PromptTooLong(ConfigError):
    """A pair's student prompt (speech) does not fit max_length; speech is never cut."""


def _fit(prompt: list[int], completion_len: int, max_length: int | None, what: str,
         cut: bool) -> list[int]:
    """The prompt, fitted to `max_length` with the longest completion. Over it: with `cut` (the
    teacher's text), prompt tokens after the first (bos) are dropped from the left, the captions
    kept whole (as `batching.build_example` does); without (the student's speech),
    `PromptTooLong`."""
    if max_length is None or len(prompt) + completion_len <= max_length:
        return prompt
    keep = max_length - completion_len - 1
    if keep < 0:
        raise ConfigError(f"{what}: a caption of {completion_len} tokens does not fit "
                          f"max_length={max_length}")
    if not cut:
        raise PromptTooLong(f"{what}: a prompt of {len(prompt)} tokens and a caption of "
                            f"{completion_len} exceed max_length={max_length}")
    return prompt[:1] + (prompt[len(prompt) - keep:] if keep else [])


def encode_pair(tokenizer: Any, row: dict, teacher_text: str | None = None,
                max_length: int | None = None, audio_ids: set[int] | None = None) -> dict:
    """One pair row -> `{"id", "prompt_ids", "chosen_ids", "rejected_ids"[, TEACHER_COLUMN]}`.

    The prompt is `row["prompt_ids"]` or bos + tokens of `row["prompt"]`; every audio token in
    the prompt text must come out as exactly one id (else ConfigError: add_audio_tokens first).
    """
    prompt = encode_prompt(tokenizer, row)
    if isinstance(row.get("prompt"), str) and row.get("prompt_ids") is None:
        audio_ids = audio_ids if audio_ids is not None else set(audio_token_ids_of(tokenizer))
        n_text = len(AUDIO_TOKEN_RE.findall(row["prompt"]))
        n_ids = sum(i in audio_ids for i in prompt)
        if n_text != n_ids:
            raise ConfigError(f"{row['id']}: the prompt holds {n_text} audio tokens but encodes to "
                              f"{n_ids} audio ids; is this the policy's tokenizer?")
    chosen = _caption_ids(tokenizer, prompt, row["chosen"])
    rejected = _caption_ids(tokenizer, prompt, row["rejected"])
    out = {"id": row["id"],
           "prompt_ids": _fit(prompt, max(len(chosen), len(rejected)), max_length, row["id"],
                              cut=False),
           "chosen_ids": chosen, "rejected_ids": rejected}
    if teacher_text is not None:
        out[TEACHER_COLUMN] = _fit(teacher_prompt_ids(tokenizer, teacher_text), len(chosen),
                                   max_length, f"{row['id']} (teacher)", cut=True)
    return out


def pair_dataset(tokenizer: Any, rows: Sequence[dict], teacher: TeacherInfo | None,
                 max_length: int | None = None) -> Any:
    """A `datasets.Dataset` of encoded pairs (teacher column only when `teacher` is given).
    Pairs whose chosen and rejected captions encode identically carry no preference, and pairs
    whose speech prompt does not fit `max_length` cannot be trained without cutting the audio:
    both are dropped with a warning that counts them."""
    from datasets import Dataset

    audio_ids = set(audio_token_ids_of(tokenizer))
    encoded, same, long = [], 0, 0
    for r in rows:
        try:
            e = encode_pair(tokenizer, r, teacher.text_for(r) if teacher else None, max_length,
                            audio_ids)
        except PromptTooLong:
            long += 1
            continue
        if e["chosen_ids"] == e["rejected_ids"]:
            same += 1
            continue
        encoded.append(e)
    if same:
        log.warning("dpo: %d pairs dropped: chosen and rejected captions are identical", same)
    if long:
        log.warning("dpo: %d pairs dropped: their speech prompt and caption exceed max_length=%s "
                    "(speech is never cut; raise dpo.max_length to the policy's train.max_len)",
                    long, max_length)
    if not encoded:
        raise ConfigError("dpo: no usable preference pairs")
    return Dataset.from_list(encoded)


@dataclass
class POCollator:
    """TRL's preference collator (batch = [chosen rows; rejected rows], right-padded, with
    `completion_mask` and precomputed reference log-probs) plus the teacher batch for the KD
    term: `teacher_input_ids`, `teacher_attention_mask` (batch, seq), `teacher_caption_start`,
    `teacher_caption_len` (batch,), one teacher row per pair (the chosen caption)."""

    pad_token_id: int

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        from trl.trainer.dpo_trainer import DataCollatorForPreference

        out = DataCollatorForPreference(pad_token_id=self.pad_token_id)(examples)
        if TEACHER_COLUMN in examples[0]:
            rows = [CaptionExample(e[TEACHER_COLUMN] + e["chosen_ids"],
                                   [IGNORE_INDEX] * len(e[TEACHER_COLUMN]) + e["chosen_ids"],
                                   len(e[TEACHER_COLUMN]), len(e["chosen_ids"]))
                    for e in examples]
            t = pad_examples(rows, self.pad_token_id, "right")
            out.update(teacher_input_ids=t["input_ids"], teacher_attention_mask=t["attention_mask"],
                       teacher_caption_start=t["caption_start"], teacher_caption_len=t["caption_len"])
        return out
