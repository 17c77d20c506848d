"""The artifact store and the output locks (issue #19): publish / materialize on a local folder
and on S3 (a real moto_server), content-keyed caching, damaged downloads, first commit wins, and
locks that make a second producer wait, fail naming the holder, or take over a dead one's lock."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from aligncap_core import store as S
from aligncap_core.data import storage
from aligncap_core.data.storage import StorageError
from aligncap_core.locks import LockHeldError, hold
from tests.helpers.s3 import moto_endpoint, s3_env  # noqa: F401 - fixtures

REPO = Path(__file__).resolve().parents[2]


def _artifact(folder: Path) -> Path:
    (folder / "sub").mkdir(parents=True)
    (folder / "meta.json").write_text('{"step": 3}')
    (folder / "sub" / "weights.bin").write_bytes(os.urandom(3000))
    (folder / ".lock").write_text("not part of the artifact")
    return folder


def test_in_place_store_writes_the_manifest_only(tmp_path):
    st = S.ArtifactStore.open(None, tmp_path)
    assert st.in_place and st.root == str(tmp_path.resolve())
    _artifact(st.local("teacher/k1/step-3"))
    uri = st.publish("teacher/k1/step-3", result={"n": 1})
    assert uri == str(tmp_path.resolve() / "teacher/k1/step-3")
    m = st.committed("teacher/k1/step-3")
    assert set(m["files"]) == {"meta.json", "sub/weights.bin"} and m["result"] == {"n": 1}
    assert S.materialize(uri) == Path(uri) and S.is_committed(uri)
    assert S.artifact_fingerprint(uri) == m["content"][:16]
    assert st.publish("teacher/k1/step-3") == uri  # same content: nothing changes
    assert st.committed("teacher/k1/step-3")["created"] == m["created"]


def test_local_store_elsewhere_copies_and_first_commit_wins(tmp_path, caplog):
    st = S.ArtifactStore.open(tmp_path / "store", tmp_path / "work")
    _artifact(st.local("data/k"))
    uri = st.publish("data/k")
    assert (Path(uri) / "sub" / "weights.bin").read_bytes() == (st.local("data/k/sub/weights.bin")).read_bytes()
    assert not (Path(uri) / ".lock").exists()
    first = (Path(uri) / "sub" / "weights.bin").read_bytes()
    # a second producer of the same key with other bytes (a nondeterministic stage) keeps the first
    other = S.ArtifactStore.open(tmp_path / "store", tmp_path / "work2")
    _artifact(other.local("data/k"))
    with caplog.at_level("WARNING"):
        assert other.publish("data/k") == uri
    assert (Path(uri) / "sub" / "weights.bin").read_bytes() == first
    assert any("already committed" in r.getMessage() for r in caplog.records)


def test_s3_publish_materialize_cache_and_damage(s3_env, tmp_path, monkeypatch):  # noqa: F811
    s3_env.create_bucket(Bucket="store")
    monkeypatch.setenv("ALIGNCAP_CACHE", str(tmp_path / "cache"))
    st = S.ArtifactStore.open("s3://store/runs", tmp_path / "work")
    _artifact(st.local("student/k2/step-6"))
    uri = st.publish("student/k2/step-6", result={"checkpoint": "x"})
    assert uri == "s3://store/runs/student/k2/step-6"
    keys = {o["Key"] for o in s3_env.list_objects_v2(Bucket="store", Prefix="runs/")["Contents"]}
    assert keys == {"runs/student/k2/step-6/meta.json", "runs/student/k2/step-6/sub/weights.bin",
                    "runs/student/k2/step-6/_artifact.json"}
    # another worker (no work copy) downloads into the cache, keyed by content
    got = S.materialize(uri)
    content = st.committed("student/k2/step-6")["content"]
    assert got == tmp_path / "cache" / "artifacts" / content[:32]
    assert (got / "sub" / "weights.bin").read_bytes() == st.local("student/k2/step-6/sub/weights.bin").read_bytes()
    # this worker uses its own work copy instead of downloading
    assert st.materialize(uri) == st.local("student/k2/step-6")
    # cached: a second materialize does not download again (the objects could even be gone)
    s3_env.delete_object(Bucket="store", Key="runs/student/k2/step-6/sub/weights.bin")
    assert S.materialize(uri) == got
    # a damaged object is refused, naming it, and leaves no half folder in the cache
    s3_env.put_object(Bucket="store", Key="runs/student/k2/step-6/sub/weights.bin", Body=b"short")
    import shutil

    shutil.rmtree(got)
    with pytest.raises(StorageError, match=r"weights\.bin: content does not match its manifest"):
        S.materialize(uri)
    assert not got.exists() and not list((tmp_path / "cache" / "artifacts").glob(".tmp-*"))
    # an S3 prefix without a manifest (uploaded by hand) still downloads as it is
    s3_env.put_object(Bucket="store", Key="plain/ck/meta.json", Body=b"{}")
    assert (S.materialize("s3://store/plain/ck") / "meta.json").read_bytes() == b"{}"
    assert not S.is_committed("s3://store/plain/ck") and S.artifact_fingerprint("s3://store/plain/ck") is None


# ---- locks ---------------------------------------------------------------------------------------
HOLDER = textwrap.dedent("""
    import sys, time
    from aligncap_core.locks import hold
    with hold(sys.argv[1], "test output", lease_s=float(sys.argv[3])):
        print("HELD", flush=True)
        time.sleep(float(sys.argv[2]))
    print("RELEASED", flush=True)
""")


def _holder(uri: str, seconds: float, lease_s: float = 30.0, env: dict | None = None) -> subprocess.Popen:
    p = subprocess.Popen([sys.executable, "-c", HOLDER, uri, str(seconds), str(lease_s)],
                         env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline().strip() == "HELD", p.stderr.read()
    return p


def _lock_checks(uri: str, env: dict | None = None) -> None:
    # a holder that finishes: the second producer waits for it, then holds the lock itself
    p = _holder(uri, 3.0, env=env)
    t0 = time.monotonic()
    with hold(uri, "second", wait_s=60, poll_s=0.2) as info:
        waited = time.monotonic() - t0
        assert info["pid"] == os.getpid()
    assert waited > 1.0 and p.wait(timeout=30) == 0
    assert storage.read_tagged(uri) is None  # released
    # a holder that does not finish in time: fails naming it and what to do
    p = _holder(uri, 60.0, env=env)
    try:
        with pytest.raises(LockHeldError) as e, hold(uri, "second", wait_s=1.0, poll_s=0.2):
            pass
        msg = str(e.value)
        assert f"pid {p.pid} on {socket.gethostname()}" in msg and "test output" in msg
        assert f"delete {uri}" in msg
    finally:
        p.kill()
        p.wait()
    # a killed holder (same host, pid gone) does not block anyone
    with hold(uri, "after the kill", wait_s=5, poll_s=0.2):
        pass


def test_local_lock_waits_fails_and_breaks_a_dead_holders(tmp_path):
    _lock_checks(str(tmp_path / "out" / ".lock"))


def test_lapsed_lease_of_another_host_is_broken(tmp_path, caplog):
    uri = str(tmp_path / ".lock")
    Path(uri).write_text(json.dumps({"holder": "gpu-9:1:x", "host": "gpu-9", "pid": 1,
                                     "what": "teacher abc", "since": "2026-01-01T00:00:00+00:00",
                                     "expires": time.time() - 60}))
    with caplog.at_level("WARNING"), hold(uri, "mine", wait_s=0):
        assert json.loads(Path(uri).read_text())["pid"] == os.getpid()
    assert any("lease lapsed" in r.getMessage() for r in caplog.records)
    # a live lease of another host is respected
    Path(uri).write_text(json.dumps({"holder": "gpu-9:1:x", "host": "gpu-9", "pid": 1,
                                     "what": "teacher abc", "expires": time.time() + 60}))
    with pytest.raises(LockHeldError, match="pid 1 on gpu-9"), hold(uri, "mine", wait_s=0):
        pass


def test_s3_lock_waits_fails_and_breaks_a_dead_holders(s3_env, moto_endpoint):  # noqa: F811
    s3_env.create_bucket(Bucket="locks")
    env = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL",
                                      "AWS_DEFAULT_REGION")}
    _lock_checks("s3://locks/store/.locks/teacher/k.lock", env)


def test_lock_is_renewed_while_held(tmp_path):
    uri = str(tmp_path / ".lock")
    with hold(uri, "long", lease_s=0.6):
        first = json.loads(Path(uri).read_text())["expires"]
        time.sleep(0.9)
        assert json.loads(Path(uri).read_text())["expires"] > first
    assert not Path(uri).exists()
