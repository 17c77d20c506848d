"""What every flow shares: the artifact store, the MLflow parent run, and reaching GPU stages
in-process or through their deployments.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from pydantic_core import to_jsonable_python

from flows.params import TrackingParams

# deployment of each GPU flow, "<flow name>/<deployment name>" as in prefect.yaml
DEPLOYMENTS = {
    "train-teacher": "train-teacher/gpu",
    "distill": "distill/gpu",
    "self-improve": "self-improve/gpu",
}


@dataclass
class Tracking:
    """The MLflow context a flow passes to its tasks and subflows (strings only)."""

    parent_run_id: str | None
    uri: str | None
    owned: bool  # this flow run created the parent run (and ends it)


@contextlib.contextmanager
def parent_run(tracking: TrackingParams, out_dir: str, name: str, parent_run_id: str | None,
               params: dict[str, Any] | None = None) -> Iterator[Tracking]:
    """The MLflow parent run of this flow run.

    Given `parent_run_id` (a subflow of the pipeline, maybe on another worker) it is used as is;
    otherwise a parent run `name` tagged with the Prefect flow-run id is created (or reopened on
    a retry of the same flow run) and ended FINISHED / FAILED with the flow.
    """
    if not tracking.enabled:
        yield Tracking(None, None, False)
        return
    uri = tracking.uri(out_dir)
    if parent_run_id:
        yield Tracking(parent_run_id, uri, False)
        return
    from prefect.runtime import flow_run

    from aligncap_core.tracking import FLOW_RUN_TAG, end_run, experiment_for, start_parent_run

    exp = experiment_for(tracking.experiment, uri=uri)
    run_id = start_parent_run(exp, name, tags={FLOW_RUN_TAG: flow_run.id or "", "prefect.flow": name},
                              params=params, uri=uri)
    get_run_logger().info("MLflow parent run %s (%s)", run_id, uri)
    try:
        yield Tracking(run_id, uri, True)
    except BaseException:
        end_run(run_id, "FAILED", uri=uri)
        raise
    end_run(run_id, "FINISHED", uri=uri)


def embedded_prefect_env() -> None:
    """Settings of an embedded run (`aligncap run`, `aligncap experiment ablation`)
    that the user did not set: no analytics, and 180 s for the ephemeral API server to start
    (its 20 s default is too short on a busy 2-core machine)."""
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")


def open_store(store: str | None, out_dir: str) -> Any:
    """The artifact store of this flow run: `store`, else $ALIGNCAP_STORE, else out_dir itself
    (`aligncap_core.store.ArtifactStore.open`); out_dir is this worker's work folder.

    A flow run started from a deployment runs in a temporary folder of its worker, which no other
    worker sees and which is deleted afterwards: a store there would lose every output, so it is
    refused with what to set instead."""
    from pathlib import Path

    from prefect.runtime import deployment

    from aligncap_core.errors import ConfigError
    from aligncap_core.store import ArtifactStore, is_remote

    st = ArtifactStore.open(store, out_dir)
    if deployment.id is not None and not is_remote(st.root) and Path(st.root).is_relative_to(Path.cwd().resolve()):
        raise ConfigError(
            f"the artifact store would be {st.root}, inside this flow run's temporary working folder "
            "(a deployment's flow runs start in an empty folder of their worker): set ALIGNCAP_STORE "
            "on every worker (s3://bucket/prefix, or a folder all of them mount), or pass `store`")
    return st


def deployments_enabled(use_deployments: bool | None) -> bool:
    """Whether GPU stages go through `run_deployment`. None = auto: yes when this flow run was
    itself started from a deployment (so a server and workers exist), no in embedded mode."""
    if use_deployments is not None:
        return use_deployments
    from prefect.runtime import deployment

    return deployment.id is not None


def call_stage(flow_fn: Callable[..., Any], use_deployments: bool, **parameters: Any) -> Any:
    """Run a GPU stage flow: through its deployment (pool `gpu`, linked here as a subflow) or
    in this process. Returns the flow's return value either way."""
    if not use_deployments:
        return flow_fn(**parameters)
    from prefect.deployments import run_deployment

    name = DEPLOYMENTS[flow_fn.name]
    get_run_logger().info("running %s on its deployment %s", flow_fn.name, name)
    run = run_deployment(name=name, parameters=to_jsonable_python(parameters), as_subflow=True,
                         timeout=None)
    if not run.state.is_completed():
        raise RuntimeError(f"deployment {name} ended {run.state.name}: {run.state.message} "
                           f"(flow run {run.id}); see its logs in the Prefect UI")
    # the child persisted its (small) return value to the shared result storage
    return run.state.result()


def run_stage(task: Any, *args: Any, output: Callable[[Any], bool] | None = None,
              refresh: bool = False, **kwargs: Any) -> tuple[Any, bool]:
    """Run a cached task; returns (result, ran) with ran=False for a cache hit.

    output(result) says whether what the result names is still there: a cache hit whose output
    was deleted is re-run with a refreshed cache (cache keys are computed before a stage runs,
    from its inputs, so they cannot know). refresh=True re-runs the stage regardless: the flows
    pass "the stage before me really ran" for stages that rewrite its output in place.
    """
    if refresh:
        return task.with_options(refresh_cache=True)(*args, **kwargs), True
    state = task(*args, return_state=True, **kwargs)
    result = state.result()
    if state.name != "Cached":
        return result, True
    if output is not None and not output(result):
        get_run_logger().warning("%s: cached result's output is gone; running it again", task.name)
        return task.with_options(refresh_cache=True)(*args, **kwargs), True
    return result, False


def exists(path: Any) -> bool:
    """`output` check for results that are a path or URI (a remote one: committed in the store)."""
    from tasks.caching import output_exists

    return output_exists(path)
