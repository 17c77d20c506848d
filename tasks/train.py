"""Training stages as Prefect tasks: the text teacher and the KD speech student (distill).

Configs cross the task boundary as plain dicts (the YAML form of TeacherConfig / StudentConfig)
and are validated by `from_dict` inside the task, where they are used.

Each run trains into its own folder `OUT_DIR/<run key>` (`train.identity`): the key is derived
from the resolved config, the data fingerprint (and the teacher checkpoint for the student) and
the stage's code version. So a run with a changed setting trains a new model beside the old one,
and the same settings find their folder again: the library resumes from its newest checkpoint, so
a Prefect retry (after an OOM kill or a preempted GPU node) continues instead of starting over.

On a worker with several GPUs the task starts the stage under `accelerate launch`, one DDP
process per GPU (`aligncap_core.train.launch`: $ALIGNCAP_NUM_PROCESSES, else every GPU the job
sees, which the gpu job templates set with gpu_count); with one GPU or none it trains in this
process, as before. Rank 0 logs into the stage's MLflow run either way.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from tasks.caching import checkpoint_fingerprint, make_key_fn, manifest_sha, path_key
from tasks.data import PERSIST, RELEASE
from tasks.tracking import stage_run, train_logger

# One retry: enough to resume after a killed worker, not so many that a real bug loops for hours.
TRAIN_RETRIES = dict(retries=1, retry_delay_seconds=10)


def _teacher_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [manifest_sha(p["data_dir"]), path_key(p["out_dir"]), p.get("config") or {}]


@task(name="train_teacher", cache_key_fn=make_key_fn("teacher", _teacher_inputs),
      **TRAIN_RETRIES, **PERSIST, **RELEASE)
def train_teacher(data_dir: str, out_dir: str, config: dict[str, Any] | None = None,
                  parent_run_id: str | None = None, tracking_uri: str | None = None) -> str:
    """Train the text teacher into OUT_DIR/<run key>; returns the best checkpoint's path.
    MLflow child run `teacher`."""
    from aligncap_core.train.config import TeacherConfig, from_dict, to_dict
    from aligncap_core.train.identity import keyed_run_dir
    from aligncap_core.train.launch import run_stage
    from aligncap_core.train.stages import teacher_identity

    cfg = from_dict(TeacherConfig, config)
    ident = teacher_identity(data_dir, cfg)
    run_dir = keyed_run_dir(out_dir, ident)
    params = {"data_dir": data_dir, "run_key": ident.key, **to_dict(cfg)}
    with stage_run(parent_run_id, "teacher", params, tracking_uri) as run, \
            train_logger(run, tracking_uri) as logger:
        spec = {"data_dir": data_dir, "out_dir": str(run_dir), "config": to_dict(cfg),
                "tracking": {"run_id": run, "uri": tracking_uri}}
        ckpt = run_stage("teacher", spec, logger=logger)
    get_run_logger().info("teacher: best checkpoint %s", ckpt)
    return ckpt


def _student_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [manifest_sha(p["data_dir"]), checkpoint_fingerprint(p["teacher_ckpt"]),
            path_key(p["out_dir"]), p.get("config") or {}]


@task(name="train_student", cache_key_fn=make_key_fn("distill", _student_inputs),
      **TRAIN_RETRIES, **PERSIST, **RELEASE)
def train_student(data_dir: str, teacher_ckpt: str, out_dir: str,
                  config: dict[str, Any] | None = None, parent_run_id: str | None = None,
                  tracking_uri: str | None = None) -> str:
    """Distil the teacher into the speech student (CE + lambda_kd * KL) in OUT_DIR/<run key>;
    returns the best checkpoint's path. MLflow child run `distill`."""
    from aligncap_core.train.config import StudentConfig, from_dict, to_dict
    from aligncap_core.train.identity import keyed_run_dir
    from aligncap_core.train.launch import run_stage
    from aligncap_core.train.stages import student_identity

    cfg = from_dict(StudentConfig, config)
    ident = student_identity(data_dir, teacher_ckpt, cfg)
    run_dir = keyed_run_dir(out_dir, ident)
    params = {"data_dir": data_dir, "teacher_checkpoint": teacher_ckpt, "run_key": ident.key,
              **to_dict(cfg)}
    with stage_run(parent_run_id, "distill", params, tracking_uri) as run, \
            train_logger(run, tracking_uri) as logger:
        spec = {"data_dir": data_dir, "teacher_ckpt": teacher_ckpt, "out_dir": str(run_dir),
                "config": to_dict(cfg), "tracking": {"run_id": run, "uri": tracking_uri}}
        ckpt = run_stage("student", spec, logger=logger)
    get_run_logger().info("distill: best checkpoint %s", ckpt)
    return ckpt
