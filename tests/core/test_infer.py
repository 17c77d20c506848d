"""Inference: self-contained student checkpoints, captioning raw audio, evaluation + KL gap.

The tone corpus of tests/helpers/audio_corpus.py (real WAVs tokenized with a tiny calibrated
EnCodec), on which the real teacher and student stages train, so `train_student` attaches that
codec to the checkpoint exactly as in a real run.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from aligncap_core.errors import ConfigError, DataError
from aligncap_core.eval.metrics import report_keys
from aligncap_core.inference.captioner import Captioner
from aligncap_core.inference.evaluate import evaluate_checkpoint
from aligncap_core.model.generate import GenerationSettings
from aligncap_core.train import stages
from aligncap_core.train.config import StudentConfig, TeacherConfig
from aligncap_core.utils import read_jsonl
from tests.helpers import audio_corpus
from tests.helpers.audio_corpus import SR, raw_corpus, tone
from tests.helpers.training import EMOTIONS, quick

corpus = audio_corpus.corpus  # module-scoped fixture



@pytest.fixture(scope="module")
def student(corpus, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs")
    teacher = stages.train_teacher(corpus, out / "teacher",
                                   TeacherConfig(preset="micro", train=quick(max_steps=20)),
                                   show_progress=False)
    return stages.train_student(corpus, teacher, out / "student",
                                StudentConfig(train=quick(max_steps=6, eval_every=0)),
                                show_progress=False)


@pytest.fixture(scope="module")
def captioner(student) -> Captioner:
    return Captioner.load(student, device="cpu")


def test_student_checkpoint_carries_its_codec(student, corpus):
    meta = json.loads((student / "meta.json").read_text())
    speech = meta["speech"]
    assert speech["codec"] == "codec" and speech["n_q"] == 2 and speech["keep_q"] is None
    assert speech["instruction"] == StudentConfig().instruction
    saved = json.loads((student / "codec" / "codec.json").read_text())
    assert saved["fingerprint"] == speech["codec_fingerprint"] == read_jsonl(
        corpus / "manifest.jsonl")[0]["codes"]["codec"]


def test_caption_files_any_rate_and_channels(captioner, tmp_path):
    rng = np.random.default_rng(1)
    paths = []
    for name, sr, stereo, fmt in (("a.wav", 16000, False, "WAV"), ("b.wav", 44100, True, "WAV"),
                                  ("c.flac", 24000, False, "FLAC"), ("d.wav", 22050, True, "WAV")):
        x = tone(list(EMOTIONS)[len(paths) % 3], rng, sr)
        sf.write(tmp_path / name, np.stack([x, 0.5 * x], 1) if stereo else x, sr, format=fmt)
        paths.append(tmp_path / name)
    s = GenerationSettings(max_new_tokens=12, batch_size=4)
    caps = captioner.caption_files(paths, s)
    assert len(caps) == 4 and all(isinstance(c, str) and c for c in caps)
    codes = captioner.encode_files(paths)
    assert [c.codes.shape[0] for c in codes] == [2] * 4
    assert [captioner.caption_codes([c], s)[0] for c in codes] == caps  # batched == alone
    beams = captioner.caption_codes(codes[:2], GenerationSettings(max_new_tokens=12, num_beams=2))
    assert len(beams) == 2


def test_missing_or_unreadable_audio_names_the_file(captioner, tmp_path):
    with pytest.raises(DataError, match="nope.wav: audio file not found"):
        captioner.caption_files([tmp_path / "nope.wav"])
    bad = tmp_path / "bad.wav"
    bad.write_bytes(b"not audio at all")
    with pytest.raises(DataError, match="bad.wav: cannot decode"):
        captioner.caption_files([bad])


def test_cli_caption(student, tmp_path):
    from typer.testing import CliRunner

    from aligncap_core.cli import app

    sf.write(tmp_path / "x.wav", tone("sad", np.random.default_rng(2)), SR)
    res = CliRunner().invoke(app, ["caption", str(tmp_path / "x.wav"), "--model", str(student),
                                   "--max-new-tokens", "8", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    path, caption = res.stdout.strip().split("\t")
    assert path == str(tmp_path / "x.wav") and caption
    assert "note:" not in res.stderr and "(0 with attributes withheld" in res.stderr
    assert "0 skipped" in " ".join(res.stderr.split())  # the summary's figures are filled in
    # a clip far quieter than the training audio: the caption leaves volume and emotion out, and
    # the CLI says so with the reason (the level check), unless it is turned off
    sf.write(tmp_path / "q.wav", 1e-3 * tone("sad", np.random.default_rng(2)), SR)
    res = CliRunner().invoke(app, ["caption", str(tmp_path / "q.wav"), "--model", str(student),
                                   "--max-new-tokens", "8", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert f"note: {tmp_path / 'q.wav'}: the clip's level" in res.stderr
    assert "quieter than the training audio" in res.stderr and "(1 with attributes withheld" in res.stderr
    res = CliRunner().invoke(app, ["caption", str(tmp_path / "q.wav"), "--model", str(student),
                                   "--max-new-tokens", "8", "--device", "cpu", "--no-level-check"])
    assert res.exit_code == 0 and "the clip's level" not in res.stderr
    # the 16-bit file's noise floor spreads past the training audio's band edge: still a
    # recording unlike it (`--no-ood-checks` turns those checks off too)
    res = CliRunner().invoke(app, ["caption", str(tmp_path / "q.wav"), "--model", str(student),
                                   "--max-new-tokens", "8", "--device", "cpu", "--no-level-check",
                                   "--no-ood-checks"])
    assert res.exit_code == 0 and "note:" not in res.stderr
    res = CliRunner().invoke(app, ["caption", str(tmp_path / "missing.wav"), "--model", str(student),
                                   "--device", "cpu"])
    assert res.exit_code == 1 and "missing.wav" in res.stderr and "audio file not found" in res.stderr


def test_checkpoint_without_codec_needs_codec_dir(student, corpus, tmp_path):
    old = shutil.copytree(student, tmp_path / "old")
    shutil.rmtree(old / "codec")
    meta = json.loads((old / "meta.json").read_text())
    del meta["speech"]
    (old / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="--codec-dir"):
        Captioner.load(old, device="cpu")
    cap = Captioner.load(old, device="cpu", codec_dir=corpus / "codec")
    assert cap.codec.fingerprint == json.loads((student / "meta.json").read_text())["speech"]["codec_fingerprint"]


def test_evaluate_prepared_dir(student, corpus, tmp_path):
    before = (corpus / "manifest.jsonl").read_bytes()
    out = tmp_path / "eval" / "report.json"
    report = evaluate_checkpoint(student, corpus, out, settings=GenerationSettings(max_new_tokens=12),
                                 batch_size=4, meteor=False, show_progress=False)
    assert (corpus / "manifest.jsonl").read_bytes() == before  # the caller's data is untouched
    saved = json.loads(out.read_text())
    assert set(saved["metrics"]) == {"valid", "all"} and saved["data"]["evaluated_from"] == str(corpus)
    for split in ("valid", "all"):
        m = saved["metrics"][split]
        assert list(m) == report_keys()  # the metric registry is what a report holds
        assert m["n"] == 8 and m["kl_gap"] is not None and m["kl_gap"] >= 0 and m["kl_tokens"] > 0
    preds = read_jsonl(out.parent / "predictions.jsonl")
    assert len(preds) == 8 and {p["split"] for p in preds} == {"valid"}
    # the default decoding is attribute-consistent: each prediction says why it was chosen
    assert saved["decoding"]["strategy"] == "consistent"
    assert set(preds[0]) == {"id", "split", "prediction", "references", "attributes", "decision"}
    assert set(preds[0]["decision"]) == {"index", "utility", "agreement", "omitted", "withheld", "told",
                                          "struck", "unsure"}
    assert report["metrics"]["valid"]["bleu1"] == saved["metrics"]["valid"]["bleu1"]
    assert saved["dtype"] == "fp32"  # auto: fp32 under the suite's ALIGNCAP_CPU_BF16=0


def test_captioner_in_bf16_decodes_through_the_same_path(student, corpus, captioner):
    """dtype bf16 (what auto picks on a CPU with fast bf16 units): the whole LM in bf16, every
    caption through `decode` (greedy and consistent), scores within bf16 rounding of fp32's."""
    import torch

    from aligncap_core.codec import load_codes
    from aligncap_core.inference.consistent import DecodingSettings

    cap16 = Captioner.load(student, device="cpu", dtype="bf16")
    assert {p.dtype for p in cap16.model.parameters()} == {torch.bfloat16}
    assert (cap16.dtype_name, captioner.dtype_name) == ("bf16", "fp32")
    codes = [load_codes(corpus, r) for r in read_jsonl(corpus / "manifest.jsonl")[:6]]
    gen = GenerationSettings(max_new_tokens=12)
    greedy32 = captioner.caption_codes(codes, gen, DecodingSettings(strategy="greedy"))
    greedy16 = cap16.caption_codes(codes, gen, DecodingSettings(strategy="greedy"))
    assert len(greedy16) == 6 and all(greedy16)
    prompts = [captioner.prompt_windows(c, 12)[0] for c in codes]
    lp32 = captioner.caption_logprob(prompts, greedy32)
    lp16 = cap16.caption_logprob(prompts, greedy32)  # fp32's captions, scored in bf16
    assert max(abs(a - b) for a, b in zip(lp32, lp16, strict=True)) < 0.05, (lp32, lp16)
    caps, why = cap16.decode(codes, gen, DecodingSettings(samples=4, seed=3))
    assert len(caps) == 6 and all(w is not None for w in why)


def test_captioner_folds_the_adapter_into_the_weights(student, corpus, captioner):
    """Loaded to caption, the student's LoRA adapter is merged into its weights (fewer ops per
    token); the captions are those of the PeftModel as saved."""
    from peft import PeftModel

    from aligncap_core.codec import load_codes
    from aligncap_core.inference.consistent import DecodingSettings

    kept = Captioner.load(student, device="cpu", merge_adapters=False)
    assert isinstance(kept.model, PeftModel) and not isinstance(captioner.model, PeftModel)
    assert not any("lora_" in n for n, _ in captioner.model.named_parameters())
    codes = [load_codes(corpus, r) for r in read_jsonl(corpus / "manifest.jsonl")[:8]]
    gen, greedy = GenerationSettings(max_new_tokens=12), DecodingSettings(strategy="greedy")
    assert captioner.caption_codes(codes, gen, greedy) == kept.caption_codes(codes, gen, greedy)


def test_consistent_decoding_picks_among_greedy_and_samples(captioner, corpus):
    from aligncap_core.codec import load_codes
    from aligncap_core.inference.consistent import DecodingSettings

    codes = [load_codes(corpus, r) for r in read_jsonl(corpus / "manifest.jsonl")[:6]]
    gen = GenerationSettings(max_new_tokens=12)
    greedy = captioner.caption_codes(codes, gen, DecodingSettings(strategy="greedy"))
    d = DecodingSettings(samples=4, seed=3)
    caps, why = captioner.decode(codes, gen, d)
    assert len(caps) == 6 and all(w is not None for w in why)
    assert caps == captioner.decode(codes, gen, d)[0]  # same seed, same captions
    for c, g, w in zip(caps, greedy, why, strict=True):
        assert 0 <= w.index <= 4 and (w.index != 0 or c == g)  # index 0 is the greedy caption


def test_evaluate_raw_manifest_prepares_tokenizes_and_adds_clues(student, tmp_path):
    raw = raw_corpus(tmp_path / "raw", n=6, n_valid=3)
    out = tmp_path / "rep" / "report.json"
    report = evaluate_checkpoint(student, raw / "manifest.jsonl", out, splits=["train", "valid"],
                                 limit=2, settings=GenerationSettings(max_new_tokens=8),
                                 batch_size=4, meteor=False, show_progress=False)
    m = report["metrics"]
    assert set(m) == {"train", "valid", "all"} and m["all"]["n"] == 4
    assert m["all"]["kl_gap"] >= 0 and m["all"]["kl_tokens"] == m["train"]["kl_tokens"] + m["valid"]["kl_tokens"]
    clips = read_jsonl(out.with_suffix(".data") / "clips" / "manifest.jsonl")
    assert all(r["p_act"] and r["codes"]["codec"] == report["codec"] for r in clips)
    with pytest.raises(DataError, match="test"):
        evaluate_checkpoint(student, raw / "manifest.jsonl", out, splits=["test"], meteor=False,
                            kl_gap=False, show_progress=False)


def test_evaluations_sharing_a_codes_cache_encode_each_clip_once(student, tmp_path, monkeypatch):
    from aligncap_core.codec import EncodecTokenizer

    raw = raw_corpus(tmp_path / "raw", n=4, n_valid=2)
    encoded: list[int] = []
    real = EncodecTokenizer.encode
    monkeypatch.setattr(EncodecTokenizer, "encode",
                        lambda self, wavs, *a, **k: encoded.append(len(wavs)) or real(self, wavs, *a, **k))
    reports = [evaluate_checkpoint(student, raw / "manifest.jsonl", tmp_path / f"stage{i}" / "report.json",
                                   settings=GenerationSettings(max_new_tokens=4), kl_gap=False,
                                   meteor=False, codes_cache=tmp_path / "codes", show_progress=False)
               for i in range(2)]
    assert sum(encoded) == reports[0]["metrics"]["all"]["n"] == 2 and len(encoded) == 1  # 2nd: cached
    assert reports[0]["metrics"]["all"]["bleu1"] == reports[1]["metrics"]["all"]["bleu1"]


def test_dpo_checkpoint_inherits_the_policys_speech_settings(student, tmp_path):
    from aligncap_core.inference.speech import resolve_speech

    dpo = tmp_path / "dpo"
    dpo.mkdir()
    (dpo / "meta.json").write_text(json.dumps({"stage": "dpo", "step": 1}))
    (dpo / "config.yaml").write_text(f"policy: {student}\n")
    s = resolve_speech(dpo)
    assert s.codec == str(student / "codec") and s.n_q == 2


def _check_level_check(cap: Captioner, corpus: Path, speech: dict, caplog) -> None:
    """The checkpoint records its training audio's level range; a clip 60 dB under it gets no
    volume or emotion in its caption (greedy or consistent), with the reason; a training clip,
    or the check turned off, gets none withheld."""
    from aligncap_core.inference.captioner import read_clip
    from aligncap_core.inference.consistent import DecodingSettings
    from aligncap_core.inference.domain import training_ranges
    from aligncap_core.train.data import read_rows

    train = read_rows(corpus, "train")
    assert (speech["level_range"], speech["band_range"]) == training_ranges(corpus, train)
    wav = read_clip(corpus / train[0]["audio"], cap.codec.sample_rate)
    quiet, inside = cap.encode_waves([wav * 1e-3, wav])
    gen = GenerationSettings(max_new_tokens=12)
    for strategy in ("greedy", "consistent"):
        texts, why = cap.decode([quiet, inside], gen, DecodingSettings(strategy=strategy, samples=2))
        assert why[0].withheld["attributes"][:2] == ["volume", "emotion"]
        assert "quieter than the training audio" in why[0].withheld["reason"]
        # a clip unlike the training audio also gets the pitch check (ood_checks, on by default)
        assert set(why[0].withheld["attributes"]) <= {"volume", "emotion", "pitch"}
        assert ("pitch" in why[0].withheld["attributes"]) == ("pitch" in why[0].withheld["checks"])
        assert not {"volume", "emotion"} & set(cap.parser.parse(texts[0]).attributes)
        assert why[1] is None or why[1].withheld is None
    _, why = cap.decode([quiet], gen, DecodingSettings(samples=2, level_check=False))
    assert why[0].withheld is None
    # the decoding without the withheld words (greedy: the withheld clip is captioned that way
    # only) can be kept from repeating its own token trigrams (retry_ngram 3; 0, the default,
    # is no rule); free captions never are
    import aligncap_core.inference.captioner as C

    seen, real = [], C.generate_captions

    def spy(model, tok, ps, g, suppress_token_ids=(), **kw):
        seen.append((len(suppress_token_ids), g.no_repeat_ngram_size))
        return real(model, tok, ps, g, suppress_token_ids=suppress_token_ids, **kw)

    C.generate_captions = spy
    try:
        cap.decode([quiet, inside], gen, DecodingSettings(strategy="greedy", retry_ngram=3))
        free = min(n for n, _ in seen)
        assert {k for n, k in seen if n == free} == {0} and {k for n, k in seen if n > free} == {3}
        seen.clear()
        cap.decode([quiet], gen, DecodingSettings(strategy="greedy"))
        assert seen and {k for _, k in seen} == {0} and all(n > free for n, _ in seen)
    finally:
        C.generate_captions = real
    # the toy corpus has no gender: no voice boundary, and asking for the voice check says so
    assert speech["voice_boundary"] is None and quiet.spacing_hz is None
    with caplog.at_level(logging.WARNING):
        cap.decode([inside], gen, DecodingSettings(samples=2, voice_check=True))
    assert "records no voice boundary" in caplog.text and "no caption is checked" in caplog.text
    # with a boundary, captioning measures each clip's formant spacing and checks its caption's
    # gender against it: a 1,000 Hz tract reads male, so a caption saying female is withheld
    import dataclasses

    from tests.helpers.audio_corpus import vowel

    # the band range of the toy corpus is left out until the block on recordings unlike the
    # training audio below (its clips are not the vowel's recording chain)
    trained_band = cap.speech.band_range
    cap.speech = dataclasses.replace(cap.speech, voice_boundary={"threshold_hz": 1080.0,
                                                                 "train_accuracy": 0.9, "clips": 100},
                                     band_range=None)
    try:
        on = DecodingSettings(samples=2, voice_check=True, level_check=False)  # the vowel is louder
        wave = vowel(220.0, 1000.0, sr=cap.codec.sample_rate)
        off = DecodingSettings(samples=2, voice_check=False, ood_checks=False)
        assert cap.encode_waves([wave], off)[0].spacing_hz is None  # the checks off: not measured
        [man] = cap.encode_waves([wave], on)
        assert man.spacing_hz == pytest.approx(1000.0, rel=0.05) and man.band_hz is None
        [check], [told] = cap.clip_checks([man], on)
        assert told is None  # a recording like the training audio: the tract only vetoes
        assert check({"gender": "male"}) is None and "reads male" in check({"gender": "female"}).reason
        assert check({"gender": "male", "pitch": "high"}) is None  # the pitch check is off
        assert cap.clip_checks([man], off) == ([None], [None])  # turned off
        # on by default (the level check aside, as this vowel is louder than the training audio)
        default = DecodingSettings(samples=2, level_check=False)
        assert "reads male" in cap.clip_checks([man], default)[0][0]({"gender": "female"}).reason
        # a margin the clip is inside (1,000 Hz is 7.7% below 1,080) leaves it unchecked
        wide = dataclasses.replace(default, voice_margin=0.1)
        assert cap.clip_checks([man], wide) == ([None], [None])
        narrow = dataclasses.replace(default, voice_margin=0.05)
        assert "margin 5%" in cap.clip_checks([man], narrow)[0][0]({"gender": "female"}).reason
        # a clip outside the training audio's level range (this vowel is louder) is a recording
        # unlike the training audio: by default it gets the pitch check, and its caption states
        # the gender its tract reads instead of the voice check's veto
        from aligncap_core.inference.domain import level_verdict

        [loud] = cap.encode_waves([wave])
        assert level_verdict(loud.level_db, cap.speech.level_range, 3.0) is not None
        assert loud.spacing_hz == pytest.approx(1000.0, rel=0.05) and loud.f0_hz == pytest.approx(220.0, rel=0.05)
        [check], [told] = cap.clip_checks([loud])
        assert told.attributes == {"gender": "male"} and "is outside the training audio's" in told.reason
        assert check({"gender": "female", "pitch": "high"}).checks == ("pitch",)
        assert cap.clip_checks([loud], DecodingSettings(samples=2, ood_gender=False))[0][0](
            {"gender": "female", "pitch": "high"}).checks == ("voice", "pitch")
        assert cap.clip_checks([loud], off) == ([None], [None])
        for strategy in ("greedy", "consistent"):
            texts, why = cap.decode([loud], gen, DecodingSettings(samples=2, strategy=strategy))
            said = cap.parser.parse(texts[0]).attributes
            assert why[0].told["attributes"] == {"gender": "male"}
            # stated as told (decoded, or put into the caption's subject), or said not to be
            assert said.get("gender") == "male" or why[0].told["missing"] == ["gender"]
            if "put" in why[0].told:  # put into the model's subject: "the male speaker", "a man"
                assert re.search(r"\b(male speaker|man)\b", texts[0], re.IGNORECASE)
        # the pitch check: the clip's F0 is measured, and "high" for a 220 Hz woman is withheld
        both = dataclasses.replace(on, pitch_check=True)
        assert man.f0_hz is None
        [clip] = cap.encode_waves([wave], both)
        assert clip.f0_hz == pytest.approx(220.0, rel=0.05)
        [check], _ = cap.clip_checks([clip], both)
        w = check({"gender": "female", "pitch": "high"})
        assert w.checks == ("voice", "pitch") and w.attributes == ("gender", "pitch")
        assert check({"gender": "male", "pitch": "high"}) is None  # high for a man at 220 Hz
        for strategy in ("greedy", "consistent"):
            texts, why = cap.decode([man], gen, dataclasses.replace(on, strategy=strategy))
            said = cap.parser.parse(texts[0]).attributes.get("gender")
            assert said in (None, "male")
            assert why[0] is None or why[0].withheld is None or why[0].withheld["checks"] == ["voice"]
            texts, why = cap.decode([clip], gen, dataclasses.replace(both, strategy=strategy))
            said = cap.parser.parse(texts[0]).attributes
            assert said.get("gender") in (None, "male")
            if said.get("pitch"):  # a stated pitch passed the check
                assert check({"gender": said.get("gender"), "pitch": said["pitch"]}) is None
        # the band edge: the toy corpus' clips record theirs; a clip recorded through another
        # chain (here: the vowel, level-matched) is unlike the training audio, and says why
        assert trained_band is not None and trained_band[0] <= trained_band[1]
        cap.speech = dataclasses.replace(cap.speech, band_range=[trained_band[0], trained_band[1]])
        from aligncap_core.inference.domain import clip_band_hz, clip_level_db

        lo, hi = cap.speech.level_range
        quiet = wave * 10 ** (((lo + hi) / 2 - clip_level_db(wave, cap.codec.sample_rate)) / 20)
        [inside] = cap.encode_waves([quiet])
        assert inside.band_hz == pytest.approx(clip_band_hz(quiet, cap.codec.sample_rate))
        assert level_verdict(inside.level_db, cap.speech.level_range, 3.0) is None
        why = cap.unlike(inside.level_db, None, inside.band_hz)
        outside = not trained_band[0] - 500 <= inside.band_hz <= trained_band[1] + 500
        assert (why is not None) == outside and (why is None or "its spectrum ends at" in why)
        cap.speech = dataclasses.replace(cap.speech, band_range=[inside.band_hz + 2000, inside.band_hz + 2500])
        assert "its spectrum ends at" in cap.unlike(inside.level_db, None, inside.band_hz)
        assert cap.clip_checks([inside])[1][0].attributes == {"gender": "male"}
        # ... and its emotion is not stated (ood_emotion), with the reason
        [w] = cap.withheld([inside])
        assert w.attributes == ("emotion",) and w.checks == ("unlike",) and "its spectrum ends at" in w.reason
        assert cap.withheld([inside], DecodingSettings(ood_emotion=False)) == [None]
        for strategy in ("greedy", "consistent"):
            texts, why = cap.decode([inside], gen, DecodingSettings(samples=2, strategy=strategy))
            assert why[0].withheld["checks"][0] == "unlike" and why[0].told is not None
            assert "emotion" not in cap.parser.parse(texts[0]).attributes or \
                "emotion" in why[0].withheld.get("stated", [])
        assert cap.unlike(inside.level_db, DecodingSettings(ood_checks=False), inside.band_hz) is None
    finally:
        cap.speech = dataclasses.replace(cap.speech, voice_boundary=None, band_range=trained_band)


def test_student_reading_the_prosody_stream_captions_audio(corpus, tmp_path, caplog):
    """A student trained with a prosody stream (here with the voice token and the silence trim)
    reads `<prosody> ... </prosody>` after its codes; its checkpoint records the stream's
    settings, and captioning audio computes the same stream training read."""
    from aligncap_core.codec import load_codes
    from aligncap_core.inference.captioner import Speech
    from aligncap_core.train.data import row_streams

    teacher = stages.train_teacher(corpus, tmp_path / "t", TeacherConfig(preset="micro", train=quick(max_steps=4)),
                                   show_progress=False)
    settings = {"voice_bins": 16, "trim_db": 35.0}
    ckpt = stages.train_student(corpus, teacher, tmp_path / "s",
                                StudentConfig(prosody=settings, train=quick(max_steps=4, eval_every=0)),
                                show_progress=False)
    speech = json.loads((ckpt / "meta.json").read_text())["speech"]
    assert speech["prosody"]["hop_s"] == 0.08 and speech["prosody"]["voice_bins"] == 16
    assert speech["prosody"]["trim_db"] == 35.0
    cap = Captioner.load(ckpt, device="cpu")
    rows = read_jsonl(corpus / "manifest.jsonl")[:2]
    [clip] = cap.encode_files([corpus / rows[0]["audio"]])
    assert isinstance(clip, Speech) and clip.prosody[0] == "<prosody>" and clip.prosody[1].startswith("<pv")
    codes, stream = row_streams(corpus, rows[0], cap.prosody)
    assert clip.prosody == stream and clip.codes.shape == codes.shape  # what training read
    (ids,) = cap.prompt_windows(clip, 8)
    vocab = cap.tokenizer.get_vocab()
    assert ids[-len(clip.prosody):] == [vocab[t] for t in clip.prosody]  # the stream ends the prompt
    assert len(cap.caption_files([corpus / r["audio"] for r in rows],
                                 GenerationSettings(max_new_tokens=6))) == 2
    _check_level_check(cap, corpus, speech, caplog)
    with pytest.raises(ConfigError, match="prosody stream"):
        cap.prompt_windows(load_codes(corpus, rows[0]), 8)  # bare codes cannot feed this student
    # a preference round's checkpoint reads what its policy read: the stream is not dropped
    # (it was: round policies then captioned from the codes alone, and the next round sampled so)
    from aligncap_core.improve.policy import inherit_student_settings, policy_prompt

    dpo = tmp_path / "dpo"
    (dpo / "adapters").mkdir(parents=True)
    (dpo / "meta.json").write_text(json.dumps({"stage": "dpo", "step": 1}))
    (dpo / "config.yaml").write_text(f"policy: {ckpt}\n")
    inherit_student_settings(ckpt, dpo, corpus)
    assert json.loads((dpo / "meta.json").read_text())["speech"]["prosody"] == speech["prosody"]
    assert json.loads((dpo / "meta.json").read_text())["speech"]["level_range"] == speech["level_range"]
    assert json.loads((dpo / "meta.json").read_text())["speech"]["voice_boundary"] == speech["voice_boundary"]
    assert policy_prompt(dpo).prosody == speech["prosody"]
    meta = json.loads((dpo / "meta.json").read_text())
    meta["speech"]["prosody"] = None  # such a round checkpoint is refused, not read without it
    (dpo / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="prosody stream"):
        Captioner.load(dpo, device="cpu")
