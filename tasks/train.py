"""Training stages as Prefect tasks: the text teacher and the KD speech student (distill).

Configs cross the task boundary as plain dicts (the YAML form of TeacherConfig / StudentConfig)
and are validated by `from_dict` inside the task, where they are used.

Inputs and outputs are URIs of the artifact store (`aligncap_core.store`): the task materializes
the data (and the teacher) on this worker, trains into OUT/<stage>/<run key> of its work folder
(`train.identity`: the key of the resolved config, the data fingerprint, the teacher checkpoint
and the stage's code version), publishes the best checkpoint to STORE/<stage>/<key>/step-N and
returns that URI, which any other worker can materialize. A changed setting trains a new model
beside the old one; the same settings find the committed output and return it at once (on any
worker, under the output's lock: a second run of the same key waits for the first). Within a
worker a Prefect retry resumes from the newest local checkpoint.

On a worker with several GPUs the task starts the stage under `accelerate launch`, one DDP
process per GPU (`aligncap_core.train.launch`: $ALIGNCAP_NUM_PROCESSES, else every GPU the job
sees, which the gpu job templates set with gpu_count); with one GPU or none it trains in this
process, as before. Rank 0 logs into the stage's MLflow run either way.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tasks.caching import checkpoint_fingerprint, make_key_fn, manifest_sha, store_key
from tasks.data import PERSIST, RELEASE
from tasks.tracking import stage_run, train_logger

# One retry: enough to resume after a killed worker, not so many that a real bug loops for hours.
TRAIN_RETRIES = dict(retries=1, retry_delay_seconds=10)


def train_and_publish(store: Any, stage: str, ident: Any, train: Callable[[Path], Path]) -> str:
    """The checkpoint URI of run `ident`: the committed one when STORE/<stage>/<key> exists,
    else `train(run_dir)` (returns its best checkpoint), published with the run's own files
    (run.json, config.yaml, metrics, train_summary.json) as STORE/<stage>/<key>."""
    rel = f"{stage}/{ident.key}"
    log = get_run_logger()
    with store.lock(rel, f"{stage} run {ident.key}"):
        done = store.committed(rel)
        if done is not None:
            log.info("%s %s: already in the store: %s", stage, ident.key, done["result"]["checkpoint"])
            return done["result"]["checkpoint"]
        run_dir = store.local(rel)
        best = train(run_dir)
        uri = store.publish(store.rel_of(best))
        checkpoints = tuple(p.name for p in run_dir.iterdir() if p.is_dir())  # step-*, base/
        store.publish(rel, skip=checkpoints, result={"checkpoint": uri, "key": ident.key})
    log.info("%s: best checkpoint %s", stage, uri)
    return uri


def _teacher_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [manifest_sha(p["data_dir"]), store_key(p.get("store"), p["out_dir"]), p.get("config") or {}]


@task(name="train_teacher", cache_key_fn=make_key_fn("teacher", _teacher_inputs),
      **TRAIN_RETRIES, **PERSIST, **RELEASE)
def train_teacher(data_dir: str, out_dir: str, config: dict[str, Any] | None = None,
                  parent_run_id: str | None = None, tracking_uri: str | None = None,
                  store: str | None = None) -> str:
    """Train the text teacher on the data at `data_dir` (a URI) into OUT_DIR/teacher/<run key>;
    returns the best checkpoint's URI in the store. MLflow child run `teacher`."""
    from aligncap_core.store import ArtifactStore
    from aligncap_core.train.config import TeacherConfig, from_dict, to_dict
    from aligncap_core.train.launch import run_stage
    from aligncap_core.train.stages import teacher_identity

    st = ArtifactStore.open(store, out_dir)
    data = st.materialize(data_dir)
    cfg = from_dict(TeacherConfig, config)
    ident = teacher_identity(data, cfg)
    params = {"data_dir": data_dir, "run_key": ident.key, **to_dict(cfg)}

    def train(run_dir: Path) -> Path:
        with stage_run(parent_run_id, "teacher", params, tracking_uri) as run, \
                train_logger(run, tracking_uri) as logger:
            spec = {"data_dir": str(data), "out_dir": str(run_dir), "config": to_dict(cfg),
                    "tracking": {"run_id": run, "uri": tracking_uri}}
            return Path(run_stage("teacher", spec, logger=logger))

    return train_and_publish(st, "teacher", ident, train)


def _student_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [manifest_sha(p["data_dir"]), checkpoint_fingerprint(p["teacher_ckpt"]),
            store_key(p.get("store"), p["out_dir"]), p.get("config") or {}]


@task(name="train_student", cache_key_fn=make_key_fn("distill", _student_inputs),
      **TRAIN_RETRIES, **PERSIST, **RELEASE)
def train_student(data_dir: str, teacher_ckpt: str, out_dir: str,
                  config: dict[str, Any] | None = None, parent_run_id: str | None = None,
                  tracking_uri: str | None = None, store: str | None = None) -> str:
    """Distil the teacher (a checkpoint URI) into the speech student (CE + lambda_kd * KL) in
    OUT_DIR/student/<run key>; returns the best checkpoint's URI. MLflow child run `distill`.
    The student's checkpoints name the teacher by its URI (their base), so they load anywhere."""
    from aligncap_core.store import ArtifactStore
    from aligncap_core.train.config import StudentConfig, from_dict, to_dict
    from aligncap_core.train.launch import run_stage
    from aligncap_core.train.stages import student_identity

    st = ArtifactStore.open(store, out_dir)
    data = st.materialize(data_dir)
    cfg = from_dict(StudentConfig, config)
    ident = student_identity(data, teacher_ckpt, cfg)
    params = {"data_dir": data_dir, "teacher_checkpoint": teacher_ckpt, "run_key": ident.key,
              **to_dict(cfg)}

    def train(run_dir: Path) -> Path:
        with stage_run(parent_run_id, "distill", params, tracking_uri) as run, \
                train_logger(run, tracking_uri) as logger:
            spec = {"data_dir": str(data), "teacher_ckpt": teacher_ckpt, "out_dir": str(run_dir),
                    "config": to_dict(cfg), "tracking": {"run_id": run, "uri": tracking_uri}}
            return Path(run_stage("student", spec, logger=logger))

    return train_and_publish(st, "student", ident, train)
