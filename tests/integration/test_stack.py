"""`aligncap up --s3` / `status` / `down` with real servers on free 127.0.0.1 ports (~30-40 s)."""

from __future__ import annotations

import json
import urllib.request

import boto3
import pytest

from aligncap_core import tracking as T
from aligncap_ops import procs
from tests.helpers.stack import cli, running_stack

pytestmark = pytest.mark.integration



@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("stack")
    with running_stack(home, deploy=False) as (state, up):
        yield home, state, up.stderr


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=5) as r:
        assert r.status == 200
        return r.read()


def test_stack_up_status_down(stack):
    home, state, up_log = stack
    urls = state["urls"]
    assert urls["prefect_ui"] in up_log and urls["mlflow"] in up_log
    env_sh = (home / "env.sh").read_text()
    for var in ("PREFECT_API_URL", "MLFLOW_TRACKING_URI", "AWS_ENDPOINT_URL", "MLFLOW_S3_ENDPOINT_URL",
                "PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK", "ALIGNCAP_STORE"):
        assert f"export {var}=" in env_sh
    assert f"ALIGNCAP_STORE=s3://{state['bucket']}/store" in env_sh
    # each worker in its own empty folder (working directory, cache, temp files, Prefect home)
    for pool in ("cpu", "gpu"):
        assert sorted(p.name for p in (home / "workers" / pool).iterdir()) == ["cache", "prefect", "tmp"]

    r = cli("status", "--home", str(home))
    assert r.returncode == 0, r.stdout + r.stderr
    for name in ("s3", "prefect", "mlflow", "worker-cpu", "worker-gpu"):
        assert name in r.stdout
    assert "dead" not in r.stdout and "failing" not in r.stdout

    assert json.loads(_get(f"{urls['prefect_api']}/health")) is True
    assert _get(f"{urls['mlflow']}/health").strip() == b"OK"
    for pool in ("cpu", "gpu"):
        assert json.loads(_get(f"{urls['prefect_api']}/work_pools/{pool}"))["type"] == "process"

    # A port that is taken is named, with the option that changes it; nothing else starts.
    prefect_port = urls["prefect_ui"].rsplit(":", 1)[1]
    r = cli("up", "--home", str(home / "second"), "--prefect-port", prefect_port, "--mlflow-port",
             str(procs.free_port()))
    assert r.returncode == 2 and f"port {prefect_port}" in r.stderr and "--prefect-port" in r.stderr

    # An MLflow run logged through the server keeps its artifacts in the moto bucket.
    uri = urls["mlflow"]
    parent = T.start_parent_run(T.experiment_for("stack-test", uri=uri), "pipeline", uri=uri)
    child = T.start_child_run(parent, "distill", params={"train": {"lr": 0.1}}, uri=uri)
    T.log_config_artifact({"train": {"lr": 0.1}}, child, uri=uri)
    env = state["env"]
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    keys = [o["Key"] for o in s3.list_objects_v2(Bucket=state["bucket"], Prefix="mlflow/").get("Contents", [])]
    assert any(k.endswith(f"{child}/artifacts/config/resolved_config.yaml") for k in keys), keys

    # down stops every process (workers first) and is idempotent.
    recs = list(state["components"].values())
    r = cli("down", "--home", str(home))
    assert r.returncode == 0, r.stderr
    assert not [rec["pid"] for rec in recs if procs.alive(rec)]
    assert not [rec["pid"] for rec in recs if procs.group_members(rec["pid"])]
    assert not (home / "stack.json").exists()
    r = cli("down", "--home", str(home))
    assert r.returncode == 0 and "nothing running" in r.stderr
    assert cli("status", "--home", str(home)).returncode == 1
