"""Long clips are never cut (issue #22): a clip whose speech does not fit the model's token
budget is split into windows of its speech (every stream over the same span of time), each
window trained with the clip's whole instruction and caption; captioning reads every window
and keeps the caption the model is surest of. Only text prompts are cut, and counted.
"""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from aligncap_core.errors import ConfigError
from aligncap_core.model.batching import (
    AUDIO_CLOSE,
    AUDIO_OPEN,
    encode_student_windows,
    speech_windows,
)
from aligncap_core.train import data
from tests.helpers.models import micro_model_with_audio
from tests.helpers.training import make_corpus


def _audio(frames: int, n_q: int = 2) -> list[str]:
    return [AUDIO_OPEN] + [f"<a{q}_{(f + q) % 16}>" for f in range(frames) for q in range(n_q)] + [AUDIO_CLOSE]


def _prosody(hops: int) -> list[str]:
    return ["<prosody>"] + [t for h in range(hops) for t in (f"<pf{h % 24}>", f"<pl{h % 10}>")] + ["</prosody>"]


def _bodies(window: list[str]) -> dict[str, list[str]]:
    """{opening marker: the tokens inside} of one window."""
    out, cur = {}, None
    for t in window:
        if t in (AUDIO_OPEN, "<prosody>"):
            cur, out[t] = t, []
        elif t in (AUDIO_CLOSE, "</prosody>"):
            cur = None
        else:
            out[cur].append(t)
    return out


def test_windows_cover_every_stream_over_the_same_time_and_fit():
    # 300 frames of 2 codebooks (4 s at 75 frames/s) then a prosody stream of 50 hops (0.08 s)
    tokens = _audio(300) + _prosody(50)
    assert speech_windows(tokens, len(tokens)) == [tokens]  # fits: untouched
    windows = speech_windows(tokens, 200)
    assert all(len(w) <= 200 for w in windows)
    # the fewest windows: one fewer would not fit (their sizes sum to the tokens + framing)
    assert sum(len(w) for w in windows) == len(tokens) + 4 * (len(windows) - 1)
    assert len(windows) - 1 < (len(tokens) - 4) / (200 - 4)
    parts = [_bodies(w) for w in windows]
    # nothing dropped, nothing repeated, order kept, in every stream
    assert sum((p[AUDIO_OPEN] for p in parts), []) == tokens[1:601]
    assert sum((p["<prosody>"] for p in parts), []) == tokens[603:-1]
    start_a = start_p = 0
    for p in parts:
        a, pr = p[AUDIO_OPEN], p["<prosody>"]
        assert len(a) % 2 == 0 and len(pr) % 2 == 0  # no frame split between windows
        assert a[0].startswith("<a0_") and pr[0].startswith("<pf")
        # the same span of time: the window starts at the same fraction of both streams
        assert abs(start_a / 600 - start_p / 100) <= 2 / 100
        start_a, start_p = start_a + len(a), start_p + len(pr)
    with pytest.raises(ConfigError, match="one frame"):
        speech_windows(tokens, 5)
    with pytest.raises(ConfigError, match="framed stream"):
        speech_windows(["<a0_1>"] * 50, 10)


def test_long_clip_becomes_windows_with_whole_instruction_and_caption():
    _, tok, _ = micro_model_with_audio()
    cap = "She whispers softly."
    head = [tok.bos_token_id] + tok("Describe.", add_special_tokens=False)["input_ids"]
    cap_ids = tok(cap, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    audio = _audio(40)
    (one,) = encode_student_windows(tok, "Describe.", audio, cap, max_len=200)
    exs = encode_student_windows(tok, "Describe.", audio, cap, max_len=40)
    assert len(exs) > 1
    inner = []
    for e in exs:
        assert len(e.input_ids) <= 40
        assert e.input_ids[:len(head)] == head  # the instruction is never lost
        assert e.input_ids[e.caption_start:] == cap_ids  # nor the caption
        toks = tok.convert_ids_to_tokens(e.input_ids[len(head):e.caption_start])
        assert toks[0] == AUDIO_OPEN and toks[-1] == AUDIO_CLOSE
        inner += toks[1:-1]
    assert inner == audio[1:-1]  # the whole clip, start included, across the windows
    assert one.input_ids[:len(head)] == head and len(one.input_ids) > 40


def test_training_data_splits_long_clips_and_says_so(tmp_path, caplog):
    """A corpus with long clips: every student example fits max_len, the long clips'
    windows are all there, each paired with the clip's teacher example, and a warning counts
    them. The student trains on it."""
    corpus = make_corpus(tmp_path / "corpus")
    _, tok, _ = micro_model_with_audio()
    rows = data.read_rows(corpus, "train")
    max_len = 45  # toy clips: 8-15 frames x 2 codebooks + framing, instruction, caption
    with caplog.at_level(logging.WARNING, logger="aligncap_core.train.data"):
        pairs = data.student_examples(tok, corpus, rows, instruction="Describe.", keep_q=None,
                                      max_len=max_len, acoustic_prompt=True, with_teacher=True)
    assert all(len(p["student"].input_ids) <= max_len for p in pairs)
    n_caps = sum(len(r["captions"]) for r in rows)
    assert len(pairs) > n_caps  # some clips became several examples
    assert "longer than the student's max_len=45" in caplog.text and "windows" in caplog.text
    # each window pairs with the very same teacher example, so the KD targets are the clip's
    firsts = {}
    for p in pairs:
        s, t = p["student"], p["teacher"]
        assert s.input_ids[s.caption_start:] == t.input_ids[t.caption_start:]
        firsts.setdefault(tuple(t.input_ids), 0)
        firsts[tuple(t.input_ids)] += 1
    assert max(firsts.values()) > 1


def test_student_trains_on_windows(tmp_path):
    from aligncap_core.train import stages
    from aligncap_core.train.config import StudentConfig, TeacherConfig
    from tests.helpers.training import quick

    corpus = make_corpus(tmp_path / "corpus")
    teacher = stages.train_teacher(corpus, tmp_path / "t", TeacherConfig(
        preset="micro", train=quick(max_steps=2, eval_every=0)), show_progress=False)
    best = stages.train_student(corpus, teacher, tmp_path / "s", StudentConfig(
        train=quick(max_steps=2, eval_every=2, max_len=45)), show_progress=False)
    meta = json.loads((best / "meta.json").read_text())
    assert meta["step"] == 2 and np.isfinite(meta["metrics"]["valid/loss"])


def test_captioner_reads_a_long_clip_window_by_window(tmp_path):
    """A 6 s clip at 2 codebooks is ~900 audio tokens; the micro model holds 256 positions.
    Every window is captioned and the caption with the highest mean log-probability is kept."""
    import torch

    from aligncap_core.inference.captioner import Captioner
    from aligncap_core.model.generate import GenerationSettings
    from aligncap_core.train import stages
    from aligncap_core.train.config import StudentConfig, TeacherConfig
    from tests.helpers.audio_corpus import coded_corpus
    from tests.helpers.training import quick

    corpus = coded_corpus(tmp_path / "data")
    teacher = stages.train_teacher(corpus, tmp_path / "t", TeacherConfig(
        preset="micro", train=quick(max_steps=2, eval_every=0)), show_progress=False)
    student = stages.train_student(corpus, teacher, tmp_path / "s", StudentConfig(
        train=quick(max_steps=2, eval_every=0)), show_progress=False)
    cap = Captioner.load(student, device="cpu")
    rng = np.random.default_rng(0)
    long_codes = rng.integers(0, 16, size=(2, 450))  # 6 s of frames
    short_codes = rng.integers(0, 16, size=(2, 20))
    s = GenerationSettings(max_new_tokens=12)
    windows = cap.prompt_windows(long_codes, s.max_new_tokens)
    assert len(windows) >= 4 and all(len(w) <= cap.max_len - 12 for w in windows)
    assert len(cap.prompt_windows(short_codes, s.max_new_tokens)) == 1
    from aligncap_core.inference.consistent import DecodingSettings

    greedy = DecodingSettings(strategy="greedy")
    captions, _ = cap.decode([short_codes, long_codes], s, greedy)
    # what each window alone would be captioned, and how sure the model is of it
    from aligncap_core.model.generate import generate_captions
    from aligncap_core.prefs.candidates import audio_token_ids_of

    texts = generate_captions(cap.model, cap.tokenizer, windows, s,
                              suppress_token_ids=audio_token_ids_of(cap.tokenizer))
    scores = cap.caption_logprob(windows, texts)
    assert captions[1] == texts[int(torch.tensor(scores).argmax())]
    assert captions[0] == cap.decode([short_codes], s, greedy)[0][0]
    # the default (attribute-consistent) decoding decides per window too, then the same pick
    texts, decisions = cap.decode([long_codes, short_codes], s)
    assert len(texts) == len(decisions) == 2 and all(isinstance(t, str) for t in texts)


def test_windows_keep_the_prosody_stream_after_the_audio():
    """The student's prompt may end with a second stream (`<prosody> ... </prosody>` after
    `</audio>`, codec/prosody.py): each window carries its own span of both, in that order,
    right before the caption."""
    from aligncap_core.codec.prosody import prosody_vocab
    from aligncap_core.model.base import add_audio_tokens

    model, tok, _ = micro_model_with_audio()
    add_audio_tokens(model, tok, prosody_vocab())
    cap = "She whispers softly."
    audio, prosody = _audio(60), _prosody(10)
    exs = encode_student_windows(tok, "Describe.", audio + prosody, cap, max_len=60)
    assert len(exs) > 1
    seen_a, seen_p = [], []
    for e in exs:
        toks = tok.convert_ids_to_tokens(e.input_ids[:e.caption_start])
        i, j = toks.index(AUDIO_OPEN), toks.index("<prosody>")
        assert toks[j - 1] == AUDIO_CLOSE and toks[-1] == "</prosody>" and i < j
        seen_a += toks[i + 1:j - 1]
        seen_p += toks[j + 1:-1]
    assert seen_a == audio[1:-1] and seen_p == prosody[1:-1]


def test_every_window_repeats_the_clip_level_voice_token():
    """The voice token (`<pv{k}>`, the clip's formant spacing) says something about the whole
    clip, so each window of a long clip carries it at the head of its prosody span."""
    tokens = _audio(300) + ["<prosody>", "<pv5>"] + _prosody(50)[1:]
    windows = speech_windows(tokens, 200)
    assert len(windows) > 1 and all(len(w) <= 200 for w in windows)
    hops = []
    for w in windows:
        j = w.index("<prosody>")
        assert w[j + 1] == "<pv5>" and w[j + 2].startswith("<pf")
        hops += w[j + 2:-1]
    assert hops == _prosody(50)[1:-1]  # every hop once, in order, none split
