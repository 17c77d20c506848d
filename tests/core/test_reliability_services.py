"""Faults in the services aligncap talks to (issue #9, parts 3 and 4), against real servers the
tests start on 127.0.0.1: an OpenAI-compatible judge (http.server), S3 (moto_server with IAM
authentication on, plus a server that only answers 503), and an `mlflow server` that is killed
in the middle of a training run. Last, a secrets scan over everything a tracked stage leaves.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from aligncap_core import tracking as T
from aligncap_core.data import storage
from aligncap_core.data.prepare import prepare_dataset
from aligncap_core.errors import StorageError
from aligncap_core.prefs.judges import JudgeItem
from aligncap_core.prefs.openai_judge import OpenAIJudge, OpenAIJudgeConfig
from aligncap_core.prefs.pairs import build_preference_pairs, judge_clips
from aligncap_core.utils import read_jsonl
from tests.helpers.data import row, tone
from tests.helpers.training import make_corpus, quick

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
OPENAI_KEY = "sk-proj-ReliabilityFAKE0123456789abcdefXYZ"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 90) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start on port {port}")
            time.sleep(0.1)


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _serve(handler) -> tuple[ThreadingHTTPServer, str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, f"http://127.0.0.1:{server.server_address[1]}"


# ---- judge ---------------------------------------------------------------------------------
class _Judge(BaseHTTPRequestHandler):
    """Chat completions; the candidate text picks the fault. Counts requests per candidate."""

    counts: dict[str, int] = {}
    lock = threading.Lock()

    def log_message(self, *args):
        pass

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        cand = json.loads(body["messages"][-1]["content"].split("Candidate caption:\n", 1)[1])
        with self.lock:
            n = self.counts[cand] = self.counts.get(cand, 0) + 1
        if "unauthorized" in cand:
            return self._send(401, b'{"error": {"message": "bad key"}}')
        if "always 429" in cand:
            return self._send(429, b'{"error": {"message": "slow down"}}', {"Retry-After": "0"})
        if "always 503" in cand:
            return self._send(503, b"<html>upstream down</html>", ctype="text/html")
        if "malformed body" in cand and n == 1:
            return self._send(200, b'{"choices": [{"message": {"content": "{\\"faith')  # cut off
        if "slow once" in cand and n == 1:
            time.sleep(1.0)  # the client gives up at 0.3 s
        score = 9 if "good" in cand else 3
        content = json.dumps({"faithfulness": score, "factual": score, "richness": score,
                              "fluency": score, "reason": "ok"})
        self._send(200, json.dumps({"id": "x", "object": "chat.completion", "created": 0,
                                    "model": "fake", "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": content}}]}).encode())

    def _send(self, code, data, headers=None, ctype="application/json"):
        try:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(data)))
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass


@pytest.fixture()
def judge_url():
    _Judge.counts = {}
    server, url = _serve(_Judge)
    yield url + "/v1"
    server.shutdown()
    server.server_close()


def _judge(url: str, monkeypatch, **kw) -> OpenAIJudge:
    monkeypatch.setenv("RELIABILITY_JUDGE_KEY", OPENAI_KEY)
    cfg = dict(base_url=url, model="fake", api_key_env="RELIABILITY_JUDGE_KEY", max_retries=2,
               timeout=0.3, backoff_base=0.01, backoff_max=0.05, cache_path="")
    return OpenAIJudge(OpenAIJudgeConfig(**{**cfg, **kw}))


def test_judge_faults_are_retried_or_skipped_and_the_round_completes(judge_url, monkeypatch, caplog):
    judge = _judge(judge_url, monkeypatch)
    clips = [{"id": "c1", "prompt": "p1", "references": ["A good calm voice."],
              "candidates": ["good: malformed body", "bad one, slow once", "always 429"]},
             {"id": "c2", "prompt": "p2", "references": ["A good sad voice."],
              "candidates": ["bad but unauthorized", "always 503", "a plain bad caption"]}]
    caplog.set_level(logging.DEBUG)
    judged = judge_clips(judge, clips)  # never raises
    by_text = {t: j for r in judged for t, j in r["candidates"]}
    counts = dict(_Judge.counts)
    # transient faults: retried (malformed HTTP body, timeout) and then scored
    assert counts["good: malformed body"] == 2 and not by_text["good: malformed body"].skipped
    assert counts["bad one, slow once"] == 2 and not by_text["bad one, slow once"].skipped
    # persistent transient faults: all 1 + max_retries attempts, then skipped with the reason
    assert counts["always 429"] == counts["always 503"] == 3
    assert "HTTP 429" in by_text["always 429"].error and "HTTP 503" in by_text["always 503"].error
    # a permanent fault (401: wrong key) is not retried
    assert counts["bad but unauthorized"] == 1 and "HTTP 401" in by_text["bad but unauthorized"].error
    assert judge.stats["skipped"] == 3 and "3 of 8 candidates skipped" in caplog.text
    # the round goes on: pairs from what was scored (reference 9 vs sample 3)
    pairs = build_preference_pairs(judged, "golden_vs_sample", round=1, policy="p", judge=judge.name)
    assert sorted((p["id"], p["rejected"]) for p in pairs) == [
        ("c1", "bad one, slow once"), ("c2", "a plain bad caption")]
    assert OPENAI_KEY not in caplog.text


def test_judge_endpoint_down_skips_after_retries(monkeypatch, caplog):
    judge = _judge(f"http://127.0.0.1:{_free_port()}/v1", monkeypatch)
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING):
        (j,) = judge.score([JudgeItem("c", "A calm voice.", references=("A calm voice.",))])
    assert j.skipped and "APIConnectionError" in j.error and "3 attempts" in j.error
    assert judge.stats["retries"] == 2 and time.monotonic() - t0 < 10
    assert "1 of 1 candidates skipped" in caplog.text


# ---- S3 ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def s3_auth():
    """moto_server with IAM authentication on: the first 4 calls (user, key, policy, bucket) are
    free, every later one needs a valid, signed key. Yields (url, key id, secret)."""
    import boto3

    port = _free_port()
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    proc = subprocess.Popen([str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        _wait_port(port, proc, "moto_server")
        url = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=url, region_name="us-east-1",
                           aws_access_key_id="bootstrap", aws_secret_access_key="bootstrap")
        iam.create_user(UserName="trainer")
        key = iam.create_access_key(UserName="trainer")["AccessKey"]
        iam.put_user_policy(UserName="trainer", PolicyName="all", PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}))
        boto3.client("s3", endpoint_url=url, region_name="us-east-1", aws_access_key_id=key["AccessKeyId"],
                     aws_secret_access_key=key["SecretAccessKey"]).create_bucket(Bucket="corpus")
        yield url, key["AccessKeyId"], key["SecretAccessKey"]
    finally:
        _stop(proc)


def _attempts(config: dict) -> list[int]:
    """Counts every HTTP attempt the (cached) storage client for `config` makes."""
    n = [0]
    storage.s3_client(config).meta.events.register("before-send.s3", lambda **kw: n.__setitem__(0, n[0] + 1))
    return n


def _wav(seconds: float = 0.6, rate: int = 16000) -> bytes:
    import io

    import soundfile as sf

    buf = io.BytesIO()
    sf.write(buf, tone(300, seconds, rate), rate, format="WAV")
    return buf.getvalue()


def test_s3_wrong_credentials_fail_fast_with_a_clear_error(s3_auth, tmp_path):
    url, key_id, secret = s3_auth
    good = {"endpoint_url": url, "aws_access_key_id": key_id, "aws_secret_access_key": secret}
    storage.write_bytes("s3://corpus/a/clip.wav", _wav(), good)
    manifest = json.dumps(row("one", "clip.wav")) + "\n" + json.dumps(row("gone", "nope.wav")) + "\n"
    storage.write_bytes("s3://corpus/a/manifest.jsonl", manifest.encode(), good)

    wrong_secret = "Wr0ngSecretKeyValue/ForTheReliabilityTest1"
    for cfg, code in (({**good, "aws_secret_access_key": wrong_secret, "max_attempts": 4}, "SignatureDoesNotMatch"),
                      ({**good, "aws_access_key_id": "AKIAUNKNOWNKEY000000", "max_attempts": 4}, "InvalidAccessKeyId")):
        n = _attempts(cfg)
        with pytest.raises(StorageError) as e:
            prepare_dataset("s3://corpus/a/manifest.jsonl", tmp_path / code, progress=False, storage_config=cfg)
        msg = str(e.value)
        assert e.value.kind == "credentials" and code in msg and "AWS_SECRET_ACCESS_KEY" in msg
        assert "s3://corpus/a/manifest.jsonl" in msg and wrong_secret not in msg and secret not in msg
        assert n[0] == 1, f"credential errors must not be retried ({n[0]} attempts)"
        assert not (tmp_path / code / "manifest.jsonl").exists()

    # the right credentials: the good row is kept, the missing object is a reject with reason
    n = _attempts(good)
    summary = prepare_dataset("s3://corpus/a/manifest.jsonl", tmp_path / "ok", progress=False,
                              storage_config=good, workers=1)
    assert summary["kept"] == 1 and summary["rejects_by_reason"] == {"missing_file": 1}
    (rej,) = read_jsonl(tmp_path / "ok" / "rejects.jsonl")
    assert rej["id"] == "gone" and "s3://corpus/a/nope.wav" in rej["message"] and "line 2" in rej["message"]
    assert n[0] == 3, "manifest + 2 audio objects, the missing one not retried"


class _Always503(BaseHTTPRequestHandler):
    hits = 0

    def log_message(self, *args):
        pass

    def do_GET(self):
        type(self).hits += 1
        body = (b'<?xml version="1.0"?><Error><Code>SlowDown</Code>'
                b"<Message>Please reduce your request rate.</Message></Error>")
        self.send_response(503)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_s3_transient_failures_are_retried_then_reported(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing-secret")
    server, url = _serve(_Always503)
    try:
        with pytest.raises(StorageError) as e:
            storage.read_bytes("s3://corpus/m.jsonl", {"endpoint_url": url, "max_attempts": 3})
        assert _Always503.hits == 3, "5xx/throttling is transient: retried up to max_attempts"
        assert "SlowDown" in str(e.value) and "s3://corpus/m.jsonl" in str(e.value)
    finally:
        server.shutdown()
        server.server_close()
    dead = {"endpoint_url": f"http://127.0.0.1:{_free_port()}", "max_attempts": 3, "connect_timeout": 1}
    n = _attempts(dead)
    with pytest.raises(StorageError) as e:
        storage.read_bytes("s3://corpus/m.jsonl", dead)
    assert e.value.kind == "endpoint" and dead["endpoint_url"] in str(e.value) and "running" in str(e.value)
    assert n[0] == 3, "a refused connection is transient: retried"


# ---- MLflow server killed mid-run ----------------------------------------------------------
def _mlflow_server(root: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
    proc = subprocess.Popen(
        [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts")],
        env=env, cwd=root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            _stop(proc)
            pytest.fail(f"mlflow server did not start on port {port}")
        time.sleep(0.3)


class _KillServerAt:
    """Passes metrics to the MLflow logger and SIGKILLs the server when step `at` is logged."""

    def __init__(self, inner, proc: subprocess.Popen, at: int):
        self.inner, self.proc, self.at = inner, proc, at

    def log_metrics(self, metrics, step):
        if step == self.at and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.inner.log_metrics(metrics, step)

    def log_params(self, params):
        self.inner.log_params(params)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_mlflow_server_killed_mid_training(corpus, tmp_path, monkeypatch, caplog):
    from mlflow import MlflowClient

    from aligncap_core.train import stages
    from aligncap_core.train.config import TeacherConfig

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "3")
    port = _free_port()
    uri = f"http://127.0.0.1:{port}"
    proc = _mlflow_server(tmp_path, port)
    try:
        parent = T.start_parent_run(T.experiment_for("reliability", uri=uri), "pipeline", uri=uri)
        child = T.start_child_run(parent, "teacher", params={"train": {"max_steps": 8}}, uri=uri)
        spool = tmp_path / "run" / "mlflow-spool.jsonl"
        logger = T.MlflowLogger(child, uri, batch_size=1, flush_interval_s=0, retry_after_s=0.2,
                                spool_path=spool)
        cfg = TeacherConfig(preset="micro", train=quick(max_steps=8, checkpoint_every=4, eval_every=0,
                                                        log_every=1))
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger="aligncap.tracking"):
            best = stages.train_teacher(corpus, tmp_path / "run", cfg, logger=_KillServerAt(logger, proc, 3),
                                        show_progress=False)
            assert logger.close() is False  # the server is still down at the end
        assert time.monotonic() - t0 < 60, "a dead tracking server must not stall training"
        # training finished and its checkpoints are complete
        assert best.name == "step-00000008" and (best / "trainer_state.pt").is_file()
        assert (tmp_path / "run" / "step-00000004" / "meta.json").is_file()
        warnings = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
        assert len(warnings) == 1 and uri.split("//")[1] in warnings[0] and "buffered" in warnings[0]
        assert logger.pending > 0 and spool.is_file()

        proc = _mlflow_server(tmp_path, port)  # the server comes back: the spool is sent
        assert T.MlflowLogger(child, uri, spool_path=spool).close() is True and not spool.exists()
        history = MlflowClient(uri).get_metric_history(child, "train/loss")
        assert sorted(m.step for m in history) == list(range(1, 9)), "each step once, none lost"
    finally:
        _stop(proc)


# ---- secrets -------------------------------------------------------------------------------
def test_secrets_never_reach_mlflow_logs_or_files(s3_auth, corpus, judge_url, tmp_path, monkeypatch,
                                                  caplog, capfd):
    """Real credentials in the environment (S3 key of the moto IAM user, a judge API key), a
    tracked stage that uses them and logs its config (with a careless copy of both secrets in
    it), training with an MLflow logger, a checkpoint artifact; then every place a secret could
    end up is searched for them."""
    from mlflow import MlflowClient

    from aligncap_core.train import stages
    from aligncap_core.train.config import TeacherConfig

    url, key_id, secret = s3_auth
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", secret)
    monkeypatch.setenv("AWS_ENDPOINT_URL", url)
    monkeypatch.setenv("OPENAI_API_KEY", OPENAI_KEY)
    caplog.set_level(logging.DEBUG)
    for noisy in ("botocore", "urllib3", "s3transfer", "boto3"):
        logging.getLogger(noisy).setLevel(logging.INFO)  # their DEBUG dumps signed headers

    storage.write_bytes("s3://corpus/sec/clip.wav", _wav())
    storage.write_bytes("s3://corpus/sec/manifest.jsonl",
                        (json.dumps(row("one", "clip.wav")) + "\n" + json.dumps(row("two", "x.wav")) + "\n").encode())
    prep = prepare_dataset("s3://corpus/sec/manifest.jsonl", tmp_path / "prep", progress=False)
    assert prep["kept"] == 1
    with pytest.raises(StorageError) as e:  # a failure message, with the secret one character off
        storage.read_bytes("s3://corpus/sec/clip.wav", {"aws_secret_access_key": secret[:-1] + "x"})
    errors = [str(e.value)]
    judge = OpenAIJudge(OpenAIJudgeConfig(base_url=judge_url, model="fake", cache_path=str(tmp_path / "j.db"),
                                          max_retries=1, backoff_base=0.01))
    judged = judge.score([JudgeItem("c", "good caption"), JudgeItem("c", "unauthorized")])
    assert [j.skipped for j in judged] == [False, True]
    errors += [j.error for j in judged if j.error]

    uri = T.tracking_uri(run_dir=tmp_path / "mlruns")
    parent = T.start_parent_run(T.experiment_for("secrets", uri=uri), "pipeline", uri=uri)
    config = {"judge": {"kind": "openai", "api_key_env": "OPENAI_API_KEY", "api_key": OPENAI_KEY},
              "storage": {"endpoint_url": url, "aws_access_key_id": key_id, "aws_secret_access_key": secret},
              "notes": f"creds {key_id}:{secret}", "train": {"max_steps": 2}}
    child = T.start_child_run(parent, "teacher", params=config, uri=uri)
    T.log_config_artifact(config, child, uri=uri)
    with T.MlflowLogger(child, uri) as logger:
        logger.log_params({"storage": config["storage"]})
        best = stages.train_teacher(corpus, tmp_path / "run", TeacherConfig(
            preset="micro", train=quick(max_steps=2, eval_every=0, checkpoint_every=2)),
            logger=logger, show_progress=False)
    T.log_checkpoint(best, child, uri=uri)
    T.end_run(child, uri=uri)

    c = MlflowClient(uri)
    texts = {"errors": "\n".join(errors), "logs": caplog.text}
    out, err = capfd.readouterr()
    texts["stdout+stderr"] = out + err
    for run_id in (parent, child):
        run = c.get_run(run_id)
        texts[f"run {run_id}"] = json.dumps([run.data.params, run.data.tags, list(run.data.metrics)])
    files = [p for p in tmp_path.rglob("*") if p.is_file()]  # artifacts, checkpoints, caches, db
    assert any("resolved_config.yaml" in p.name for p in files)
    assert any(p.parts[-3:-1] == ("checkpoints", best.name) for p in files)
    for name, text in texts.items():
        for s in (secret, OPENAI_KEY, key_id):
            assert s not in text, f"a secret leaked into {name}"
    for p in files:
        data = p.read_bytes()
        for s in (secret, OPENAI_KEY, key_id):
            assert s.encode() not in data, f"a secret leaked into {p.relative_to(tmp_path)}"
    assert "REDACTED" in texts[f"run {child}"].upper()
