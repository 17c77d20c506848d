"""Training examples and collators for teacher (text) and student (speech) sequences.

teacher: [bos] + tokens(teacher_text)                 + tokens(caption) + [eos]
student: [bos] + tokens(instruction) + audio tokens   + tokens(caption) + [eos]

The caption is tokenized on its own (never merged with the prompt by BPE), so both sides hold
the identical caption ids and `align_caption_logits` can compare them position by position.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from aligncap_core.errors import ConfigError
from aligncap_core.model.losses import IGNORE_INDEX

AUDIO_OPEN, AUDIO_CLOSE = "<audio>", "</audio>"


@dataclass(frozen=True)
class CaptionExample:
    """One tokenized sequence. caption_start indexes input_ids; caption_len counts eos."""

    input_ids: list[int]
    labels: list[int]
    caption_start: int
    caption_len: int


def _text_ids(tokenizer: Any, text: str) -> list[int]:
    return list(tokenizer(text, add_special_tokens=False)["input_ids"]) if text else []


def _bos(tokenizer: Any) -> list[int]:
    # Tokenizers without bos (Qwen) start directly with the prompt.
    return [tokenizer.bos_token_id] if tokenizer.bos_token_id is not None else []


def audio_token_ids(tokenizer: Any, audio_tokens: Sequence[str], frame: bool = True) -> list[int]:
    """Ids of `audio_tokens` (strings like `<a0_17>`), framed by `<audio>` ... `</audio>` unless
    already framed or `frame=False`. Unknown tokens are an error (add_audio_tokens first)."""
    toks = list(audio_tokens)
    if frame and (not toks or toks[0] != AUDIO_OPEN):
        toks = [AUDIO_OPEN, *toks, AUDIO_CLOSE]
    vocab = tokenizer.get_vocab()
    unknown = [t for t in toks if t not in vocab]
    if unknown:
        raise ConfigError(f"audio tokens not in the tokenizer: {unknown[:5]} "
                          f"({len(unknown)} in all); call add_audio_tokens with this codec's vocab")
    return [vocab[t] for t in toks]


def teacher_prompt_ids(tokenizer: Any, teacher_text: str) -> list[int]:
    return _bos(tokenizer) + _text_ids(tokenizer, teacher_text)


def student_prompt_ids(tokenizer: Any, instruction: str, audio_tokens: Sequence[str]) -> list[int]:
    return _bos(tokenizer) + _text_ids(tokenizer, instruction) + audio_token_ids(tokenizer, audio_tokens)


def build_example(tokenizer: Any, prompt_ids: Sequence[int], caption: str,
                  max_len: int | None = None) -> CaptionExample:
    """prompt_ids + caption + eos, labels -100 on the prompt.

    Over `max_len`, prompt tokens after the first are dropped from the left (the bos and the
    caption are kept whole): the end of the prompt, right before the caption, matters most.
    """
    cap = _text_ids(tokenizer, caption) + [tokenizer.eos_token_id]
    prompt = list(prompt_ids)
    if max_len is not None and len(prompt) + len(cap) > max_len:
        keep = max_len - len(cap) - 1
        if keep < 0 or not prompt:
            raise ConfigError(f"caption of {len(cap)} tokens does not fit max_len={max_len}: "
                              f"{caption[:60]!r}")
        prompt = prompt[:1] + (prompt[len(prompt) - keep:] if keep else [])
    if not prompt:
        raise ConfigError("empty prompt: a caption needs at least one token before it")
    ids = prompt + cap
    labels = [IGNORE_INDEX] * len(prompt) + cap
    return CaptionExample(ids, labels, len(prompt), len(cap))


def encode_teacher_example(tokenizer: Any, teacher_text: str, caption: str,
                           max_len: int | None = None) -> CaptionExample:
    """teacher_text: transcript + acoustic prompt P_act (clues.teacher_input)."""
    return build_example(tokenizer, teacher_prompt_ids(tokenizer, teacher_text), caption, max_len)


def encode_student_example(tokenizer: Any, instruction: str, audio_tokens: Sequence[str],
                           caption: str, max_len: int | None = None) -> CaptionExample:
    return build_example(tokenizer, student_prompt_ids(tokenizer, instruction, audio_tokens),
                         caption, max_len)


def pad_examples(examples: Sequence[CaptionExample], pad_id: int,
                 side: str = "right") -> dict[str, torch.Tensor]:
    """Pad to the longest example.

    Returns input_ids, attention_mask, labels: (batch, seq); caption_start, caption_len:
    (batch,), caption_start shifted by the padding when side="left".
    """
    if side not in ("left", "right"):
        raise ConfigError(f"padding side must be 'left' or 'right', got {side!r}")
    if not examples:
        raise ConfigError("pad_examples: empty batch")
    seq = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), seq), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), seq), IGNORE_INDEX, dtype=torch.long)
    attn = torch.zeros((len(examples), seq), dtype=torch.long)
    starts = []
    for i, e in enumerate(examples):
        n = len(e.input_ids)
        sl = slice(0, n) if side == "right" else slice(seq - n, seq)
        ids[i, sl] = torch.tensor(e.input_ids)
        labels[i, sl] = torch.tensor(e.labels)
        attn[i, sl] = 1
        starts.append(e.caption_start + (0 if side == "right" else seq - n))
    return {
        "input_ids": ids, "attention_mask": attn, "labels": labels,
        "caption_start": torch.tensor(starts, dtype=torch.long),
        "caption_len": torch.tensor([e.caption_len for e in examples], dtype=torch.long),
    }


@dataclass
class KDCollator:
    """Collate `{"teacher": CaptionExample, "student": CaptionExample}` pairs into
    `{"teacher": batch, "student": batch}` (see `pad_examples`), right-padded for training.

    Checks that each pair carries identical caption ids: otherwise the token-level KL would
    compare different tokens.
    """

    pad_id: int
    side: str = "right"

    def __call__(self, pairs: Sequence[dict[str, CaptionExample]]) -> dict[str, dict[str, torch.Tensor]]:
        for k, p in enumerate(pairs):
            t, s = p["teacher"], p["student"]
            if t.input_ids[t.caption_start:] != s.input_ids[s.caption_start:]:
                raise ConfigError(f"KD pair {k}: teacher and student captions differ")
        return {side: pad_examples([p[side] for p in pairs], self.pad_id, self.side)
                for side in ("teacher", "student")}
