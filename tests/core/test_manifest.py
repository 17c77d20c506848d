"""Manifest row validation: every parse-level reject reason, pass-through, line numbers."""

from __future__ import annotations

import json

import pytest

from aligncap_core.data.manifest import REASONS, RowValidator, parse_manifest


def _lines(*rows) -> bytes:
    return b"\n".join(r if isinstance(r, bytes) else json.dumps(r).encode() for r in rows) + b"\n"


GOOD = {"id": "a", "audio": "audio/a.wav", "split": "train", "captions": ["A calm voice."],
        "transcript": "", "speaker": "s1", "attributes": {"emotion": "calm", "f0_median_hz": 120.0}}


def test_good_rows_kept_and_unknown_keys_pass_through():
    rows = [GOOD,
            {"id": "b", "audio": "b.wav", "split": "valid", "captions": "One string caption."},
            {"id": "c", "audio": "s3://bkt/c.wav", "split": "test"},  # no captions, no transcript
            {"id": "d", "audio": "/abs/d.wav", "split": "zeroshot", "captions": [], "my_key": {"x": 1}}]
    p = parse_manifest(_lines(*rows))
    assert p.rejects == [] and p.lines_read == 4
    got = {r["id"]: r for _, r in p.rows}
    assert got["a"]["speaker"] == "s1" and got["a"]["attributes"]["f0_median_hz"] == 120.0
    assert got["b"]["captions"] == ["One string caption."]  # a single string is wrapped
    assert "captions" not in got["c"] and "transcript" not in got["c"]
    assert got["d"]["my_key"] == {"x": 1}
    assert [line for line, _ in p.rows] == [1, 2, 3, 4]


BAD = [
    (b"{not json", "invalid_json"),
    (b"[1, 2]", "invalid_json"),
    (b'{"id": "x\xff", "audio": "a.wav"}', "not_utf8"),
    ({"audio": "a.wav", "split": "train", "captions": ["c"]}, "missing_field"),
    ({"id": "m", "split": "train", "captions": ["c"]}, "missing_field"),
    ({"id": "m2", "audio": "", "split": "train", "captions": ["c"]}, "missing_field"),
    ({"id": "m3", "audio": "a.wav", "captions": ["c"]}, "missing_field"),  # no split, no default
    ({"id": 7, "audio": "a.wav", "split": "train", "captions": ["c"]}, "bad_field"),
    ({"id": "f1", "audio": "a.wav", "split": "train", "captions": ["ok", 3]}, "bad_field"),
    ({"id": "f2", "audio": "a.wav", "split": "train", "captions": ["  "]}, "bad_field"),
    ({"id": "f3", "audio": "a.wav", "split": "test", "transcript": 5}, "bad_field"),
    ({"id": "a", "audio": "again.wav", "split": "train", "captions": ["c"]}, "duplicate_id"),
    ({"id": "s", "audio": "a.wav", "split": "training", "captions": ["c"]}, "unknown_split"),
    ({"id": "n1", "audio": "a.wav", "split": "train", "captions": []}, "no_caption"),
    ({"id": "n2", "audio": "a.wav", "split": "valid"}, "no_caption"),
    ({"id": "t", "audio": "a.wav", "split": "train", "captions": ["c"],
      "attributes": {"emotion": "furious"}}, "bad_attribute"),
    ({"id": "t2", "audio": "a.wav", "split": "train", "captions": ["c"], "attributes": [1]}, "bad_attribute"),
]


@pytest.mark.parametrize("bad,reason", BAD, ids=[f"{r}-{i}" for i, (_, r) in enumerate(BAD)])
def test_each_bad_row_is_rejected_with_reason(bad, reason):
    p = parse_manifest(_lines(GOOD, bad))
    assert len(p.rows) == 1 and p.rows[0][1]["id"] == "a"
    (rej,) = p.rejects
    assert rej.reason == reason and reason in REASONS
    assert rej.line == 2 and "line 2" in rej.message
    assert rej.raw is not None
    if isinstance(bad, dict) and isinstance(bad.get("id"), str):
        assert rej.id == bad["id"] and rej.message.startswith(bad["id"])


def test_all_bad_rows_together_nothing_dropped():
    data = _lines(GOOD, *[b for b, _ in BAD]) + b"\n   \n"  # blank lines are not rows
    p = parse_manifest(data)
    assert p.lines_read == 1 + len(BAD) == len(p.rows) + len(p.rejects)
    assert sorted(r.reason for r in p.rejects) == sorted(r for _, r in BAD)
    assert [r.line for r in p.rejects] == list(range(2, 2 + len(BAD)))


def test_line_numbers_count_blank_lines_and_bom():
    data = b"\xef\xbb\xbf" + json.dumps(GOOD).encode() + b"\n\n" + b"oops\n"
    p = parse_manifest(data)
    assert len(p.rows) == 1 and p.rejects[0].line == 3 and p.rejects[0].raw == "oops"


def test_default_split_fills_missing_split():
    p = parse_manifest(_lines({"id": "x", "audio": "x.wav"}), default_split="test")
    assert p.rejects == [] and p.rows[0][1]["split"] == "test"


def test_validator_duplicate_message_names_first_line():
    v = RowValidator()
    assert v.validate(dict(GOOD), 4)[1] is None
    _, rej = v.validate(dict(GOOD), 9)
    assert rej.reason == "duplicate_id" and "line 4" in rej.message and "line 9" in rej.message
