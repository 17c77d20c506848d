"""Training examples from a prepared, clue-annotated, tokenized dataset directory.

Every reference caption of a clip is one example (all references, one example each): the
teacher reads `teacher_input(transcript, p_act)`, the student reads `instruction + <audio>...`,
and both predict that same caption, so the KL compares the same tokens position by position.
A clip too long for `max_len` gives one student example per window of its speech, each paired
with the same teacher example (`model.batching.speech_windows`); how many were split is logged.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from aligncap_core.errors import DataError
from aligncap_core.model.batching import (
    CaptionExample,
    KDCollator,
    encode_student_windows,
    encode_teacher_example,
    pad_examples,
)
from aligncap_core.utils import read_jsonl, sha256_file

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
CODEBOOK_SIZE = 1024  # EnCodec 24 kHz; a codec.json may name another size


def read_rows(data_dir: str | Path, split: str | None = None) -> list[dict]:
    """Manifest rows (of one split, if given)."""
    path = Path(data_dir) / MANIFEST
    if not path.is_file():
        raise DataError(f"{path} not found: run `aligncap data prepare` (or `data synth`) first")
    rows = read_jsonl(path)
    return [r for r in rows if split is None or r.get("split") == split]


def data_fingerprint(data_dir: str | Path) -> str:
    """Hash of the manifest as trained on. Not prepare's fingerprint.json: `data clues` and
    `data tokenize` rewrite the manifest afterwards, and both change what the model reads."""
    return sha256_file(Path(data_dir) / MANIFEST)[:16]


def codec_layout(data_dir: str | Path, rows: Sequence[dict]) -> tuple[int, int]:
    """(n_q, codebook_size) of the codes the rows point to, from the codes folder's codec.json
    (written by `tokenize_dataset`); n_q falls back to the codes' shape."""
    from aligncap_core.codec import load_codes

    coded = [r for r in rows if r.get("codes")]
    if not coded:
        raise DataError(f"{data_dir}: no row has codes; run `aligncap data tokenize` first")
    codecs = {r["codes"]["codec"] for r in coded}
    if len(codecs) > 1:
        raise DataError(f"{data_dir}: rows were tokenized by {len(codecs)} different codecs "
                        f"({', '.join(sorted(codecs))}); re-run `aligncap data tokenize`")
    shard = Path(coded[0]["codes"]["shard"])
    shard = shard if shard.is_absolute() else Path(data_dir) / shard
    meta_path = shard.parent / "codec.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    n_q = int(meta.get("n_q") or load_codes(data_dir, coded[0]).shape[0])
    return n_q, int(meta.get("codebook_size", CODEBOOK_SIZE))


def teacher_text(row: dict, acoustic_prompt: bool) -> str:
    from aligncap_core.clues.prompt import teacher_input

    p_act = row.get("p_act")
    if acoustic_prompt and not p_act:
        raise DataError(f"{row.get('id')}: no p_act (acoustic prompt); run `aligncap data clues` "
                        "first, or train without the acoustic prompt")
    return teacher_input(row.get("transcript"), p_act or "", use_prompt=acoustic_prompt)


def row_captions(row: dict) -> list[str]:
    """A row's non-blank reference captions; DataError naming the row when there is none."""
    caps = [c for c in row.get("captions") or [] if c and c.strip()]
    if not caps:
        raise DataError(f"{row.get('id')}: split {row.get('split')!r} needs at least one caption")
    return caps


def corpus_texts(rows: Sequence[dict], instruction: str) -> list[str]:
    """What the from-scratch tokenizer is trained on: everything the LM reads or writes."""
    texts = [instruction]
    for r in rows:
        texts.append(teacher_text(r, acoustic_prompt=bool(r.get("p_act"))))
        texts.extend(row_captions(r))
    return texts


def teacher_examples(tokenizer: Any, rows: Sequence[dict], acoustic_prompt: bool,
                     max_len: int) -> list[CaptionExample]:
    out = [encode_teacher_example(tokenizer, teacher_text(r, acoustic_prompt), cap, max_len)
           for r in rows for cap in row_captions(r)]
    _report_cut(out, max_len)
    return out


def _report_cut(examples: Sequence[CaptionExample], max_len: int) -> None:
    cut = [e.cut for e in examples if e.cut]
    if cut:
        log.warning("%d of %d teacher inputs (transcript + acoustic prompt) are longer than "
                    "max_len=%d: their first tokens were dropped (up to %d); the clues at the end "
                    "are kept", len(cut), len(examples), max_len, max(cut))


def speech_tokens(data_dir: str | Path, row: dict, keep_q: int | None,
                  prosody: Any = None) -> list[str]:
    """What the student reads of a clip: `<audio>` codes `</audio>`, then (with `prosody`, a
    ProsodySettings) the clip's `<prosody>` stream, computed from its audio file."""
    from aligncap_core.codec import codes_to_tokens

    codes, stream = row_streams(data_dir, row, prosody)
    return codes_to_tokens(codes, keep_q=keep_q) + (stream or [])


def row_streams(data_dir: str | Path, row: dict, prosody: Any,
                wav: Any = None) -> tuple[Any, list[str] | None]:
    """(a row's codes, its `<prosody>` stream or None without `prosody`): the codes from the
    data dir's shards, the stream from its audio (`wav` at PROSODY_RATE when the caller has
    read it already, else its file), both over the span the settings keep
    (`codec.prosody.clip_streams`)."""
    from aligncap_core.codec import load_codes

    codes = load_codes(data_dir, row)
    if prosody is None:
        return codes, None
    from aligncap_core.codec.prosody import clip_streams

    if wav is None:
        wav = row_audio(data_dir, row, "the prosody stream")
    return clip_streams(codes, wav, PROSODY_RATE, prosody)


def row_audio_path(data_dir: str | Path, row: dict) -> Path:
    """Where a row's `audio` is: an absolute path as it is, a relative one under `data_dir`."""
    audio = Path(row.get("audio") or "")
    return audio if audio.is_absolute() else Path(data_dir) / audio


def row_audio(data_dir: str | Path, row: dict, why: str) -> Any:
    """A row's audio at PROSODY_RATE; DataError naming the row and `why` it is read."""
    from aligncap_core.codec.tokenizer import read_audio

    path = row_audio_path(data_dir, row)
    if not path.is_file():
        raise DataError(f"{row.get('id')}: audio file not found: {path} ({why} is read from the audio)")
    return read_audio(path, PROSODY_RATE)


PROSODY_RATE = 24_000  # Hz the prosody stream is measured at (prepare's default rate)


def student_examples(tokenizer: Any, data_dir: str | Path, rows: Sequence[dict], *,
                     instruction: str, keep_q: int | None, max_len: int,
                     acoustic_prompt: bool, with_teacher: bool, prosody: Any = None,
                     teacher_tokenizer: Any = None) -> list[dict[str, CaptionExample]]:
    """One `{"student": ..., "teacher": ...}` pair per (clip, caption, window): a clip longer
    than `max_len` allows gives one pair per window of its speech (every stream of it, the
    prosody one included), all with the same teacher example. No "teacher" entry when
    `with_teacher` is False (the SFT-only baseline never runs the teacher). prosody: a
    ProsodySettings to append the clip's prosody stream (`speech_tokens`). teacher_tokenizer:
    encodes the teacher side (default: `tokenizer`)."""
    out, split, windows = [], 0, 0
    for r in rows:
        audio = speech_tokens(data_dir, r, keep_q, prosody)
        text = teacher_text(r, acoustic_prompt) if with_teacher else ""
        for i, cap in enumerate(row_captions(r)):
            students = encode_student_windows(tokenizer, instruction, audio, cap, max_len)
            if i == 0 and len(students) > 1:
                split, windows = split + 1, windows + len(students)
            teacher = (encode_teacher_example(teacher_tokenizer or tokenizer, text, cap, max_len)
                       if with_teacher else None)
            for s in students:
                out.append({"student": s, "teacher": teacher} if teacher else {"student": s})
    if split:
        log.warning("%d of %d clips are longer than the student's max_len=%d tokens: each was split "
                    "into windows of its speech (%d windows in all), every window trained with the "
                    "clip's captions", split, len(rows), max_len, windows)
    if with_teacher:
        _report_cut([p["teacher"] for p in out], max_len)
    return out


def teacher_collator(pad_id: int) -> Callable[[list[CaptionExample]], dict]:
    return lambda examples: pad_examples(examples, pad_id)


def student_collator(pad_id: int, with_teacher: bool) -> Callable[[list[dict]], dict]:
    if with_teacher:
        return KDCollator(pad_id)  # also checks both sides hold the same caption ids
    return lambda pairs: {"student": pad_examples([p["student"] for p in pairs], pad_id)}
