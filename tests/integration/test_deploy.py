"""The deployed pipeline on a real stack: `aligncap up --s3` (Prefect server, cpu + gpu process
workers, MLflow server, moto S3, prefect.yaml deployed), `prefect deployment run
aligncap-pipeline/cpu` with micro parameters, then what a user would check: the flow run and its
GPU subflows in Prefect, the nested runs in MLflow, results and artifacts in the bucket, and both
UIs in a headless Chromium.

One stack and one pipeline run per module (3.5-5 min on a busy 2-core machine: ~40 s `up`, the
rest mostly codec calibration + tokenizing and the start-up of the four flow-run processes).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

from tests.integration import browser
from tests.integration.stackhelpers import REPO, clean_env, running_stack

pytestmark = pytest.mark.integration

PIPELINE = "aligncap-pipeline/cpu"
GPU_DEPLOYMENTS = {"train-teacher": "gpu", "distill": "gpu", "self-improve": "gpu"}
EXPERIMENT = "deploy-test"
MICRO_TRAIN = {"lr": 3e-3, "warmup_steps": 2, "batch_size": 8, "eval_every": 0, "eval_batches": 2,
               "checkpoint_every": 0, "num_threads": 1, "log_every": 2}
RUN_TIMEOUT_S = 480


def _api(api: str, path: str, body: dict | None = None):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{api}{path}", data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.load(r)


def _params(out_dir: Path) -> dict:
    """Flow parameters that make the whole pipeline tiny (flows/params.py)."""
    return {
        "out_dir": str(out_dir),
        "data": {"synth_n": 24, "synth_workers": 1, "n_q": 1},
        "teacher": {"preset": "micro", "max_steps": 8, "config": {"train": MICRO_TRAIN}},
        "student": {"max_steps": 6, "config": {"train": MICRO_TRAIN}},
        "improve": {"rounds": 1, "config": {
            "patience": 0, "n": 2, "max_new_tokens": 12, "clips_per_round": 6, "min_margin": 0.0,
            "dpo": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "max_length": 256}}},
        "evaluation": {"limit": 3, "realdata": None, "max_new_tokens": 12, "meteor": False,
                       "kl_gap": False, "batch_size": 4},
        "tracking": {"experiment": EXPERIMENT},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("deploy-stack")
    with running_stack(home, deploy=True) as (state, _):
        assert state["deploy"] == "ok", (home / "logs" / "deploy.log").read_text()[-3000:]
        yield home, state


@pytest.fixture(scope="module")
def pipeline_run(stack, tmp_path_factory):
    """Start aligncap-pipeline/cpu from the CLI with micro parameters; wait for a final state."""
    home, state = stack
    api = state["urls"]["prefect_api"]
    out_dir = tmp_path_factory.mktemp("deploy-run") / "run"
    env = {**clean_env(), **state["env"]}
    r = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deployment", "run",
                        PIPELINE, "--params", json.dumps(_params(out_dir))],
                       capture_output=True, text=True, env=env, cwd=REPO, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr
    (flow_run_id,) = [line.split("UUID:")[1].strip() for line in r.stdout.splitlines() if "UUID:" in line]
    t0 = time.monotonic()
    while True:
        run = _api(api, f"/flow_runs/{flow_run_id}")
        if run["state"]["type"] in ("COMPLETED", "FAILED", "CRASHED", "CANCELLED"):
            break
        if time.monotonic() - t0 > RUN_TIMEOUT_S:
            break
        time.sleep(3)
    print(f"pipeline flow run {flow_run_id}: {run['state']['type']} after {time.monotonic() - t0:.0f} s")
    return {"id": flow_run_id, "run": run, "out_dir": out_dir, "api": api, "state": state, "home": home}


def _worker_logs(home: Path) -> str:
    return "\n".join(f"--- {p.name}\n" + p.read_text()[-2500:] for p in sorted((home / "logs").glob("worker-*.log")))


def test_pipeline_completes_with_gpu_stages_as_subflows(pipeline_run):
    run, api = pipeline_run["run"], pipeline_run["api"]
    assert run["state"]["type"] == "COMPLETED", (run["state"], _worker_logs(pipeline_run["home"]))
    dep = _api(api, f"/deployments/{run['deployment_id']}")
    assert dep["name"] == "cpu" and dep["work_pool_name"] == "cpu"
    assert run["work_pool_name"] == "cpu"

    children = _api(api, "/flow_runs/filter", {"flow_runs": {"parent_flow_run_id": {"any_": [pipeline_run["id"]]}}})
    flows = {f["id"]: f["name"] for f in _api(api, "/flows/filter", {})}
    by_flow = {flows[c["flow_id"]]: c for c in children}
    # GPU stages went through run_deployment onto pool gpu; prepare/evaluate ran in-process
    assert set(GPU_DEPLOYMENTS) <= set(by_flow), sorted(by_flow)
    for name, pool in GPU_DEPLOYMENTS.items():
        child = by_flow[name]
        assert child["state"]["type"] == "COMPLETED", (name, child["state"])
        assert child["deployment_id"], name
        assert _api(api, f"/deployments/{child['deployment_id']}")["work_pool_name"] == pool
        assert child["work_pool_name"] == pool
    for name in ("prepare-data", "evaluate"):
        assert by_flow[name]["deployment_id"] is None and by_flow[name]["state"]["type"] == "COMPLETED"

    results = json.loads((pipeline_run["out_dir"] / "results.json").read_text())
    assert set(results["stages"]) == {"teacher", "student", "round-1"}
    assert results["champion"] in {"student", "round-1"}
    assert results["tracking_uri"] == pipeline_run["state"]["urls"]["mlflow"]


def test_mlflow_parent_and_nested_stage_runs(pipeline_run):
    from mlflow import MlflowClient

    assert pipeline_run["run"]["state"]["type"] == "COMPLETED"
    uri = pipeline_run["state"]["urls"]["mlflow"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("aligncap.role") == "parent"]
    assert len(parents) == 1, [r.data.tags for r in runs]
    parent = parents[0]
    assert parent.data.tags["prefect.flow_run_id"] == pipeline_run["id"]
    assert parent.info.status == "FINISHED"
    children = {r.data.tags["aligncap.stage"]: r for r in runs
                if r.data.tags.get("mlflow.parentRunId") == parent.info.run_id}
    assert {"prepare", "teacher", "distill", "round-1"} <= set(children), sorted(children)
    # stages on the gpu worker logged into the same tree, tagged with the pipeline's flow run
    for name in ("teacher", "distill", "round-1"):
        assert children[name].data.tags.get("prefect.flow_run_id") == pipeline_run["id"]
        assert children[name].info.status == "FINISHED"
    assert "train/loss" in children["teacher"].data.metrics
    assert any(k.startswith("eval/valid/") for k in children["distill"].data.metrics)
    assert client.get_model_version_by_alias("aligncap-sec", "champion").tags["stage"] in {"student", "round-1"}


def _s3_keys(state: dict, prefix: str) -> list[str]:
    env = state["env"]
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                      aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=state["bucket"], Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_results_and_artifacts_in_s3(pipeline_run):
    state = pipeline_run["state"]
    assert state["env"]["PREFECT_RESULTS_DEFAULT_STORAGE_BLOCK"] == "s3-bucket/aligncap-results"
    assert pipeline_run["run"]["state"]["type"] == "COMPLETED"
    results = _s3_keys(state, "prefect-results/")
    # every stage's cache record (aligncap-<stage>-<hash>) and the flows' return values
    for stage in ("synth", "prepare", "clues", "tokenize", "teacher", "distill", "candidates", "evaluate"):
        assert any(k.split("/")[-1].startswith(f"aligncap-{stage}-") for k in results), (stage, results)
    assert len(results) >= 12, results
    assert not list((Path(state["home"]) / "prefect" / "results").rglob("*")), "results went to the local folder"

    mlflow_keys = _s3_keys(state, "mlflow/")
    assert any(k.endswith("/artifacts/results.json") for k in mlflow_keys), mlflow_keys
    assert any("/artifacts/champion/" in k and k.endswith("meta.json") for k in mlflow_keys), mlflow_keys


# ---- the two UIs in a headless Chromium ------------------------------------------------------
@pytest.fixture(scope="module")
def chromium():
    return browser.chromium_or_skip()


def test_prefect_ui_shows_deployments_and_run(pipeline_run, chromium, tmp_path):
    ui = pipeline_run["state"]["urls"]["prefect_ui"]
    text = browser.page_text(chromium, f"{ui}/deployments", tmp_path, wait_for=["train-teacher", "self-improve"])
    for name in ("aligncap-pipeline", "prepare-data", "train-teacher", "distill", "self-improve", "evaluate"):
        assert name in text, f"{name} not on {ui}/deployments"
    shot = browser.screenshot(chromium, f"{ui}/deployments", tmp_path / "prefect-deployments.png")
    run = pipeline_run["run"]
    text = browser.page_text(chromium, f"{ui}/runs/flow-run/{run['id']}", tmp_path, wait_for=[run["name"]])
    assert run["name"] in text and "Completed" in text
    print(f"screenshot: {shot}")


def test_mlflow_ui_shows_runs(pipeline_run, chromium, tmp_path):
    from mlflow import MlflowClient

    uri = pipeline_run["state"]["urls"]["mlflow"]
    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name(EXPERIMENT)
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("aligncap.role") == "parent"]
    # the experiment's run table: the parent row (children fold under it) and the run count
    url = f"{uri}/#/experiments/{exp.experiment_id}/runs"
    text = browser.page_text(chromium, url, tmp_path, wait_for=["matching runs"])
    assert EXPERIMENT in text and parent.info.run_name in text, f"runs not on {url}"
    assert f"{len(runs)} matching runs" in text, f"{len(runs)} runs expected on {url}"
    print(f"screenshot: {browser.screenshot(chromium, url, tmp_path / 'mlflow-experiment.png')}")
    # the parent run's page: its Prefect flow-run tag and its child runs per stage and round
    url = f"{uri}/#/experiments/{exp.experiment_id}/runs/{parent.info.run_id}"
    text = browser.page_text(chromium, url, tmp_path, wait_for=[pipeline_run["id"], "round-1"])
    for want in (pipeline_run["id"], "Child runs", "teacher", "distill", "round-1"):
        assert want in text, f"{want!r} not on {url}"
