"""Training examples and collators for teacher (text) and student (speech) sequences.

teacher: [bos] + tokens(teacher_text)                 + tokens(caption) + [eos]
student: [bos] + tokens(instruction) + speech tokens  + tokens(caption) + [eos]

The caption is tokenized on its own (never merged with the prompt by BPE), so both sides hold
the identical caption ids and `align_caption_logits` can compare them position by position.

Long clips. Speech tokens are `<audio> codes </audio>`, possibly followed by other framed
streams of the same clip (`<prosody> ... </prosody>`). A clip whose student sequence would
exceed `max_len` (the tiny preset's 1024 positions hold ~6.5 s at 2 codebooks) is never cut:
`speech_windows` splits *every* stream into the same consecutive, equal spans of time, each
window framed like a whole clip, as few windows as fit. Training makes one example per window,
each with the full instruction and the clip's caption (`encode_student_windows`); captioning
reads every window and keeps the caption the model is surest of (`inference.captioner`). Only
text prompts (the teacher's transcript + P_act) are cut to fit, from the left, and counted
(`CaptionExample.cut`): the clues at their end matter most.
"""

from __future__ import annotations

import re
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
    cut: int = 0  # prompt tokens dropped to fit max_len (text prompts only; see the module doc)


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


# ---- long clips: windows of time --------------------------------------------------------------
_OPEN = re.compile(r"<([a-z]+)>")
_KIND = re.compile(r"(_\d+|\d+|_u)>$")  # <a1_907> -> <a1>, <pf7> / <pf_u> -> <pf>
# clip-level tokens that open a stream (the prosody stream's voice token): every window repeats them
_CLIP_LEVEL = ("<pv>",)


def _speech_blocks(tokens: Sequence[str]) -> list[tuple[list[str], list[str], str, int]]:
    """[(open + clip-level header, body, close, tokens per frame)] of framed streams
    `<x> ... </x>`. Tokens per frame: where the body's token kinds start to repeat (2 for
    `<a0_.> <a1_.>` frames of 2 codebooks, 2 for `<pf.> <pl.>` prosody pairs), so a window never
    splits a frame. The header holds the open marker and the clip-level tokens after it."""
    blocks, i = [], 0
    while i < len(tokens):
        m = _OPEN.fullmatch(tokens[i])
        close = f"</{m.group(1)}>" if m else None
        try:
            j = list(tokens).index(close, i + 1) if close else -1
        except ValueError:
            j = -1
        if j < 0:
            raise ConfigError(f"speech tokens: {tokens[i]!r} at position {i} is not the start of a "
                              "framed stream (<audio> ... </audio>); frame every stream")
        body = list(tokens[i + 1: j])
        head = [tokens[i]]
        while body and _KIND.sub(">", body[0]) in _CLIP_LEVEL:
            head.append(body.pop(0))
        kinds = [_KIND.sub(">", t) for t in body]
        frame = next((k for k in range(1, len(kinds)) if kinds[k] == kinds[0]), max(1, len(kinds)))
        if len(body) % frame:
            frame = 1
        blocks.append((head, body, close, frame))
        i = j + 1
    return blocks


def speech_windows(tokens: Sequence[str], max_tokens: int) -> list[list[str]]:
    """Split a clip's speech tokens (`<audio> ... </audio>` and any further framed streams)
    into the fewest consecutive windows of equal duration that each hold at most `max_tokens`
    tokens, framing included; every stream is cut at the same fractions of the clip, so the
    windows of different streams cover the same time. One window (the tokens as they are) when
    they fit. Raises ConfigError when not even one frame of each stream fits."""
    tokens = list(tokens)
    if len(tokens) <= max_tokens:
        return [tokens]
    blocks = _speech_blocks(tokens)
    overhead = sum(len(head) + 1 for head, *_ in blocks)
    if max_tokens < overhead + sum(f for *_, f in blocks):
        raise ConfigError(f"speech tokens: a window of {max_tokens} tokens cannot hold one frame of "
                          f"each stream; raise max_len (or shorten the instruction)")
    frames = [len(body) // f for _, body, _, f in blocks]
    n = max(2, -(-(len(tokens) - overhead) // (max_tokens - overhead)))
    while True:
        bounds = [[(k * nf) // n for k in range(n + 1)] for nf in frames]
        sizes = [overhead + sum(f * (b[k + 1] - b[k]) for (*_, f), b in zip(blocks, bounds, strict=True))
                 for k in range(n)]
        if max(sizes) <= max_tokens:
            break
        n += 1
    return [[tok for (head, body, cl, f), b in zip(blocks, bounds, strict=True)
             for tok in (*head, *body[f * b[k]: f * b[k + 1]], cl)] for k in range(n)]


def student_prompt_windows(tokenizer: Any, instruction: str, speech_tokens: Sequence[str],
                           max_prompt: int | None) -> list[list[int]]:
    """The student prompt(s) of a clip: one `student_prompt_ids` when it fits `max_prompt`
    tokens (None: no limit), else one per `speech_windows` window, each with the instruction."""
    toks = list(speech_tokens)
    if not toks or toks[0] != AUDIO_OPEN:
        toks = [AUDIO_OPEN, *toks, AUDIO_CLOSE]
    head = _bos(tokenizer) + _text_ids(tokenizer, instruction)
    if max_prompt is None:
        return [head + audio_token_ids(tokenizer, toks)]
    return [head + audio_token_ids(tokenizer, w)
            for w in speech_windows(toks, max_prompt - len(head))]


def build_example(tokenizer: Any, prompt_ids: Sequence[int], caption: str,
                  max_len: int | None = None, cut_prompt: bool = False) -> CaptionExample:
    """prompt_ids + caption + eos, labels -100 on the prompt.

    Over `max_len`: with `cut_prompt` (text prompts), prompt tokens after the first are dropped
    from the left (the bos and the caption are kept whole; the end of the prompt, right before
    the caption, matters most) and counted in `cut`; otherwise ConfigError (a speech prompt is
    split into windows instead: `encode_student_windows`).
    """
    cap = _text_ids(tokenizer, caption) + [tokenizer.eos_token_id]
    prompt = list(prompt_ids)
    n_prompt = len(prompt)
    if max_len is not None and len(prompt) + len(cap) > max_len:
        keep = max_len - len(cap) - 1
        if keep < 0 or not prompt:
            raise ConfigError(f"caption of {len(cap)} tokens does not fit max_len={max_len}: "
                              f"{caption[:60]!r}")
        if not cut_prompt:
            raise ConfigError(f"a prompt of {len(prompt)} tokens and a caption of {len(cap)} exceed "
                              f"max_len={max_len}; split the speech into windows "
                              "(encode_student_windows) or raise max_len")
        prompt = prompt[:1] + (prompt[len(prompt) - keep:] if keep else [])
    if not prompt:
        raise ConfigError("empty prompt: a caption needs at least one token before it")
    ids = prompt + cap
    labels = [IGNORE_INDEX] * len(prompt) + cap
    return CaptionExample(ids, labels, len(prompt), len(cap), cut=n_prompt - len(prompt))


def encode_teacher_example(tokenizer: Any, teacher_text: str, caption: str,
                           max_len: int | None = None) -> CaptionExample:
    """teacher_text: transcript + acoustic prompt P_act (clues.teacher_input); cut from the
    left to fit `max_len` (counted in `cut`)."""
    return build_example(tokenizer, teacher_prompt_ids(tokenizer, teacher_text), caption, max_len,
                         cut_prompt=True)


def encode_student_example(tokenizer: Any, instruction: str, audio_tokens: Sequence[str],
                           caption: str, max_len: int | None = None) -> CaptionExample:
    """One student example; ConfigError when it does not fit `max_len` (see
    `encode_student_windows`)."""
    return build_example(tokenizer, student_prompt_ids(tokenizer, instruction, audio_tokens),
                         caption, max_len)


def encode_student_windows(tokenizer: Any, instruction: str, speech_tokens: Sequence[str],
                           caption: str, max_len: int | None = None) -> list[CaptionExample]:
    """The clip's student examples: one, or one per window of its speech (module doc), each
    with the whole instruction and the whole caption, each at most `max_len` tokens."""
    cap_len = len(_text_ids(tokenizer, caption)) + 1
    if max_len is not None and cap_len >= max_len:
        raise ConfigError(f"caption of {cap_len} tokens does not fit max_len={max_len}: "
                          f"{caption[:60]!r}")
    prompts = student_prompt_windows(tokenizer, instruction, speech_tokens,
                                     None if max_len is None else max_len - cap_len)
    return [build_example(tokenizer, p, caption) for p in prompts]


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
