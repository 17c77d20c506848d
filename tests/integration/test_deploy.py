"""The deployed pipeline on a real stack: `aligncap up --s3` (Prefect server, MLflow server, moto
S3, prefect.yaml deployed, and a cpu and a gpu process worker, each in its own empty folder:
working directory, cache, temporary files, Prefect home; nothing shared but the three services),
`prefect deployment run aligncap-pipeline/cpu` with micro parameters, then what a user would
check: the flow run and its GPU subflows in Prefect, the nested runs in MLflow, stage outputs in
the artifact store on S3 (and in each worker's own cache, downloaded, not read from the other's
disk), the champion in the store and the registry, both UIs in a headless Chromium; then the
nightly `self-improve/gpu` deployment run twice in a row (triggered, not waiting for cron), and
once more with an unreachable min_delta.

One stack and one pipeline run per module (6-9 min on a busy 2-core machine: ~40 s `up`, the
pipeline mostly codec calibration + tokenizing and the start-up of the flow-run processes, then
the three nightly runs, ~70 s each).
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

from tests.helpers import browser
from tests.helpers.stack import clean_env, running_stack

pytestmark = pytest.mark.integration

PIPELINE = "aligncap-pipeline/cpu"
GPU_DEPLOYMENTS = {"train-teacher": "gpu", "distill": "gpu", "self-improve": "gpu"}
EXPERIMENT = "deploy-test"
MICRO_TRAIN = {"lr": 3e-3, "warmup_steps": 2, "batch_size": 8, "eval_every": 0, "eval_batches": 2,
               "checkpoint_every": 0, "num_threads": 1, "log_every": 2}
RUN_TIMEOUT_S = 480


def _api(api: str, path: str, body: dict | None = None):
    """One Prefect API call. A GET (a poll: nothing changes on the server) is tried up to three
    times, 30 s each: with both cores busy running a flow, the server (SQLite) has once taken
    longer than 10 s to answer one, which says nothing about the flows under test."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"{api}{path}", data=data, method="GET" if body is None else "POST",
                                 headers={"Content-Type": "application/json"})
    tries = 3 if body is None else 1
    for attempt in range(tries):
        try:
            with urllib.request.urlopen(req, timeout=30) as r:
                return json.load(r)
        except TimeoutError:
            if attempt == tries - 1:
                raise


# CIDEr: defined for any caption (the micro models' captions may assert no attribute at all,
# which leaves the default metric's hallucination rate undefined), so the nightly runs compare
# real numbers
IMPROVE = {"rounds": 1, "select_metric": "cider",
           "patience": 0, "n": 2, "max_new_tokens": 12, "clips_per_round": 6, "min_margin": 0.0,
           "dpo": {"max_steps": 2, "batch_size": 4, "learning_rate": 5e-3, "max_length": 256}}
EVALUATION = {"limit": 3, "realdata": None, "max_new_tokens": 12, "meteor": False, "kl_gap": False,
              "batch_size": 4}


def _params() -> dict:
    """Flow parameters that make the whole pipeline tiny (flows/params.py). out_dir stays the
    default, relative: each flow run works in the empty folder its worker gives it."""
    return {
        "data": {"synth_n": 24, "synth_workers": 1, "n_q": 1},
        "teacher": {"preset": "micro", "train": {**MICRO_TRAIN, "max_steps": 8}},
        "student": {"train": {**MICRO_TRAIN, "max_steps": 6}},
        "improve": IMPROVE,
        "evaluation": EVALUATION,
        "tracking": {"experiment": EXPERIMENT},
    }


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("deploy-stack")
    with running_stack(home, deploy=True) as (state, _):
        assert state["deploy"] == "ok", (home / "logs" / "deploy.log").read_text()[-3000:]
        yield home, state


def _deployment_run(state: dict, deployment: str, params: dict, cwd: Path) -> tuple[str, dict, float]:
    """`prefect deployment run DEPLOYMENT --params ...` (from `cwd`); waits for a final state.
    Returns (flow run id, flow run, seconds)."""
    api = state["urls"]["prefect_api"]
    env = {**clean_env(), **state["env"]}
    r = subprocess.run([str(Path(sys.executable).parent / "prefect"), "--no-prompt", "deployment", "run",
                        deployment, "--params", json.dumps(params)],
                       capture_output=True, text=True, env=env, cwd=cwd, timeout=120)
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
    seconds = time.monotonic() - t0
    print(f"{deployment} flow run {flow_run_id}: {run['state']['type']} after {seconds:.0f} s")
    return flow_run_id, run, seconds


def _mlflow(state: dict):
    from mlflow import MlflowClient

    uri = state["urls"]["mlflow"]
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def _parent_of(client, flow_run_id: str):
    exp = client.get_experiment_by_name(EXPERIMENT)
    (run,) = client.search_runs([exp.experiment_id], f"tags.`prefect.flow_run_id` = '{flow_run_id}' "
                                "and tags.`aligncap.role` = 'parent'")
    return run


@pytest.fixture(scope="module")
def pipeline_run(stack, tmp_path_factory):
    """Start aligncap-pipeline/cpu from the CLI with micro parameters; wait for a final state.
    results.json comes back through MLflow (the flow run's folder is gone with it)."""
    home, state = stack
    caller = tmp_path_factory.mktemp("caller")  # the CLI runs from an empty folder too
    flow_run_id, run, seconds = _deployment_run(state, PIPELINE, _params(), caller)
    results = None
    if run["state"]["type"] == "COMPLETED":
        parent = _parent_of(_mlflow(state), flow_run_id)
        path = _mlflow(state).download_artifacts(parent.info.run_id, "results.json", str(caller))
        results = json.loads(Path(path).read_text())
    return {"id": flow_run_id, "run": run, "results": results, "api": state["urls"]["prefect_api"],
            "state": state, "home": home, "seconds": seconds}


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

    results = pipeline_run["results"]
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
    # the pipeline's parent run (the nightly self-improve runs of this module add their own)
    parents = [r for r in runs if r.data.tags.get("aligncap.role") == "parent"
               and r.data.tags.get("prefect.flow") == "pipeline"]
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


def _s3(state: dict):
    env = state["env"]
    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_DEFAULT_REGION"],
                        aws_access_key_id=env["AWS_ACCESS_KEY_ID"], aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"])


def _etags(state: dict, prefix: str) -> dict[str, str]:
    pages = _s3(state).get_paginator("list_objects_v2").paginate(Bucket=state["bucket"], Prefix=prefix)
    return {o["Key"]: o["ETag"] for page in pages for o in page.get("Contents", [])}


def _s3_keys(state: dict, prefix: str) -> list[str]:
    return list(_etags(state, prefix))


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


def _store_prefix(state: dict, uri: str) -> str:
    bucket = f"s3://{state['bucket']}/"
    assert uri.startswith(bucket + "store/"), uri
    return uri[len(bucket):].rstrip("/") + "/"


def test_stages_hand_off_through_the_store_not_a_shared_disk(pipeline_run):
    """Every stage output is a committed artifact in s3://BUCKET/store under its key; the gpu
    worker got the data, and the cpu worker the checkpoints it evaluated, by downloading them
    into their own caches; neither worker folder holds a run folder (flow runs work in
    temporary folders); the champion is in the store and the registry."""
    assert pipeline_run["run"]["state"]["type"] == "COMPLETED"
    state, home, results = pipeline_run["state"], pipeline_run["home"], pipeline_run["results"]
    assert state["env"]["ALIGNCAP_STORE"] == f"s3://{state['bucket']}/store"
    assert results["store"] == state["env"]["ALIGNCAP_STORE"]
    keys = set(_s3_keys(state, "store/"))
    uris = {"data": results["data"], **results["checkpoints"]}
    for name, uri in uris.items():
        assert uri.startswith("s3://"), (name, uri)
        assert _store_prefix(state, uri) + "_artifact.json" in keys, (name, uri)
    for stage in ("data", "teacher", "student", "improve", "eval"):
        assert any(k.startswith(f"store/{stage}/") and k.endswith("_artifact.json") for k in keys), stage
    # downloaded into each worker's own cache, checked against the manifests
    def cached(pool: str) -> set[str]:
        root = home / "workers" / pool / "cache" / "artifacts"
        return {json.loads((p / "_artifact.json").read_text())["content"] for p in root.iterdir()
                if (p / "_artifact.json").is_file()} if root.is_dir() else set()

    def content(uri: str) -> str:
        obj = _s3_object(state, _store_prefix(state, uri) + "_artifact.json")
        return json.loads(obj)["content"]

    assert content(results["data"]) in cached("gpu"), "the gpu worker did not download the data"
    assert content(results["checkpoints"]["round-1"]) in cached("cpu"), "the cpu worker did not download round-1"
    for pool in ("cpu", "gpu"):
        assert sorted(p.name for p in (home / "workers" / pool).iterdir()) == ["cache", "prefect", "tmp"], pool
    # the champion: a registered version whose checkpoint is a committed artifact of the store
    mv = _mlflow(state).get_model_version_by_alias("aligncap-sec", "champion")
    assert str(mv.version) == results["champion_version"] and mv.tags["stage"] == results["champion"]
    assert mv.tags["uri"] == results["champion_checkpoint"] == results["checkpoints"][results["champion"]]
    assert _store_prefix(state, mv.tags["uri"]) + "_artifact.json" in keys
    assert mv.tags["data"] == results["data"]


def _s3_object(state: dict, key: str) -> bytes:
    return _s3(state).get_object(Bucket=state["bucket"], Key=key)["Body"].read()


def _version_files(state: dict, mv) -> dict[str, str]:
    """(key -> ETag) of every object behind a model version: its MLflow artifacts (the server
    proxies mlflow-artifacts:/ to s3://BUCKET/mlflow) and its checkpoint in the store."""
    assert mv.source.startswith("mlflow-artifacts:/"), mv.source
    files = _etags(state, "mlflow/" + mv.source.removeprefix("mlflow-artifacts:/").strip("/") + "/")
    files.update(_etags(state, _store_prefix(state, mv.tags["uri"])))
    assert any(k.endswith("meta.json") for k in files), files
    return files


def test_nightly_self_improve_twice_moves_the_champion_only_on_improvement(pipeline_run, tmp_path):
    """`self-improve/gpu` (the nightly deployment) triggered twice in a row: each run starts from
    the registered champion version, registers a new version and moves the alias only when a
    round beats it on valid by min_delta (its decision is on its MLflow run), and the files of
    the first champion stay exactly as they were.

    The micro models caption too poorly for CIDEr to move, so the nights rank by the speech-text
    KL gap, which every DPO step changes: night 1 prefers it higher, night 2 lower. Whatever
    night 1 decides, one of the two nights must then find an improvement (when night 1 keeps the
    champion, night 2 repeats night 1's round under the opposite ranking), so the test always
    sees a version registered and the alias moved. A third run asks for an improvement no round
    can reach (min_delta 1e6): it must keep the champion and register nothing."""
    assert pipeline_run["run"]["state"]["type"] == "COMPLETED"
    state = pipeline_run["state"]
    client = _mlflow(state)
    name = "aligncap-sec"
    first = client.get_model_version_by_alias(name, "champion")
    first_files = _version_files(state, first)
    decisions = []
    for night, metric, min_delta in ((1, "kl_gap", 0.0), (2, "-kl_gap", 0.0), (3, "kl_gap", 1e6)):
        params = {"improve": {**IMPROVE, "select_metric": metric, "min_delta": min_delta},
                  "evaluation": {**EVALUATION, "kl_gap": True}, "tracking": {"experiment": EXPERIMENT}}
        before = {str(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
        alias = str(client.get_model_version_by_alias(name, "champion").version)
        flow_run_id, run, seconds = _deployment_run(state, "self-improve/gpu", params, tmp_path)
        assert run["state"]["type"] == "COMPLETED", (night, run["state"], _worker_logs(pipeline_run["home"]))
        assert run["work_pool_name"] == "gpu"
        tags = _parent_of(client, flow_run_id).data.tags
        print(f"night {night} ({seconds:.0f} s):", {k: v for k, v in tags.items() if k.startswith("aligncap.improve")})
        assert tags["aligncap.improve.start_version"] == alias  # from the registered version
        start, best = float(tags["aligncap.improve.start_score"]), float(tags["aligncap.improve.best_score"])
        improved = best > start + float(tags["aligncap.improve.min_delta"])
        assert improved == (tags["aligncap.improve.best_stage"] != "champion")
        after = {str(v.version): v for v in client.search_model_versions(f"name = '{name}'")}
        now = str(client.get_model_version_by_alias(name, "champion").version)
        if improved:
            (new,) = set(after) - set(before)
            assert tags["aligncap.improve.registered_version"] == new == now
            assert after[new].tags["stage"] == tags["aligncap.improve.best_stage"]
        else:
            assert set(after) == set(before) and now == alias
            assert tags["aligncap.improve.registered_version"] == ""
        decisions.append(improved)
    assert any(decisions[:2]), "neither night found an improvement under opposite rankings"
    assert not decisions[2], "a round beat the champion by 1e6"
    assert _version_files(state, first) == first_files, "the first champion's artifacts changed"


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
    parent = _parent_of(client, pipeline_run["id"])  # the pipeline's (the nightly runs add theirs)
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
