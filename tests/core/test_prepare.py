"""prepare_dataset on local manifests: audio checks, resampling quality, outputs, CLI, real data."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from aligncap_core.data import audio
from aligncap_core.data.manifest import REASONS
from aligncap_core.data.prepare import prepare_dataset, safe_name
from aligncap_core.errors import ConfigError, DataError
from aligncap_core.utils import read_jsonl, sha256_file
from tests.helpers.data import peak_hz, row, tone, write_manifest, write_wav

# ---------------------------------------------------------------- audio pipeline (unit level)


@pytest.mark.parametrize("rate_in", [48000, 16000])
def test_resample_preserves_duration_and_frequency(rate_in):
    x = tone(1000.0, seconds=2.0, rate=rate_in, noise=0.0)
    y = audio.resample(x, rate_in, 24000)
    assert abs(y.size / 24000 - 2.0) < 1e-3
    assert abs(peak_hz(y, 24000) - 1000.0) < 1.0


def test_resample_is_band_limited_not_naive():
    # 15 kHz is above the 12 kHz Nyquist of 24 kHz: a proper low-pass removes it, while
    # naive decimation or linear interpolation folds it down to 9 kHz.
    x = tone(15000.0, seconds=1.0, rate=48000, noise=0.0) + tone(440.0, 1.0, 48000, noise=0.0)
    y = audio.resample(x, 48000, 24000)
    spec = np.abs(np.fft.rfft(y * np.hanning(y.size)))
    freqs = np.fft.rfftfreq(y.size, 1 / 24000)
    alias = spec[np.abs(freqs - 9000) < 50].max()
    assert alias < 1e-3 * spec.max()
    naive = x[::2]
    nspec = np.abs(np.fft.rfft(naive * np.hanning(naive.size)))
    assert nspec[np.abs(freqs - 9000) < 50].max() > 0.3 * nspec.max()  # the check is meaningful


def test_stereo_downmix_averages_channels():
    left, right = tone(300, 0.5, 16000, noise=0), tone(700, 0.5, 16000, noise=0, amp=0.2)
    mono = audio.to_mono(np.stack([left, right], axis=1))
    assert mono.shape == left.shape
    np.testing.assert_allclose(mono, (left + right) / 2, atol=1e-6)


@pytest.mark.parametrize("x,code", [
    (np.zeros(0, np.float32), "empty_audio"),
    (np.zeros(24000, np.float32), "silent_audio"),
    (np.array([0.1, np.nan] * 100, np.float32), "nan_audio"),
    (np.array([0.1, np.inf] * 100, np.float32), "nan_audio"),
    (np.sign(tone(100, 1.0, 24000, noise=0)).astype(np.float32), "clipped_audio"),
])
def test_check_signal_rejects(x, code):
    with pytest.raises(audio.AudioProblem) as e:
        audio.check_signal(x)
    assert e.value.code == code


def test_safe_name_is_unique_and_safe():
    assert safe_name("clip-0042") == "clip-0042"
    a, b = safe_name("a/b"), safe_name("a_b")
    assert a != b and "/" not in a
    assert not safe_name("../../etc").startswith(".")


# ---------------------------------------------------------------- full prepare


def _dataset(tmp: Path) -> tuple[Path, dict[str, str]]:
    """A manifest with good rows of several formats and one planted row per reject reason."""
    d = tmp / "src"
    write_wav(d / "audio/stereo48.wav", tone(1000, 1.5, 48000, channels=2), 48000)
    write_wav(d / "audio/mono16.wav", tone(1000, 1.2, 16000), 16000)
    write_wav(d / "audio/mono24.flac", tone(500, 0.8, 24000), 24000)
    abs_wav = write_wav(tmp / "elsewhere/abs.wav", tone(800, 1.0, 22050), 22050)
    write_wav(d / "audio/silent.wav", np.zeros(16000, np.float32), 16000)
    nan = tone(440, 1.0, 16000)
    nan[100:200] = np.nan
    write_wav(d / "audio/nan.wav", nan, 16000, subtype="FLOAT")
    write_wav(d / "audio/empty.wav", np.zeros(0, np.float32), 16000)
    write_wav(d / "audio/clipped.wav", np.sign(tone(100, 1.0, 16000, noise=0)), 16000)
    write_wav(d / "audio/short.wav", tone(440, 0.1, 16000), 16000)
    write_wav(d / "audio/long.wav", tone(440, 3.0, 16000), 16000)
    (d / "audio/garbage.wav").write_bytes(b"RIFF this is not really a wav file" * 10)
    rows = [
        row("good-stereo48", "audio/stereo48.wav", speaker="spk1", my_extra={"k": [1, 2]}),
        row("good-mono16", "audio/mono16.wav", split="valid", captions="A single caption."),
        row("good-flac", "audio/mono24.flac", split="test", captions=None, transcript=""),
        row("good-abs", str(abs_wav), split="zeroshot"),
        "",  # blank: not a row
        "{broken json",
        b'{"id": "latin1-\xe9", "audio": "x.wav"}',
        {"audio": "audio/mono16.wav", "split": "train", "captions": ["c"]},
        row("good-mono16", "audio/mono16.wav"),
        row("bad-split", "audio/mono16.wav", split="training"),
        row("no-cap", "audio/mono16.wav", captions=[]),
        row("bad-attr", "audio/mono16.wav", attributes={"pitch": "very high"}),
        row("bad-field", "audio/mono16.wav", captions=[1]),
        row("missing", "audio/does-not-exist.wav"),
        row("garbage", "audio/garbage.wav"),
        row("empty", "audio/empty.wav"),
        row("silent", "audio/silent.wav"),
        row("nan", "audio/nan.wav"),
        row("clipped", "audio/clipped.wav"),
        row("short", "audio/short.wav"),
        row("long", "audio/long.wav"),
    ]
    rows = [{k: v for k, v in r.items() if v is not None} if isinstance(r, dict) else r for r in rows]
    expected = {
        "invalid_json": "", "not_utf8": "", "missing_field": "", "duplicate_id": "good-mono16",
        "unknown_split": "bad-split", "no_caption": "no-cap", "bad_attribute": "bad-attr",
        "bad_field": "bad-field", "missing_file": "missing", "unreadable_audio": "garbage",
        "empty_audio": "empty", "silent_audio": "silent", "nan_audio": "nan",
        "clipped_audio": "clipped", "too_short": "short", "too_long": "long",
    }
    return write_manifest(d / "manifest.jsonl", rows), expected


@pytest.fixture()
def prepared(tmp_path):
    manifest, expected = _dataset(tmp_path)
    out = tmp_path / "out"
    summary = prepare_dataset(manifest, out, max_duration=2.0, progress=False)
    return manifest, out, summary, expected


def test_every_reason_rejected_and_every_good_row_kept(prepared):
    manifest, out, summary, expected = prepared
    kept = read_jsonl(out / "manifest.jsonl")
    rejects = read_jsonl(out / "rejects.jsonl")
    assert [r["id"] for r in kept] == ["good-stereo48", "good-mono16", "good-flac", "good-abs"]
    n_rows = sum(1 for line in manifest.read_bytes().splitlines() if line.strip())
    assert summary["kept"] + summary["rejected"] == n_rows == summary["lines_read"]
    assert summary["rejects_by_reason"] == {k: 1 for k in sorted(expected)}
    assert set(summary["rejects_by_reason"]) <= set(REASONS)
    for rej in rejects:
        assert set(rej) == {"line", "id", "reason", "message", "raw"}
        want_id = expected[rej["reason"]]
        if want_id:
            assert rej["id"] == want_id and rej["message"].startswith(want_id)
        assert f"line {rej['line']}" in rej["message"]
    missing = next(r for r in rejects if r["reason"] == "missing_file")
    assert missing["message"].startswith("missing: audio file not found: audio/does-not-exist.wav")
    assert missing["raw"]["id"] == "missing"
    assert next(r for r in rejects if r["reason"] == "invalid_json")["raw"] == "{broken json"
    assert summary["out_dir"] == str(out.resolve())


def test_kept_rows_are_normalised_and_keep_original_keys(prepared):
    manifest, out, summary, _ = prepared
    kept = {r["id"]: r for r in read_jsonl(out / "manifest.jsonl")}
    s = kept["good-stereo48"]
    assert s["speaker"] == "spk1" and s["my_extra"] == {"k": [1, 2]} and s["transcript"]
    assert kept["good-mono16"]["captions"] == ["A single caption."]
    assert s["source_audio"] == str(manifest.parent / "audio/stereo48.wav")
    total = 0.0
    for r in kept.values():
        path = out / r["audio"]
        assert r["audio"].startswith("audio/") and path.is_file()
        info = sf.info(path)
        assert (info.samplerate, info.channels, info.subtype) == (24000, 1, "FLOAT")
        assert r["sample_rate"] == 24000 and r["audio_sha256"] == sha256_file(path)
        assert abs(info.frames / 24000 - r["duration_s"]) < 1e-3
        total += r["duration_s"]
    assert abs(kept["good-stereo48"]["duration_s"] - 1.5) < 1e-3
    assert abs(kept["good-mono16"]["duration_s"] - 1.2) < 1e-3
    y, _ = sf.read(out / kept["good-mono16"]["audio"])
    assert abs(peak_hz(y, 24000) - 1000) < 2
    assert abs(summary["total_audio_s"] - total) < 0.01
    fp = json.loads((out / "fingerprint.json").read_text())
    assert fp["fingerprint"] == summary["fingerprint"] and fp["settings"]["sample_rate"] == 24000


def test_rerun_is_stable_reuses_audio_and_tracks_changes(prepared, tmp_path):
    manifest, out, first, _ = prepared
    again = prepare_dataset(manifest, out, max_duration=2.0, progress=False)
    assert again["fingerprint"] == first["fingerprint"] and again["reused"] == first["kept"]
    # A changed caption changes the fingerprint; a dropped row's audio is removed from OUT.
    lines = manifest.read_text(encoding="utf-8", errors="replace").splitlines()
    lines[0] = lines[0].replace("A person speaks calmly", "Someone whispers")
    lines = [line for line in lines if '"good-abs"' not in line]
    manifest.write_text("\n".join(lines) + "\n")
    third = prepare_dataset(manifest, out, max_duration=2.0, progress=False)
    assert third["fingerprint"] != first["fingerprint"] and third["kept"] == first["kept"] - 1
    assert sorted(p.name for p in (out / "audio").iterdir()) == sorted(
        Path(r["audio"]).name for r in read_jsonl(out / "manifest.jsonl"))
    # Another target rate: nothing reused, fingerprint differs.
    other = prepare_dataset(manifest, out, sample_rate=16000, max_duration=2.0, progress=False)
    assert other["reused"] == 0 and sf.info(out / "audio/good-mono16.wav").samplerate == 16000


def test_fingerprint_is_deterministic_across_fresh_runs(prepared, tmp_path):
    manifest, out, first, _ = prepared
    fresh = prepare_dataset(manifest, tmp_path / "fresh", max_duration=2.0, progress=False)
    assert fresh["reused"] == 0 and fresh["fingerprint"] == first["fingerprint"]
    a = read_jsonl(out / "manifest.jsonl")
    b = read_jsonl(tmp_path / "fresh/manifest.jsonl")
    assert [r["audio_sha256"] for r in a] == [r["audio_sha256"] for r in b]


def test_bad_settings_and_sources(tmp_path):
    manifest, _ = _dataset(tmp_path)
    with pytest.raises(ConfigError):
        prepare_dataset(manifest, tmp_path / "o", min_duration=5, max_duration=1)
    with pytest.raises(ConfigError, match="overwrite"):
        prepare_dataset(manifest, manifest.parent)
    with pytest.raises(DataError, match="not found"):
        prepare_dataset(tmp_path / "nope.jsonl", tmp_path / "o")
    # A folder holding manifest.jsonl is accepted as the source.
    assert prepare_dataset(manifest.parent, tmp_path / "o2", progress=False)["kept"] >= 3


def test_default_split_from_argument(tmp_path):
    write_wav(tmp_path / "a.wav", tone(440, 1.0, 16000), 16000)
    m = write_manifest(tmp_path / "m.jsonl", [{"id": "a", "audio": "a.wav"}])
    s = prepare_dataset(m, tmp_path / "out", split="test", progress=False)
    assert s["kept"] == 1 and read_jsonl(tmp_path / "out/manifest.jsonl")[0]["split"] == "test"


def test_codes_of_another_prepared_dir_are_not_carried_over(tmp_path):
    # a row copied from a tokenized manifest names that dir's shards: kept, evaluation would
    # take it for this dir's codes and fail on a missing shard (or read another dir's codes)
    write_wav(tmp_path / "a.wav", tone(440, 1.0, 16000), 16000)
    codes = {"codec": "f" * 16, "shard": "codes/x/shard-0.npz", "key": "k", "n_frames": 75}
    m = write_manifest(tmp_path / "m.jsonl", [row("a", "a.wav", codes=codes, p_act="clues")])
    assert prepare_dataset(m, tmp_path / "out", progress=False)["kept"] == 1
    kept = read_jsonl(tmp_path / "out/manifest.jsonl")[0]
    assert "codes" not in kept and kept["p_act"] == "clues"


# ---------------------------------------------------------------- real data


def test_realdata_all_kept(realdata_dir, tmp_path):
    s = prepare_dataset(realdata_dir / "manifest.jsonl", tmp_path / "real", progress=False)
    assert (s["kept"], s["rejected"]) == (107, 0)
    rows = read_jsonl(tmp_path / "real/manifest.jsonl")
    assert {r["sample_rate"] for r in rows} == {24000}
    src = {r["id"]: r for r in read_jsonl(realdata_dir / "manifest.jsonl")}
    for r in rows:  # durations survive resampling (48 kHz stereo and 16 kHz mono sources)
        assert abs(r["duration_s"] - src[r["id"]]["duration_s"]) < 2e-3


# ---------------------------------------------------------------- CLI


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "COLUMNS": "200"}
    return subprocess.run([sys.executable, "-m", "aligncap_core.cli", "data", "prepare", *args],
                          capture_output=True, text=True, env=env, timeout=120)


def test_cli_prepare_prints_summary(tmp_path):
    write_wav(tmp_path / "src/a.wav", tone(440, 1.0, 48000, channels=2), 48000)
    m = write_manifest(tmp_path / "src/manifest.jsonl", [row("a", "a.wav"), row("b", "missing.wav")])
    res = _cli(str(m), "--out", str(tmp_path / "out"))
    assert res.returncode == 0, res.stderr
    summary = json.loads(res.stdout)
    assert summary["kept"] == 1 and summary["rejects_by_reason"] == {"missing_file": 1}
    # stderr is not a terminal here: the progress bar comes as a line with its count (utils.progress)
    assert "2/2 (100%)" in res.stderr and "eta 0:00:00" in res.stderr, res.stderr


def test_cli_missing_manifest_is_a_clean_error(tmp_path):
    res = _cli(str(tmp_path / "no/such/manifest.jsonl"), "--out", str(tmp_path / "out"))
    assert res.returncode == 2
    assert res.stderr.strip().count("\n") == 0, res.stderr  # one line, no traceback
    assert res.stderr.startswith("error:") and "no/such/manifest.jsonl: not found" in res.stderr
