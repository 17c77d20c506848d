"""MLflow runs for the pipeline: one experiment per project, a parent run per flow run, one child
run per stage or preference round.

Every function takes and returns run ids (strings), never active-run state, so a stage running
in another process or on another worker (a Prefect task, a GPU deployment) attaches to the same
parent by passing the id along. Child runs are linked with the `mlflow.parentRunId` tag, which is
what `mlflow.start_run(nested=True)` writes, so the UI nests them the same way.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from mlflow import MlflowClient
from mlflow.entities import Param, RunStatus
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_PARAMS_TAGS_PER_BATCH

from aligncap_core.errors import ConfigError
from aligncap_core.tracking.redact import flatten_params, redact_config

log = logging.getLogger("aligncap.tracking")

PARENT_RUN_TAG = "mlflow.parentRunId"
STAGE_TAG = "aligncap.stage"
FLOW_RUN_TAG = "prefect.flow_run_id"
ROLE_TAG = "aligncap.role"


def tracking_uri(config: Mapping[str, Any] | None = None, run_dir: str | os.PathLike | None = None) -> str:
    """The tracking URI: `config["tracking_uri"]`, else `$MLFLOW_TRACKING_URI`, else a SQLite file
    `<run_dir>/mlflow.db` (`run_dir` defaults to `./runs`), so the offline default needs no server."""
    uri = (config or {}).get("tracking_uri") or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return str(uri)
    base = Path(run_dir or "runs").resolve()
    base.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{base / 'mlflow.db'}"


def _default_artifact_location(uri: str) -> str | None:
    """Artifacts beside a local SQLite database (MLflow would otherwise use `./mlruns` of the
    current directory); `$ALIGNCAP_MLFLOW_ARTIFACT_ROOT` (e.g. `s3://bucket/mlflow`) wins. A
    tracking server picks its own location (`--artifacts-destination`)."""
    root = os.environ.get("ALIGNCAP_MLFLOW_ARTIFACT_ROOT")
    if root:
        return root
    if uri.startswith("sqlite:///"):
        return Path(uri.removeprefix("sqlite:///")).parent.joinpath("mlartifacts").resolve().as_uri()
    return None


def client(uri: str | None = None) -> MlflowClient:
    """A client for `uri` (default: `tracking_uri()`), with the model registry on the same store."""
    uri = uri or tracking_uri()
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def experiment_for(project_name: str, *, uri: str | None = None,
                   artifact_location: str | None = None) -> str:
    """The id of the experiment named `project_name`, created if missing (safe when two
    processes race to create it)."""
    uri = uri or tracking_uri()
    c = client(uri)
    exp = c.get_experiment_by_name(project_name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            raise ConfigError(
                f"MLflow experiment '{project_name}' is deleted at {uri}; restore it "
                f"(`mlflow experiments restore --experiment-id {exp.experiment_id}`) or use another project name")
        return exp.experiment_id
    try:
        return c.create_experiment(project_name, artifact_location=artifact_location or _default_artifact_location(uri))
    except MlflowException:
        exp = c.get_experiment_by_name(project_name)  # another process created it first
        if exp is None:
            raise
        return exp.experiment_id


def _find_run(c: MlflowClient, experiment_id: str, filters: Mapping[str, str]) -> str | None:
    query = " and ".join(f"tags.`{k}` = '{v}'" for k, v in filters.items())
    runs = c.search_runs([experiment_id], filter_string=query, max_results=1, order_by=["attributes.start_time ASC"])
    return runs[0].info.run_id if runs else None


def start_parent_run(experiment: str, run_name: str, tags: Mapping[str, Any] | None = None, *,
                     params: Mapping[str, Any] | None = None, uri: str | None = None) -> str:
    """Create the pipeline's parent run in experiment id `experiment`; returns its run id.

    With a `prefect.flow_run_id` tag, a parent already made for that flow run (a retried or
    resumed flow) is reopened instead of duplicated.
    """
    c = client(uri)
    tags = {k: str(v) for k, v in (tags or {}).items()}
    if tags.get(FLOW_RUN_TAG):
        found = _find_run(c, experiment, {FLOW_RUN_TAG: tags[FLOW_RUN_TAG], ROLE_TAG: "parent"})
        if found:
            resume_run(found, uri=uri)
            return found
    run = c.create_run(experiment, run_name=run_name, tags={**tags, ROLE_TAG: "parent"})
    if params:
        log_params(run.info.run_id, params, uri=uri)
    return run.info.run_id


def find_child_run(parent_run_id: str, stage: str, *, uri: str | None = None) -> str | None:
    """The id of the child run of `parent_run_id` tagged `aligncap.stage = stage`, or None."""
    c = client(uri)
    exp = c.get_run(parent_run_id).info.experiment_id
    return _find_run(c, exp, {PARENT_RUN_TAG: parent_run_id, STAGE_TAG: stage})


def start_child_run(parent_run_id: str, name: str, params: Mapping[str, Any] | None = None, *,
                    tags: Mapping[str, Any] | None = None, uri: str | None = None) -> str:
    """A child run of `parent_run_id` for stage `name` (`distill`, `round-2`, ...); returns its id.

    Works from any process that can reach the tracking store. A retried stage gets its existing
    child back (reopened, see `resume_run`) rather than a duplicate.
    """
    c = client(uri)
    try:
        parent = c.get_run(parent_run_id)
    except MlflowException as e:
        raise ConfigError(f"MLflow parent run {parent_run_id} not found at {uri or tracking_uri()}: "
                          f"pass the id returned by start_parent_run on the same tracking server") from e
    existing = find_child_run(parent_run_id, name, uri=uri)
    if existing:
        resume_run(existing, uri=uri)
        run_id = existing
    else:
        all_tags = {**{k: str(v) for k, v in (tags or {}).items()},
                    PARENT_RUN_TAG: parent_run_id, STAGE_TAG: name, ROLE_TAG: "stage"}
        flow_run = parent.data.tags.get(FLOW_RUN_TAG)
        if flow_run:
            all_tags.setdefault(FLOW_RUN_TAG, flow_run)
        run_id = c.create_run(parent.info.experiment_id, run_name=name, tags=all_tags).info.run_id
    if params:
        log_params(run_id, params, uri=uri)
    return run_id


def resume_run(run_id: str, *, uri: str | None = None) -> str:
    """Reopen run `run_id` (status RUNNING again) so a retried stage keeps logging into it."""
    c = client(uri)
    if c.get_run(run_id).info.status != RunStatus.to_string(RunStatus.RUNNING):
        c.update_run(run_id, status="RUNNING")
    return run_id


def end_run(run_id: str, status: str = "FINISHED", *, uri: str | None = None) -> None:
    """Mark a run FINISHED (or FAILED / KILLED)."""
    client(uri).set_terminated(run_id, status=status)


def log_params(run_id: str, params: Mapping[str, Any], *, uri: str | None = None) -> dict[str, str]:
    """Log a (nested) config as flat, redacted params; returns what was logged.

    MLflow params are immutable: keys already on the run (a resumed stage) are skipped, with a
    warning when the value changed, instead of failing the stage.
    """
    c = client(uri)
    flat = flatten_params(params)
    have = c.get_run(run_id).data.params
    changed = sorted(k for k, v in flat.items() if k in have and have[k] != v)
    if changed:
        log.warning("run %s: params already logged with other values, kept the old ones: %s",
                    run_id, ", ".join(changed[:10]))
    new = [Param(k, v) for k, v in flat.items() if k not in have]
    for i in range(0, len(new), MAX_PARAMS_TAGS_PER_BATCH):
        c.log_batch(run_id, params=new[i:i + MAX_PARAMS_TAGS_PER_BATCH])
    return flat


def log_config_artifact(resolved_config: Mapping[str, Any], run_id: str, *,
                        artifact_file: str = "config/resolved_config.yaml", uri: str | None = None) -> str:
    """Save the resolved config as YAML in the run's artifacts, secrets redacted; returns its
    `runs:/` URI."""
    # Through JSON first so paths, enums and dataclass leftovers become plain YAML scalars.
    plain = json.loads(json.dumps(redact_config(dict(resolved_config)), default=str))
    text = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
    client(uri).log_text(run_id, text, artifact_file)
    return f"runs:/{run_id}/{artifact_file}"
