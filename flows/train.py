"""GPU flows `train-teacher` and `distill`: one training task each, deployable to pool `gpu`."""

from __future__ import annotations

from pathlib import Path

from prefect import flow

from flows.common import exists, parent_run, run_stage
from flows.params import StudentParams, TeacherParams, TrackingParams
from tasks import train_student
from tasks import train_teacher as train_teacher_task


@flow(name="train-teacher", persist_result=True)
def train_teacher(data_dir: str = "runs/pipeline/data", out_dir: str = "runs/pipeline",
                  teacher: TeacherParams = TeacherParams(),
                  tracking: TrackingParams = TrackingParams(),
                  parent_run_id: str | None = None) -> str:
    """Train the text teacher into OUT/teacher/<run key> (one folder per settings and data);
    returns its best checkpoint path."""
    with parent_run(tracking, out_dir, "train-teacher", parent_run_id) as t:
        ckpt, _ = run_stage(train_teacher_task, data_dir, str(Path(out_dir) / "teacher"),
                            teacher.resolved(), parent_run_id=t.parent_run_id, tracking_uri=t.uri,
                            output=exists)
    return ckpt


@flow(name="distill", persist_result=True)
def distill(data_dir: str = "runs/pipeline/data", teacher_ckpt: str = "",
            out_dir: str = "runs/pipeline", student: StudentParams = StudentParams(),
            tracking: TrackingParams = TrackingParams(),
            parent_run_id: str | None = None) -> str:
    """Distil `teacher_ckpt` into the speech student at OUT/student/<run key> (one folder per
    settings, data and teacher); returns its best checkpoint."""
    if not teacher_ckpt:
        raise ValueError("distill: teacher_ckpt is empty; pass the checkpoint train-teacher returned")
    with parent_run(tracking, out_dir, "distill", parent_run_id) as t:
        ckpt, _ = run_stage(train_student, data_dir, teacher_ckpt, str(Path(out_dir) / "student"),
                            student.resolved(), parent_run_id=t.parent_run_id, tracking_uri=t.uri,
                            output=exists)
    return ckpt
