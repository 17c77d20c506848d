"""Bad input everywhere data enters (issue #9, part 1): manifests, audio, HF datasets, CLI
arguments and configs. Every bad item is rejected (or refused) with a message naming it and
what to do; every good row is kept; the parsers survive anything (hypothesis).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aligncap_core.clues import ClueResult, EmotionClueParser
from aligncap_core.clues.prompt import build_acoustic_prompt
from aligncap_core.data.manifest import REASONS, parse_manifest
from aligncap_core.data.prepare import prepare_dataset
from aligncap_core.errors import AlignCapError, ConfigError
from aligncap_core.utils import read_jsonl
from aligncap_core.vocab import ATTRIBUTES, SPLITS
from tests.helpers.data import row, tone, write_manifest, write_wav

REPO = Path(__file__).resolve().parents[2]


# ---- property-based: the manifest parser -------------------------------------------------------
def _check_parsed(data: bytes):
    p = parse_manifest(data)
    assert p.lines_read == len(p.rows) + len(p.rejects) == sum(1 for x in data.splitlines() if x.strip())
    for r in p.rejects:
        assert r.reason in REASONS and f"line {r.line}" in r.message
        # a reject must be writable to the UTF-8 rejects file, whatever the input was
        json.dumps(r.to_dict(), ensure_ascii=False).encode("utf-8")
    for _, good in p.rows:
        json.dumps(good, ensure_ascii=False, allow_nan=False).encode("utf-8")
        assert isinstance(good["id"], str) and good["split"] in SPLITS
    return p


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=400))
def test_manifest_parser_survives_any_bytes(data):
    _check_parsed(data)


ANY_TEXT = st.text(st.characters(blacklist_categories=()), max_size=12)  # lone surrogates too
JSON_LEAF = st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT
JSON = st.recursive(JSON_LEAF, lambda kids: st.lists(kids, max_size=3)
                    | st.dictionaries(st.text(max_size=6), kids, max_size=3), max_leaves=8)
FIELD = {"id": ANY_TEXT | JSON, "audio": st.sampled_from(["a.wav", "", "s3://b/k.wav"]) | JSON,
         "split": st.sampled_from([*SPLITS, "training", ""]) | JSON,
         "captions": st.lists(ANY_TEXT, max_size=3) | ANY_TEXT | JSON,
         "transcript": st.text(max_size=10) | JSON,
         "attributes": st.dictionaries(st.sampled_from(sorted(ATTRIBUTES)),
                                       st.sampled_from(["high", "low", "sad", "x"]) | JSON, max_size=3) | JSON}
ROW = st.fixed_dictionaries({}, optional=FIELD) | JSON


def _dump(obj) -> bytes:
    """JSON text for any value, NaN and lone surrogates included (as a careless writer would)."""
    return json.dumps(obj, ensure_ascii=True).encode()


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(ROW, max_size=6), st.lists(st.text(max_size=8), min_size=1, max_size=3, unique=True))
def test_manifest_parser_keeps_every_good_row_among_bad_ones(bad_rows, good_ids):
    good = [{"id": f"good-{i}-{g}", "audio": f"{i}.wav", "split": "train", "captions": [f"Calm voice {i}."]}
            for i, g in enumerate(good_ids)]
    lines = [_dump(r) for r in bad_rows] + [_dump(r) for r in good]
    p = _check_parsed(b"\n".join(lines))
    kept = [r["id"] for _, r in p.rows]
    bad_ids = {r.get("id") for r in bad_rows if isinstance(r, dict) and isinstance(r.get("id"), str)}
    for g in good:
        if g["id"] not in bad_ids:  # (an earlier bad row may have taken the id first)
            assert g["id"] in kept, f"good row {g['id']} was dropped: {p.rejects}"


# ---- property-based: the clue parser ----------------------------------------------------------
WORDS = ["very", "slightly", "not", "no", "never", "but", "high", "low", "pitch", "fast", "slowly",
         "loud", "soft", "angry", "sad", "happy", "calm", "voice", "man", "woman", "she", "he",
         "trembling", "excited", "than", "more", "less", "rather", "a", "the", ",", ".", "!", "?",
         "'", '"', "-", "n't", "whispers", "shouts", "speaks", "sounding", "in", "and", "or"]


@pytest.fixture(scope="module")
def parsers():
    return EmotionClueParser(), EmotionClueParser(backend="blank")


@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(st.lists(st.sampled_from(WORDS) | st.text(max_size=5), max_size=30).map(" ".join))
def test_clue_parser_and_prompt_never_crash(parsers, text):
    for p in parsers:
        res = p.parse(text)
        assert isinstance(res, ClueResult)
        for k, v in res.attributes.items():
            assert v in ATTRIBUTES[k]
        prompt = build_acoustic_prompt(res)
        assert isinstance(prompt, str) and prompt


# ---- prepare: bad audio and bad rows, end to end -----------------------------------------------
@pytest.fixture(scope="module")
def odd(tmp_path_factory):
    """A manifest with every odd-but-usable clip (kept) and every kind of bad row (rejected)."""
    d = tmp_path_factory.mktemp("odd")
    a = d / "audio"
    write_wav(a / "mono16.wav", tone(440, 1.0, 16000), 16000)
    write_wav(a / "six_ch.wav", tone(440, 1.0, 44100, channels=6), 44100)
    for rate in (8000, 11025, 96000, 1000):
        write_wav(a / f"r{rate}.wav", tone(min(300, rate / 4), 1.0, rate), rate)
    write_wav(a / "float_over.wav", 3.0 * tone(440, 1.0, 16000, amp=0.5), 16000, subtype="FLOAT")
    write_wav(a / "huge.wav", tone(440, 40.0, 8000), 8000)  # 40 s > max_duration
    write_wav(a / "silent_dither.wav", 1e-5 * tone(440, 1.0, 16000), 16000)
    (a / "zero_bytes.wav").write_bytes(b"")
    (a / "a_folder.wav").mkdir()
    (a / "text.wav").write_text("this is a text file called .wav\n")
    rows = [
        row("mono16", "audio/mono16.wav"), row("six-channels", "audio/six_ch.wav"),
        *[row(f"rate-{r}", f"audio/r{r}.wav") for r in (8000, 11025, 96000, 1000)],
        row("unicode-é-漢字", "audio/mono16.wav", captions=["Une voix calme, très douce.", "平静的声音。"]),
        row("no-transcript", "audio/mono16.wav", transcript=""),
        row("../../etc/passwd", "audio/mono16.wav"),  # an id that is a path: stays inside out/
        row("huge", "audio/huge.wav"), row("float-over-full-scale", "audio/float_over.wav"),
        row("silent-dither", "audio/silent_dither.wav"), row("zero-bytes", "audio/zero_bytes.wav"),
        row("folder", "audio/a_folder.wav"), row("text-file", "audio/text.wav"),
        row("empty-caption", "audio/mono16.wav", captions=[""]),
        row("punct-caption", "audio/mono16.wav", captions=["...", "ok"]),
        row("zero-width-caption", "audio/mono16.wav", captions=["\u200b\u200b"]),
        b'{"id": "latin1", "audio": "audio/mono16.wav", "split": "train", "captions": ["caf\xe9"]}',
        '{"id": "surrogate", "audio": "audio/mono16.wav", "split": "train", "captions": ["bad \\ud83d"]}',
        '{"id": "nan-field", "audio": "audio/mono16.wav", "split": "train", "captions": ["c d"], "gain": NaN}',
        row("mono16", "audio/r8000.wav"),  # duplicate id
        '{"id": "trailing", "audio": "audio/mono16.wav"} {"x": 1}',
        '\u00a0',  # a non-breaking space alone: not JSON, rejected (not skipped as blank)
    ]
    manifest = write_manifest(d / "manifest.jsonl", rows)
    summary = prepare_dataset(manifest, d / "out", max_duration=30.0, progress=False)
    expected_rejects = {
        "huge": "too_long", "float-over-full-scale": "clipped_audio", "silent-dither": "silent_audio",
        "zero-bytes": "empty_audio", "folder": "storage_error", "text-file": "unreadable_audio",
        "empty-caption": "bad_field", "punct-caption": "bad_field", "zero-width-caption": "bad_field",
        None: "not_utf8", "surrogate": "not_utf8", "mono16": "duplicate_id",
    }
    return d, summary, expected_rejects


def test_odd_but_usable_clips_are_all_kept(odd):
    d, summary, _ = odd
    kept = {r["id"]: r for r in read_jsonl(d / "out" / "manifest.jsonl")}
    assert set(kept) == {"mono16", "six-channels", "rate-8000", "rate-11025", "rate-96000", "rate-1000",
                         "unicode-é-漢字", "no-transcript", "../../etc/passwd"}
    for r in kept.values():
        assert r["sample_rate"] == 24000 and abs(r["duration_s"] - 1.0) < 1e-3
        assert (d / "out" / r["audio"]).resolve().parent == (d / "out" / "audio").resolve()
    assert kept["unicode-é-漢字"]["captions"][1] == "平静的声音。"


def test_every_bad_row_is_rejected_with_a_reason_that_names_it(odd):
    d, summary, expected = odd
    rejects = read_jsonl(d / "out" / "rejects.jsonl")
    n_lines = sum(1 for x in (d / "manifest.jsonl").read_bytes().splitlines() if x.strip())
    assert summary["kept"] + summary["rejected"] == summary["lines_read"] == n_lines
    got = [(r["id"], r["reason"]) for r in rejects]
    for rid, reason in expected.items():
        assert (rid, reason) in got, (rid, reason, got)
    assert ("nan-field", "invalid_json") not in got and sum(r == "invalid_json" for _, r in got) == 3
    for r in rejects:
        assert r["reason"] in REASONS and f"line {r['line']}" in r["message"]
        if r["id"]:
            assert r["message"].startswith(r["id"])
    msgs = {r["id"]: r["message"] for r in rejects}
    assert "40.0 s" in msgs["huge"] and "max_duration" in msgs["huge"]
    assert "0 bytes" in msgs["zero-bytes"] and "not an audio file" in msgs["folder"]
    assert "no letters or digits" in msgs["punct-caption"]
    assert "surrogate" in msgs["surrogate"] and "\\ud83d" in json.dumps(
        next(r for r in rejects if r["id"] == "surrogate")["raw"])
    nan = next(r for r in rejects if "NaN" in r["message"])
    assert "use null or a finite number" in nan["message"]


def test_huge_file_is_rejected_from_its_header_without_decoding(tmp_path, monkeypatch):
    """An over-long clip costs a header read, not its samples: decode is never called."""
    import soundfile as sf

    write_wav(tmp_path / "long.wav", tone(440, 40.0, 8000), 8000)
    write_manifest(tmp_path / "m.jsonl", [row("long", "long.wav")])
    reads = []
    real = sf.SoundFile.read
    monkeypatch.setattr(sf.SoundFile, "read", lambda self, *a, **k: reads.append(1) or real(self, *a, **k))
    s = prepare_dataset(tmp_path / "m.jsonl", tmp_path / "out", max_duration=5.0, progress=False)
    assert s["rejects_by_reason"] == {"too_long": 1} and reads == []


def test_hf_dataset_bad_rows_are_rejected_good_rows_kept(tmp_path):
    datasets = pytest.importorskip("datasets")
    nan = tone(440, 1.0, 16000)
    nan[10] = np.nan
    ds = datasets.Dataset.from_dict({
        "id": ["ok", "nan", "empty", "silent", "ok", "odd-rate", "no-audio", "bad-cap"],
        "audio": [{"array": tone(440, 1.0, 16000).tolist(), "sampling_rate": 16000},
                  {"array": nan.tolist(), "sampling_rate": 16000},
                  {"array": [], "sampling_rate": 16000},
                  {"array": np.zeros(16000).tolist(), "sampling_rate": 16000},
                  {"array": tone(440, 1.0, 16000).tolist(), "sampling_rate": 16000},
                  {"array": tone(100, 1.0, 2000).tolist(), "sampling_rate": 2000},
                  None,
                  {"array": tone(440, 1.0, 16000).tolist(), "sampling_rate": 16000}],
        "caption": ["A calm voice.", "A sad voice.", "x y", "A quiet voice.", "dup", "A deep voice.",
                    "A voice.", "  "],
    })
    ds.save_to_disk(str(tmp_path / "ds"))
    s = prepare_dataset(tmp_path / "ds", tmp_path / "out", split="train", progress=False)
    assert [r["id"] for r in read_jsonl(tmp_path / "out" / "manifest.jsonl")] == ["ok", "odd-rate"]
    got = {r["id"] + f"@{r['line']}": r["reason"] for r in read_jsonl(tmp_path / "out" / "rejects.jsonl")}
    assert got == {"nan@2": "nan_audio", "empty@3": "empty_audio", "silent@4": "silent_audio",
                   "ok@5": "duplicate_id", "no-audio@7": "missing_file", "bad-cap@8": "bad_field"}
    assert s["kept"] + s["rejected"] == s["lines_read"] == 8
    for r in read_jsonl(tmp_path / "out" / "rejects.jsonl"):
        assert "dataset row" in r["message"]


# ---- CLI arguments and configs -----------------------------------------------------------------
def _cli(*args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "COLUMNS": "200"}  # rich must not wrap the message inside its box
    return subprocess.run([sys.executable, "-m", "aligncap_core.cli", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)


def test_cli_bad_arguments_are_one_line_errors(tmp_path):
    src = tmp_path / "m.jsonl"
    write_manifest(src, [row("a", "a.wav")])
    res = _cli("data", "prepare", str(src), "--out", str(tmp_path / "o"), "--sample-rate", "0")
    assert res.returncode == 2 and "error: sample_rate must be positive" in res.stderr
    assert "Traceback" not in res.stderr
    res = _cli("data", "prepare", str(src), "--out", str(tmp_path / "o"), "--sample-rate", "fast")
    assert res.returncode == 2 and "Invalid value for '--sample-rate'" in res.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text("preset: micro\ntrain:\n  max_steps: many\n")
    res = _cli("train", "teacher", str(tmp_path), "--out", str(tmp_path / "t"), "--config", str(bad))
    assert res.returncode == 2 and "train.max_steps must be int, got 'many'" in res.stderr
    assert "Traceback" not in res.stderr and not (tmp_path / "t" / "step-00000001").exists()


@pytest.mark.parametrize("text,match", [
    ("train: [1, 2\n", "cannot read config"),
    ("- a\n- b\n", "expected a mapping"),
    ("presett: micro\n", "unknown config key 'presett'"),
    ("train:\n  max_steps: 2.5\n", "train.max_steps must be int"),
    ("train:\n  max_steps: true\n", "train.max_steps must be int"),
    ("train:\n  lr: '1e-3'\n", "train.lr must be float"),
    ("train:\n  max_steps: -5\n", "train.max_steps must be >= 1"),
    ("preset: huge\n", "preset"),
    ("train:\n  lr: .nan\n", "train.lr must be a finite number"),
    ("train:\n  lr: .inf\n", "train.lr must be a finite number"),
    (b"\xff\xfe\x00binary", "cannot read config"),
])
def test_train_config_errors_name_the_key(tmp_path, text, match):
    from aligncap_core.train.config import TeacherConfig, load_config

    p = tmp_path / "c.yaml"
    p.write_bytes(text) if isinstance(text, bytes) else p.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_config(TeacherConfig, p)


@pytest.mark.parametrize("cfg,match", [
    ({"betta": 0.1}, "unknown config key 'dpo.betta'"), ({"beta": "high"}, "dpo.beta must be float"),
    ({"batch_size": "2"}, "dpo.batch_size must be int"), ({"max_steps": 2.5}, "dpo.max_steps must be int"),
    ({"lambda_kd": None}, "dpo.lambda_kd must be float"), ({"learning_rate": float("nan")}, "learning_rate"),
    ({"save_steps": -1}, "save_steps"),
])
def test_dpo_config_errors_name_the_key(cfg, match):
    from aligncap_core.prefs.dpo import DPORoundConfig

    with pytest.raises(ConfigError, match=match):
        DPORoundConfig.from_dict(cfg)
    assert DPORoundConfig.from_dict({"beta": 1, "max_length": None}).beta == 1.0  # ints are floats


def test_missing_and_unusable_sources_are_clear_errors(tmp_path):
    for source in (tmp_path / "nope.jsonl", tmp_path):
        with pytest.raises(AlignCapError) as e:
            prepare_dataset(source, tmp_path / "out", progress=False)
        assert str(source) in str(e.value)
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    s = prepare_dataset(empty, tmp_path / "out2", progress=False)  # nothing to do is not an error
    assert (s["kept"], s["rejected"]) == (0, 0)
