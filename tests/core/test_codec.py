"""Speech tokens: batch invariance, caching/resume, calibrated codec reproducibility, layout."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from aligncap_core.codec import (
    EncodecTokenizer,
    audio_token_vocab,
    codes_to_tokens,
    load_codes,
    probe_dataset,
    tokenize_dataset,
    tokens_to_codes,
)
from aligncap_core.errors import DataError
from aligncap_core.utils import read_jsonl, write_jsonl
from tests.helpers.audio_corpus import vowel


def _clip(rng: np.random.Generator, kind: int, sr: int, dur: float, level: float) -> np.ndarray:
    t = np.arange(int(sr * dur)) / sr
    f0 = rng.uniform(100, 400)
    if kind == 0:
        x = np.sin(2 * np.pi * f0 * t)
    elif kind == 1:  # chirp
        x = np.sin(2 * np.pi * (f0 * t + 300 * t**2))
    else:
        x = rng.standard_normal(len(t))
    return (level * x).astype(np.float32)


def make_dataset(root: Path, n: int = 24, seed: int = 0) -> Path:
    """Sines/chirps/noise at two levels; mixed 22,050 / 24,000 Hz files (so resampling runs)."""
    rng = np.random.default_rng(seed)
    (root / "audio").mkdir(parents=True)
    rows = []
    for i in range(n):
        sr = 22050 if i % 2 else 24000
        loud = i % 3 == 0
        wav = _clip(rng, i % 3, sr, rng.uniform(0.6, 1.8), 0.5 if loud else 0.05)
        sf.write(root / "audio" / f"c{i:03d}.wav", wav, sr)
        rows.append({
            "id": f"c{i:03d}", "audio": f"audio/c{i:03d}.wav", "split": "valid" if i % 4 == 3 else "train",
            "attributes": {"volume": "loud" if loud else "soft"}, "extra": i,
        })
    write_jsonl(root / "manifest.jsonl", rows)
    return root


@pytest.fixture(scope="module")
def tokenized(tmp_path_factory) -> tuple[Path, dict]:
    d = make_dataset(tmp_path_factory.mktemp("codec") / "data")
    return d, tokenize_dataset(d, n_q=2, batch_size=4, shard_size=8, progress=False)


def _copy(src: Path, dst: Path, with_codes: bool) -> Path:
    shutil.copytree(src, dst, ignore=None if with_codes else shutil.ignore_patterns("codes"))
    if not with_codes:  # back to an untokenized manifest
        rows = read_jsonl(dst / "manifest.jsonl")
        write_jsonl(dst / "manifest.jsonl", [{k: v for k, v in r.items() if k not in ("codes", "n_frames")} for r in rows])
    return dst


def test_tokenize_summary_and_manifest(tokenized):
    d, s = tokenized
    assert s["n"] == 24 and s["encoded"] == 24 and s["cached"] == 0 and s["n_q"] == 2
    assert s["encoded_during_calibration"] == 18  # train clips: quantized from calibration latents
    rows = read_jsonl(d / "manifest.jsonl")
    for r in rows:
        c = load_codes(d, r)
        n = math.ceil(sf.info(str(d / r["audio"])).duration * 75 - 1e-6)
        assert c.shape == (2, r["n_frames"]) and abs(r["n_frames"] - n) <= 1
        assert r["codes"]["codec"] == s["codec"] and r["extra"] == int(r["id"][1:])  # unknown keys kept
    cfg = json.loads((d / "codec" / "codec.json").read_text())
    assert cfg["n_q"] == 2 and cfg["bandwidth_kbps"] == 1.5 and cfg["seed"] == 0
    assert cfg["fingerprint"] == s["codec"] and cfg["calibration"]["data_fingerprint"]


def test_cached_rerun_encodes_nothing(tokenized, monkeypatch):
    d, s = tokenized
    calls = []
    monkeypatch.setattr(EncodecTokenizer, "encode", lambda self, *a, **k: calls.append(1))
    s2 = tokenize_dataset(d, n_q=2, batch_size=4, progress=False)
    assert s2["encoded"] == 0 and s2["cached"] == 24 and s2["codec"] == s["codec"] and not calls


def test_same_codes_alone_and_in_padded_batch(tokenized):
    d, _ = tokenized
    tok = EncodecTokenizer.from_pretrained(d / "codec")
    rng = np.random.default_rng(1)
    # lengths around hop (320) and frame boundaries, incl. clips shorter than MIN_FRAMES
    lengths = [100, 319, 320, 321, 2561, 7000, 12345, 24000, 24001]
    wavs = [_clip(rng, i % 3, 24000, n / 24000, 0.3) for i, n in enumerate(lengths)]
    alone = [tok.encode([w])[0] for w in wavs]
    batched = tok.encode(wavs, batch_size=len(wavs))  # one batch padded to the longest
    bucketed = tok.encode(wavs[::-1], batch_size=3)[::-1]
    for n, a, b, c in zip(lengths, alone, batched, bucketed, strict=True):
        assert a.shape == (2, math.ceil(n * 75 / 24000))
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)


def test_lone_clip_on_the_idle_cpus_gets_the_one_thread_codes(tokenized, monkeypatch):
    """`encode` of one clip runs its ops on the CPUs no other clip uses (an idle machine): the
    codes are those of the one-thread path the corpus was encoded with."""
    from aligncap_core.codec import tokenizer as codec_tokenizer

    d, _ = tokenized
    tok = EncodecTokenizer.from_pretrained(d / "codec")
    seen: list[int] = []
    monkeypatch.setattr(codec_tokenizer, "threads_for_load", lambda n, current=1: n)  # idle
    monkeypatch.setattr(codec_tokenizer, "usable_cpus", lambda: 2)
    real = tok._encode_batch
    monkeypatch.setattr(tok, "_encode_batch", lambda b: seen.append(torch.get_num_threads()) or real(b))
    rng = np.random.default_rng(4)
    wavs = [_clip(rng, i % 3, 24000, s, 0.3) for i, s in enumerate((0.4, 1.0, 2.2))]
    alone = [tok.encode([w])[0] for w in wavs]
    assert seen == [2, 2, 2]
    with codec_tokenizer.torch_threads(1):
        for w, a in zip(wavs, alone, strict=True):
            np.testing.assert_array_equal(a, real([w])[0])
    seen.clear()
    tok.encode(wavs, num_threads=2)  # as many clips as CPUs: one intra-op thread each
    assert seen == [1, 1, 1]


def test_threads_for_load_follows_cpu_pressure(monkeypatch):
    from aligncap_core.train import threads

    for psi, current, want in ((80.0, 2, 1), (5.0, 1, 4), (25.0, 3, 3)):
        monkeypatch.setattr(threads, "cpu_pressure", lambda psi=psi: psi)
        assert threads.threads_for_load(4, current) == want
    assert threads.threads_for_load(1, 1) == 1


def test_calibrated_codec_reproducible_and_not_degenerate(tokenized):
    d, s = tokenized
    a, b = EncodecTokenizer.from_pretrained(d / "codec"), EncodecTokenizer.from_pretrained(d / "codec")
    assert a.fingerprint == b.fingerprint == s["codec"]
    rows = read_jsonl(d / "manifest.jsonl")
    from aligncap_core.codec import read_audio

    wavs = [read_audio(d / r["audio"], 24000) for r in rows[:6]]
    for c, r in zip(a.encode(wavs), rows[:6], strict=True):
        np.testing.assert_array_equal(c, load_codes(d, r))  # reloaded codec == codes in cache
    all_codes = np.concatenate([load_codes(d, r) for r in rows], axis=1)
    # codebook 1 uses fewer: with fewer training frames than codes, codebook 0 fits them exactly
    assert len(np.unique(all_codes[0])) > 200 and len(np.unique(all_codes[1])) > 20
    # contrast: the same architecture without calibration maps everything to code 0
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    raw = EncodecTokenizer(EncodecModel(EncodecConfig()), n_q=2).encode(wavs[:2])
    assert all((c == 0).all() for c in raw)


def _random_encodec(seed: int = 0):
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(seed)
    return EncodecModel(EncodecConfig()).eval()


def _frames(tok: EncodecTokenizer, wavs: list[np.ndarray]) -> torch.Tensor:
    return torch.cat([z.T for z in tok.latents(wavs)]).double()  # (frames, D)


def test_scale_input_is_a_gain_on_the_audio():
    from aligncap_core.codec.calibrate import scale_input

    rng = np.random.default_rng(1)
    wavs = [_clip(rng, k, 24000, 0.4, 0.05) for k in range(3)]
    plain, scaled = _random_encodec(), _random_encodec()
    scale_input(scaled, 1e4)
    a = _frames(EncodecTokenizer(plain, n_q=1), [w * np.float32(1e4) for w in wavs])
    b = _frames(EncodecTokenizer(scaled, n_q=1), wavs)
    assert torch.allclose(a, b, rtol=1e-4, atol=1e-4 * a.abs().max().item())
    # and the gain matters: the random encoder is not a linear map of the audio
    c = _frames(EncodecTokenizer(_random_encodec(), n_q=1), wavs)
    assert not torch.allclose(a / 1e4, c, rtol=1e-2, atol=1e-2 * c.abs().max().item())


def test_whiten_latents_gives_zero_mean_identity_covariance():
    from aligncap_core.codec.calibrate import whiten_latents

    rng = np.random.default_rng(2)
    wavs = [_clip(rng, k % 3, 24000, 1.0, 0.3) for k in range(8)]  # 600 frames > 128 dims
    tok = EncodecTokenizer(_random_encodec(), n_q=1)
    before = _frames(tok, wavs)
    info = whiten_latents(tok.model, tok.latents(wavs))
    after = _frames(tok, wavs)
    assert info["frames"] == len(before) == len(after)
    assert after.mean(0).abs().max() < 1e-3
    eig = torch.linalg.eigvalsh(torch.cov(after.T))
    assert abs(eig.max().item() - 1) < 1e-3 and eig.min() > -1e-6  # floored directions are < 1
    # a linear, invertible re-projection of the same latents: `after` predicts `before` exactly
    x = torch.cat([after, torch.ones(len(after), 1, dtype=after.dtype)], 1)
    fit = torch.linalg.lstsq(x, before).solution
    assert (x @ fit - before).abs().max() < 1e-3 * before.abs().max()


def test_calibration_records_gain_and_whitening(tokenized):
    d, _ = tokenized
    cal = json.loads((d / "codec" / "codec.json").read_text())["calibration"]
    from aligncap_core.codec.calibrate import CALIBRATION_VERSION, DEFAULT_INPUT_GAIN

    assert cal["version"] == CALIBRATION_VERSION and cal["input_gain"] == DEFAULT_INPUT_GAIN
    assert cal["whitening"]["frames"] > 128
    # the saved encoder outputs whitened latents on its own calibration clips
    from aligncap_core.codec import read_audio

    tok = EncodecTokenizer.from_pretrained(d / "codec")
    rows = [r for r in read_jsonl(d / "manifest.jsonl") if r["split"] == "train"]
    z = _frames(tok, [read_audio(d / r["audio"], 24000) for r in rows])
    assert z.mean(0).abs().max() < 0.05 and abs(torch.linalg.eigvalsh(torch.cov(z.T)).max().item() - 1) < 0.05


def test_interrupted_run_resumes(tokenized, tmp_path, monkeypatch):
    d = _copy(tokenized[0], tmp_path / "data", with_codes=False)  # keeps the calibrated codec
    real, calls = EncodecTokenizer.encode, []

    def flaky(self, wavs, *a, **k):
        calls.append(len(wavs))
        if len(calls) == 3:  # batches 1-2 (4 clips) filled the first shard of 4
            raise KeyboardInterrupt
        return real(self, wavs, *a, **k)

    monkeypatch.setattr(EncodecTokenizer, "encode", flaky)
    with pytest.raises(KeyboardInterrupt):
        tokenize_dataset(d, n_q=2, batch_size=2, shard_size=4, progress=False)
    assert "codes" not in read_jsonl(d / "manifest.jsonl")[0]  # manifest untouched until the end
    monkeypatch.setattr(EncodecTokenizer, "encode", real)
    s = tokenize_dataset(d, n_q=2, batch_size=2, shard_size=4, progress=False)
    assert s["cached"] == 4 and s["encoded"] == 20
    for r, r0 in zip(read_jsonl(d / "manifest.jsonl"), read_jsonl(tokenized[0] / "manifest.jsonl"), strict=True):
        np.testing.assert_array_equal(load_codes(d, r), load_codes(tokenized[0], r0))


def test_recalibrates_when_training_audio_changes(tokenized, tmp_path):
    d = _copy(tokenized[0], tmp_path / "data", with_codes=True)
    rows = read_jsonl(d / "manifest.jsonl")
    write_jsonl(d / "manifest.jsonl", [r for r in rows if r["id"] != "c000"])  # a train clip left
    s = tokenize_dataset(d, n_q=2, batch_size=8, progress=False)
    assert s["codec"] != tokenized[1]["codec"] and s["encoded"] == 23


def test_another_datas_codec_dir_is_refused_not_overwritten(tokenized, tmp_path):
    other = _copy(tokenized[0], tmp_path / "other", with_codes=False)
    rows = read_jsonl(other / "manifest.jsonl")
    write_jsonl(other / "manifest.jsonl", [r for r in rows if r["id"] != "c000"])  # other training audio
    codec_dir = tokenized[0] / "codec"
    before = (codec_dir / "codec.json").read_bytes()
    with pytest.raises(DataError, match="calibrated on other audio") as e:
        tokenize_dataset(other, n_q=2, batch_size=8, codec_dir=codec_dir, progress=False)
    assert f"--codec {codec_dir}" in str(e.value)
    assert (codec_dir / "codec.json").read_bytes() == before  # the first dataset's codec is intact
    # what the message says to do: encode with that codec as it is
    s = tokenize_dataset(other, codec=str(codec_dir), n_q=2, batch_size=8, progress=False)
    assert s["codec"] == tokenized[1]["codec"]
    for r in read_jsonl(other / "manifest.jsonl")[:3]:
        r0 = next(x for x in read_jsonl(tokenized[0] / "manifest.jsonl") if x["id"] == r["id"])
        np.testing.assert_array_equal(load_codes(other, r), load_codes(tokenized[0], r0))


def test_pretrained_local_dir(tmp_path, tokenized):
    from transformers import EncodecConfig, EncodecModel

    torch.manual_seed(0)
    model = EncodecModel(EncodecConfig(num_filters=4, hidden_size=16, codebook_size=64, num_lstm_layers=1))
    for layer in model.quantizer.layers[:4]:
        layer.codebook.embed.normal_()  # "pretrained" codebooks
    model.save_pretrained(tmp_path / "tiny")
    tok = EncodecTokenizer.from_pretrained(tmp_path / "tiny", n_q=4)
    assert tok.n_q == 4 and tok.bandwidth_kbps == pytest.approx(4 * 6 * 75 / 1000)
    w = _clip(np.random.default_rng(0), 1, 24000, 0.5, 0.3)
    np.testing.assert_array_equal(tok.encode([w])[0], EncodecTokenizer(model, n_q=4).encode([w])[0])
    d = _copy(tokenized[0], tmp_path / "data", with_codes=False)
    s = tokenize_dataset(d, codec=str(tmp_path / "tiny"), n_q=4, batch_size=8, progress=False)
    assert s["encoded"] == 24 and s["n_q"] == 4 and s["codec"] == tok.fingerprint
    assert load_codes(d, read_jsonl(d / "manifest.jsonl")[0]).max() < 64


def test_token_layout():
    codes = np.array([[12, 55, 7], [907, 3, 1]])
    toks = codes_to_tokens(codes)
    assert toks == ["<audio>", "<a0_12>", "<a1_907>", "<a0_55>", "<a1_3>", "<a0_7>", "<a1_1>", "</audio>"]
    assert codes_to_tokens(codes, keep_q=1) == ["<audio>", "<a0_12>", "<a0_55>", "<a0_7>", "</audio>"]
    np.testing.assert_array_equal(tokens_to_codes(toks), codes)
    with pytest.raises(ValueError):
        codes_to_tokens(codes, keep_q=3)
    vocab = audio_token_vocab(2)
    assert len(vocab) == 2 + 2 * 1024 and len(set(vocab)) == len(vocab)
    assert set(toks) <= set(vocab) and "<a1_1023>" in vocab


def test_probe_and_cli(tokenized):
    from typer.testing import CliRunner

    from aligncap_core.cli import app

    d, _ = tokenized
    res = probe_dataset(d)
    assert res["volume"]["n_eval"] == 6 and 0 <= res["volume"]["accuracy"] <= 1
    assert "pitch" in res["skipped"]
    out = CliRunner().invoke(app, ["data", "tokenize", str(d), "--n-q", "2", "--batch-size", "4"])
    assert out.exit_code == 0, out.output
    assert '"encoded": 0' in out.output


# ---- prosody stream (codec/prosody.py) ----------------------------------------------------------
def test_prosody_stream_tracks_pitch_level_and_silence():
    from aligncap_core.codec.prosody import (
        ProsodySettings,
        prosody_codes,
        prosody_to_tokens,
        prosody_vocab,
    )

    sr, s = 24000, ProsodySettings()
    t = np.arange(sr) / sr

    def voiced(f0, amp):  # a harmonic tone: voiced to YIN
        return sum(amp / k * np.sin(2 * np.pi * k * f0 * t) for k in range(1, 4))

    x = np.concatenate([voiced(110, 0.1), np.zeros(sr // 2), voiced(220, 0.2)]).astype(np.float32)
    codes = prosody_codes(x, sr, s)
    n_hop = int(round(1 / s.hop_s))  # hops per second
    assert codes.shape == (2, int(np.ceil(len(x) / (s.hop_s * sr))))
    low, gap, high = codes[:, 1:n_hop - 1], codes[:, n_hop + 1:n_hop + n_hop // 2 - 1], codes[:, -n_hop + 1:-1]
    # an octave is 8 bins of 1.5 semitones; silence is unvoiced at the lowest level
    assert np.all(high[0] - np.median(low[0]) >= 7) and np.all(high[0] - np.median(low[0]) <= 9)
    assert np.all(gap[0] == s.f0_bins) and np.all(gap[1] == 0)
    assert np.median(high[1]) - np.median(low[1]) == 1  # +6 dB is one 6 dB level bin
    tokens = prosody_to_tokens(codes, s)
    assert tokens[0] == "<prosody>" and tokens[-1] == "</prosody>" and "<pf_u>" in tokens
    assert len(tokens) == 2 + 2 * codes.shape[1] and set(tokens) <= set(prosody_vocab(s))


def test_formant_spacing_reads_the_vocal_tract_not_the_pitch():
    from aligncap_core.codec.prosody import formant_spacing

    sr = 24000
    for spacing in (1000.0, 1180.0):
        for f0 in (110.0, 220.0):  # a man's and a woman's F0 through the same tract
            got = formant_spacing(vowel(f0, spacing), sr)
            assert abs(got - spacing) / spacing < 0.05, (f0, spacing, got)
    # silence and noise have no voiced frames to measure
    assert np.isnan(formant_spacing(np.zeros(sr, dtype=np.float32), sr))
    assert np.isnan(formant_spacing(np.random.default_rng(0).normal(0, 0.1, sr).astype(np.float32), sr))


def test_voice_token_opens_the_stream_only_when_configured():
    from aligncap_core.codec.prosody import (
        ProsodySettings,
        prosody_codes,
        prosody_stream,
        prosody_to_tokens,
        prosody_vocab,
        voice_bin,
    )
    from aligncap_core.model.checkpoint import AUDIO_TOKEN_RE

    sr, x = 24000, vowel(150.0, 1000.0)
    plain = ProsodySettings()
    assert prosody_stream(x, sr, plain) == prosody_to_tokens(prosody_codes(x, sr, plain), plain)
    s = ProsodySettings(voice_bins=16)
    tokens = prosody_stream(x, sr, s)
    assert tokens[0] == "<prosody>" and tokens[1] == f"<pv{voice_bin(1000.0, s)}>"
    assert tokens[2:] == prosody_stream(x, sr, plain)[1:]  # the rest of the stream is unchanged
    assert set(tokens) <= set(prosody_vocab(s)) and all(AUDIO_TOKEN_RE.fullmatch(t) for t in tokens)
    # a longer tract (a man's) sits bins below a shorter one (a woman's); out of range clamps
    assert voice_bin(1180.0, s) - voice_bin(1000.0, s) >= 4
    assert voice_bin(10.0, s) == 0 and voice_bin(1e5, s) == 15 and voice_bin(float("nan"), s) == 16
    silent = prosody_stream(np.zeros(sr, dtype=np.float32), sr, s)
    assert silent[1] == "<pv_u>"
    # every vocabulary holds the default voice tokens, so any student of a teacher can read them
    assert set(prosody_vocab(s)) <= set(prosody_vocab())


def test_recorded_prosody_settings_keep_their_stream():
    """A checkpoint records its stream's settings; one recorded before the voice token (no
    voice_bins key) must read the stream it was trained on, whatever the defaults become."""
    from aligncap_core.codec.prosody import ProsodySettings
    from aligncap_core.errors import ConfigError
    from aligncap_core.train.config import StudentConfig, from_dict

    old = {k: v for k, v in ProsodySettings().to_dict().items() if not k.startswith("voice_")}
    assert ProsodySettings.coerce(old).voice_bins == 0
    assert ProsodySettings.coerce(ProsodySettings(voice_bins=16).to_dict()).voice_bins == 16
    assert from_dict(StudentConfig, {"prosody": {"voice_bins": 16}}).prosody_settings.voice_bins == 16
    with pytest.raises(ConfigError, match="voce_bins"):
        from_dict(StudentConfig, {"prosody": {"voce_bins": 16}})
    with pytest.raises(ConfigError, match="mapping"):
        from_dict(StudentConfig, {"prosody": "yes"})
    with pytest.raises(ConfigError, match="voice_bins"):
        ProsodySettings(voice_bins=-1)


def test_streams_cover_only_the_active_span_when_trimming():
    """trim_db > 0: leading and trailing silence is cut from both streams (codes sliced at the
    same fractions of the clip), and a clip padded with silence reads like the clip itself."""
    from aligncap_core.codec.prosody import (
        ProsodySettings,
        active_span,
        clip_streams,
        prosody_stream,
    )
    from aligncap_core.errors import ConfigError

    sr = 24000
    speech = vowel(180.0, 1100.0, seconds=1.2)
    quiet = np.random.default_rng(1).normal(0, 1e-4, 2 * sr).astype(np.float32)  # -80 dBFS hiss
    padded = np.concatenate([quiet, speech, quiet[: sr]])
    s = ProsodySettings(voice_bins=16, trim_db=35, trim_pad_s=0.1)
    start, end = active_span(padded, sr, s)
    assert abs(start / sr - 1.9) <= 0.02 and abs(end / sr - 3.3) <= 0.02  # speech at 2.0-3.2 s, 0.1 s pad
    assert active_span(padded, sr, ProsodySettings()) == (0, len(padded))  # trim_db 0: all of it
    frames = -(-len(padded) * 75 // sr)
    codes = np.arange(2 * frames, dtype=np.int16).reshape(2, frames)
    cut, stream = clip_streams(codes, padded, sr, s)
    assert cut.shape[0] == 2 and abs(cut.shape[1] - (end - start) / sr * 75) <= 1
    assert cut[0, 0] == codes[0, start * frames // len(padded)]  # the span's own frames, in order
    assert np.array_equal(cut[1], codes[1, cut[1, 0] - frames: cut[1, 0] - frames + cut.shape[1]])
    alone = prosody_stream(np.concatenate([np.zeros(int(0.1 * sr), np.float32), speech,
                                           np.zeros(int(0.1 * sr), np.float32)]), sr, s)
    assert stream[:2] == alone[:2] and abs(len(stream) - len(alone)) <= 2  # same voice, same length
    untrimmed = clip_streams(codes, padded, sr, ProsodySettings(voice_bins=16))
    assert untrimmed[0] is codes and len(untrimmed[1]) > 2 * len(stream)
    with pytest.raises(ConfigError, match="trim_db"):
        ProsodySettings(trim_db=-1)
