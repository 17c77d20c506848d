"""MLflow tracking helpers on a SQLite store in tmp_path (no server), plus an unreachable one."""

from __future__ import annotations

import json
import logging
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from mlflow import MlflowClient
from mlflow.exceptions import MlflowException

from aligncap_core import tracking as T

OPENAI_KEY = "sk-proj-Zx81bQ0aLmN4pR7sT2uV9wXyZ3cD5eF"
AWS_SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLE8KEY"
AWS_KEY_ID = "AKIAIOSFODNN7EXAMPLE"


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("mlflow")


@pytest.fixture(scope="module")
def uri(store: Path) -> str:
    # One database per module: creating a SQLite store runs MLflow's migrations (~5 s).
    return T.tracking_uri(run_dir=store)


@pytest.fixture()
def parent(uri: str, request) -> str:
    exp = T.experiment_for("aligncap-test", uri=uri)
    return T.start_parent_run(exp, "pipeline", tags={"prefect.flow_run_id": f"fr-{request.node.name}"}, uri=uri)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]  # closed again when the socket is


CHILD_SCRIPT = """
import sys
from aligncap_core.tracking import start_child_run
print(start_child_run(sys.argv[1], "distill", params={"train": {"lr": 1e-4}}, uri=sys.argv[2]))
"""


def test_tracking_uri_defaults_and_env(tmp_path, monkeypatch):
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert T.tracking_uri(run_dir=tmp_path) == f"sqlite:///{tmp_path.resolve()}/mlflow.db"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    assert T.tracking_uri(run_dir=tmp_path) == "http://127.0.0.1:5999"
    assert T.tracking_uri({"tracking_uri": "sqlite:///x.db"}) == "sqlite:///x.db"


@pytest.mark.slow
def test_child_runs_across_processes_and_resume(uri, parent, store, tmp_path):
    ids = [subprocess.run([sys.executable, "-c", CHILD_SCRIPT, parent, uri], capture_output=True,
                          text=True, check=True, cwd=tmp_path).stdout.strip().splitlines()[-1]
           for _ in range(2)]
    assert ids[0] == ids[1], "a retried stage must get its existing child run back"
    c = MlflowClient(uri)
    child = c.get_run(ids[0])
    assert child.data.tags["mlflow.parentRunId"] == parent
    assert child.data.tags["aligncap.stage"] == "distill"
    flow_run_id = child.data.tags["prefect.flow_run_id"]         # inherited from the parent
    assert flow_run_id == c.get_run(parent).data.tags["prefect.flow_run_id"]
    assert child.data.params["train.lr"] == "0.0001"
    # A finished stage that is retried is reopened, not duplicated.
    T.end_run(ids[0], uri=uri)
    again = T.start_child_run(parent, "distill", uri=uri)
    assert again == ids[0] and c.get_run(again).info.status == "RUNNING"
    assert T.find_child_run(parent, "round-1", uri=uri) is None
    other = T.start_child_run(parent, "round-1", uri=uri)
    assert other != again
    # Same flow run id -> same parent (a retried flow).
    exp = c.get_run(parent).info.experiment_id
    assert T.start_parent_run(exp, "pipeline", tags={"prefect.flow_run_id": flow_run_id}, uri=uri) == parent
    assert T.resume_run(ids[0], uri=uri) == ids[0]
    # Artifacts land beside the SQLite file, not in ./mlruns of the current directory.
    assert c.get_run(parent).info.artifact_uri.startswith((store / "mlartifacts").as_uri())


def test_flatten_params_redacts_secrets(uri, parent, tmp_path):
    config = {
        "train": {"lr": 3e-4, "max_new_tokens": 40, "tokenizer": "runs/tok"},
        "judge": {"OPENAI_API_KEY": OPENAI_KEY, "base_url": "http://u:hunter2pass@llm:8000/v1",
                  "note": f"key is {OPENAI_KEY}"},
        "storage": {"aws_secret_access_key": AWS_SECRET, "aws_access_key_id": AWS_KEY_ID,
                    "endpoint": "http://127.0.0.1:9000"},
        "misc": {"innocent": AWS_SECRET, "hf": ["hf_abcdefghijklmnopqrstuvwx"], "model": "Qwen/Qwen2.5-0.5B"},
        "long": "x" * 7000,
    }
    flat = T.flatten_params(config)
    assert flat["train.lr"] == "0.0003" and flat["train.max_new_tokens"] == "40"
    assert flat["train.tokenizer"] == "runs/tok" and flat["misc.model"] == "Qwen/Qwen2.5-0.5B"
    assert flat["judge.OPENAI_API_KEY"] == T.REDACTED
    assert flat["storage.aws_secret_access_key"] == T.REDACTED
    assert len(flat["long"]) == 6000
    child = T.start_child_run(parent, "prepare", params=config, uri=uri)
    T.log_config_artifact(config, child, uri=uri)
    run = MlflowClient(uri).get_run(child)
    art = Path(run.info.artifact_uri.removeprefix("file://")) / "config" / "resolved_config.yaml"
    texts = [json.dumps(run.data.params), art.read_text()]
    for text in texts:
        for secret in (OPENAI_KEY, AWS_SECRET, AWS_KEY_ID, "hunter2pass", "hf_abcdefghijklmnop"):
            assert secret not in text
    assert "http://127.0.0.1:9000" in texts[1] and "max_new_tokens: 40" in texts[1]


def test_logger_buffers_when_server_down_then_flushes(uri, parent, tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    child = T.start_child_run(parent, "distill", uri=uri)
    spool = tmp_path / "spool.jsonl"
    down = T.MlflowLogger(child, f"http://127.0.0.1:{_closed_port()}", batch_size=4,
                          retry_after_s=0.0, spool_path=spool)
    with caplog.at_level(logging.WARNING, logger="aligncap.tracking"):
        down.log_params({"train": {"lr": 0.1}, "api_token": "secret-value-123"})
        for step in range(10):
            down.log_metrics({"loss": 1.0 / (step + 1), "lr": 0.1, "bad": float("nan")}, step)
        assert down.close() is False
    unreachable = [r for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(unreachable) == 1, "warn once per outage, not once per step"
    assert "127.0.0.1" in unreachable[0].getMessage()
    assert down.pending == 22 and spool.exists()
    assert "secret-value-123" not in spool.read_text()

    # The server is back (here: a new process on a reachable store): the spool is sent.
    up = T.MlflowLogger(child, uri, spool_path=spool)
    assert up.pending == 22 and up.close() is True and not spool.exists()
    c = MlflowClient(uri)
    assert [m.step for m in c.get_metric_history(child, "loss")] == list(range(10))
    assert c.get_run(child).data.params["api_token"] == T.REDACTED


def test_logger_recovers_in_process(uri, parent, monkeypatch, caplog):
    child = T.start_child_run(parent, "round-1", uri=uri)
    logger = T.MlflowLogger(child, uri, batch_size=5, retry_after_s=0.0)
    real = MlflowClient.log_batch
    calls = {"n": 0}

    def flaky(self, *a, **k):
        calls["n"] += 1
        if calls["n"] <= 2:
            raise MlflowException("API request failed: Connection refused")
        return real(self, *a, **k)

    monkeypatch.setattr(MlflowClient, "log_batch", flaky)
    with caplog.at_level(logging.WARNING, logger="aligncap.tracking"):
        for step in range(12):
            logger.log_metrics({"loss": float(step)}, step)   # never raises
        logger.close()
    assert logger.pending == 0
    assert len(MlflowClient(uri).get_metric_history(child, "loss")) == 12
    assert any("reachable again" in r.getMessage() for r in caplog.records)


def test_eval_table_plot_and_champion(uri, parent, tmp_path):
    child = T.start_child_run(parent, "round-2", uri=uri)
    scores = {"valid": {"bleu4": 0.21, "cider": 0.8}, "test": {"bleu4": 0.19, "cider": 0.7}}
    table_uri = T.log_eval_table(scores, "eval", child, uri=uri)
    c = MlflowClient(uri)
    assert table_uri == f"runs:/{child}/eval/eval.json"
    assert c.get_run(child).data.metrics["eval/valid/bleu4"] == pytest.approx(0.21)
    assert "eval/eval.json" in [f.path for f in c.list_artifacts(child, "eval")]

    png = T.plot_rounds({"distill": {"bleu4": 0.1, "cider": 0.5}, "round-1": {"bleu4": 0.15},
                         "round-2": {"bleu4": 0.2, "cider": 0.8}}, tmp_path / "rounds.png", run_id=child, uri=uri)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "plots/rounds.png" in [f.path for f in c.list_artifacts(child, "plots")]

    ckpt = tmp_path / "step-000100"
    ckpt.mkdir()
    (ckpt / "meta.json").write_text('{"step": 100}')
    src = T.log_checkpoint(ckpt, child, uri=uri)
    assert src == f"runs:/{child}/checkpoints/step-000100"
    mv = T.register_champion(src, uri=uri)
    mv2 = T.register_champion(src, uri=uri)      # a later champion: a new version, alias moves
    champ = c.get_model_version_by_alias("aligncap-sec", "champion")
    assert champ.version == mv2.version and int(mv2.version) == int(mv.version) + 1
    assert champ.run_id == child and champ.source.endswith("checkpoints/step-000100")
