"""S3 ingestion against a real moto_server on 127.0.0.1 (started once for this module)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import soundfile as sf

from aligncap_core.data import storage
from aligncap_core.data.prepare import prepare_dataset
from aligncap_core.errors import StorageError
from aligncap_core.utils import read_jsonl
from tests.helpers import s3 as s3_server
from tests.helpers.data import row, tone
from tests.helpers.s3 import SECRET, free_port

pytestmark = pytest.mark.integration

moto_endpoint, s3_env = s3_server.moto_endpoint, s3_server.s3_env  # fixtures (one server here)


def _wav_bytes(x: np.ndarray, rate: int) -> bytes:
    import io

    buf = io.BytesIO()
    sf.write(buf, x, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def test_prepare_from_s3_manifest(s3_env, tmp_path):
    s3 = s3_env
    s3.create_bucket(Bucket="corpus")
    s3.create_bucket(Bucket="shared-audio")
    s3.put_object(Bucket="corpus", Key="sets/a/audio/one.wav", Body=_wav_bytes(tone(1000, 1.0, 48000, channels=2), 48000))
    s3.put_object(Bucket="corpus", Key="sets/common/two.wav", Body=_wav_bytes(tone(500, 0.7, 16000), 16000))
    s3.put_object(Bucket="shared-audio", Key="x/three.wav", Body=_wav_bytes(tone(300, 0.5, 24000), 24000))
    rows = [row("one", "audio/one.wav", speaker="s1"),
            row("two", "../common/two.wav", split="test"),       # relative to the key prefix
            row("three", "s3://shared-audio/x/three.wav"),       # absolute URI, other bucket
            row("gone", "audio/missing.wav"),
            row("nobucket", "s3://no-such-bucket/a.wav")]
    body = "\n".join(json.dumps(r) for r in rows) + "\n"
    s3.put_object(Bucket="corpus", Key="sets/a/manifest.jsonl", Body=body.encode())

    out = tmp_path / "out"
    summary = prepare_dataset("s3://corpus/sets/a/manifest.jsonl", out, progress=False)
    assert summary["kept"] == 3 and summary["rejects_by_reason"] == {"missing_file": 2}
    kept = {r["id"]: r for r in read_jsonl(out / "manifest.jsonl")}
    assert kept["one"]["source_audio"] == "s3://corpus/sets/a/audio/one.wav"
    assert kept["two"]["source_audio"] == "s3://corpus/sets/common/two.wav"
    assert kept["one"]["speaker"] == "s1" and abs(kept["one"]["duration_s"] - 1.0) < 1e-3
    assert sf.info(out / kept["three"]["audio"]).samplerate == 24000
    rejects = {r["id"]: r for r in read_jsonl(out / "rejects.jsonl")}
    assert rejects["gone"]["message"].startswith("gone: audio file not found: audio/missing.wav")
    assert "s3://corpus/sets/a/audio/missing.wav" in rejects["gone"]["message"]
    assert "line 4" in rejects["gone"]["message"]
    assert "line 5" in rejects["nobucket"]["message"]


def test_missing_manifest_object_is_a_clear_error(s3_env, tmp_path):
    s3_env.create_bucket(Bucket="empty-bucket")
    with pytest.raises(StorageError) as e:
        prepare_dataset("s3://empty-bucket/nope/manifest.jsonl", tmp_path / "o", progress=False)
    msg = str(e.value)
    assert "s3://empty-bucket/nope/manifest.jsonl" in msg and "not found" in msg
    assert e.value.kind == "not_found" and SECRET not in msg
    with pytest.raises(StorageError) as e:
        storage.read_bytes("s3://bucket-that-is-not-there/m.jsonl")
    assert e.value.kind == "no_bucket" and "does not exist" in str(e.value)


def test_storage_roundtrip_and_listing(s3_env, moto_endpoint):
    s3_env.create_bucket(Bucket="roundtrip")
    storage.write_bytes("s3://roundtrip/p/a.bin", b"abc")
    storage.write_bytes("s3://roundtrip/p/q/b.bin", b"de")
    assert storage.read_bytes("s3://roundtrip/p/a.bin") == b"abc"
    assert storage.exists("s3://roundtrip/p/a.bin") and not storage.exists("s3://roundtrip/p/zzz")
    assert not storage.exists("s3://no-bucket-here/x")
    assert storage.list_uris("s3://roundtrip/p/") == ["s3://roundtrip/p/a.bin", "s3://roundtrip/p/q/b.bin"]
    # Explicit config instead of env, with an endpoint override.
    assert storage.read_bytes("s3://roundtrip/p/q/b.bin", {"endpoint_url": moto_endpoint}) == b"de"


def test_endpoint_down_is_a_clear_error(s3_env, monkeypatch):
    dead = f"http://127.0.0.1:{free_port()}"
    monkeypatch.setenv("AWS_ENDPOINT_URL", dead)
    t0 = time.monotonic()
    with pytest.raises(StorageError) as e:
        storage.read_bytes("s3://b/k", {"max_attempts": 2, "connect_timeout": 1})
    assert e.value.kind == "endpoint" and dead in str(e.value) and SECRET not in str(e.value)
    assert time.monotonic() - t0 < 20


def test_missing_credentials_is_a_clear_error(moto_endpoint, monkeypatch, tmp_path):
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_ENDPOINT_URL", moto_endpoint)
    with pytest.raises(StorageError) as e:
        storage.read_bytes("s3://b/k")
    assert e.value.kind == "credentials" and "AWS_ACCESS_KEY_ID" in str(e.value)
