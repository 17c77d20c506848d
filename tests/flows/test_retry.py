"""A Prefect retry of a crashed training task resumes from its checkpoint, in the same MLflow
child run, and no secret from the environment reaches the flow run's parameters or logs.

The crash is injected (raised once, right after the first attempt wrote its second checkpoint),
standing in for a lost worker; everything else is the real task, stage, loop and MLflow store.
"""

from __future__ import annotations

import json
import time

from aligncap_core import tracking as T
from aligncap_core.train import loop
from tests.helpers.training import make_corpus

SECRET = "sk-retry-test-3f9c1e7d2b8a4c6e"
TEACHER = {"preset": "micro", "train": {
    "lr": 3e-3, "warmup_steps": 2, "max_steps": 12, "batch_size": 8, "eval_every": 0,
    "checkpoint_every": 4, "early_stopping_patience": 0, "log_every": 1, "num_threads": 1}}


def test_retried_training_task_resumes_in_the_same_mlflow_run(tmp_path, monkeypatch):
    from mlflow import MlflowClient
    from prefect import flow, get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        LogFilter,
        LogFilterFlowRunId,
    )

    from tasks.train import train_teacher

    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("ALIGNCAP_PROGRESS_EVERY_S", "0")  # a progress line per step
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    data = make_corpus(tmp_path / "data")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    parent = T.start_parent_run(T.experiment_for("retry-test", uri=uri), "pipeline", uri=uri)

    real_prune, saves = loop._prune, []

    def crash_once(run_dir, keep_last, keep):
        real_prune(run_dir, keep_last, keep)
        saves.append(sorted(p.name for p in run_dir.glob("step-*")))
        if len(saves) == 2:
            raise RuntimeError("injected crash: worker lost after step 8")

    monkeypatch.setattr(loop, "_prune", crash_once)

    @flow(name="retry-test")
    def train(out: str) -> str:
        task = train_teacher.with_options(retry_delay_seconds=0, cache_policy=None)
        return task(str(data), out, TEACHER, parent_run_id=parent, tracking_uri=uri)

    state = train(str(tmp_path / "teacher"), return_state=True)
    ckpt = state.result()
    assert ckpt.endswith("step-00000012")

    # one task run, two attempts; the second resumed at step 8 (one more save: step 12)
    with get_client(sync_client=True) as client:
        flow_filter = FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        (task_run,) = client.read_task_runs(flow_run_filter=flow_filter)
        flow_run = client.read_flow_run(state.state_details.flow_run_id)
        # run logs reach the API from a background sender: wait for this run's to arrive
        log_filter = LogFilter(flow_run_id=LogFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        deadline = time.monotonic() + 30
        while True:  # until the stage's last progress line is in
            logs = client.read_logs(log_filter=log_filter, limit=200)
            if any("12/12 (100%)" in (log.message or "") for log in logs) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    assert task_run.run_count == 2 and task_run.state.is_completed()
    assert len(saves) == 3 and saves[1][-1] == "step-00000008" and saves[2][-1] == "step-00000012"

    # the retried stage reopened its MLflow child run; the loss history has each step once
    c = MlflowClient(uri)
    children = c.search_runs([c.get_run(parent).info.experiment_id],
                             filter_string=f"tags.mlflow.parentRunId = '{parent}'")
    assert [r.info.run_name for r in children] == ["teacher"]
    steps = [m.step for m in c.get_metric_history(children[0].info.run_id, "train/loss")]
    assert sorted(steps) == list(range(1, 13)), steps  # a restart would have logged 1..8 twice
    assert children[0].info.status == "FINISHED"

    # the library's progress lines reach the task run's logs in the API (tasks.logs): what a
    # user watching the run in the Prefect UI sees of a long stage; the retry resumed at step 8
    steps = [log.message for log in logs if log.task_run_id == task_run.id
             and log.name == "aligncap_core.progress"]
    assert any(m.startswith("teacher") and "/12 (" in m and "eta" in m for m in steps), steps
    assert steps[-1].startswith("teacher") and ": 12/12 (100%)" in steps[-1] and steps[-1].endswith("eta 0:00:00")

    # the secret in the environment is nowhere in what Prefect stored for the run
    assert SECRET not in json.dumps(flow_run.parameters, default=str)
    assert SECRET not in json.dumps(task_run.model_dump(mode="json"), default=str)
    assert logs and not any(SECRET in (log.message or "") for log in logs)
