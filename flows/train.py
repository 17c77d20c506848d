"""GPU flows `train-teacher` and `distill`: one training task each, deployable to pool `gpu`.

They take the prepared data's URI (what `prepare-data` returned) and return checkpoint URIs of
the artifact store, so the worker that runs them needs no disk in common with any other.
"""

from __future__ import annotations

from prefect import flow

from flows.common import exists, open_store, parent_run, run_stage
from flows.params import StudentParams, TeacherParams, TrackingParams
from tasks import train_student
from tasks import train_teacher as train_teacher_task


def _need_data(flow_name: str, data_dir: str | None) -> str:
    if not data_dir:
        raise ValueError(f"{flow_name}: data_dir is empty; pass the data URI that prepare-data "
                         "returned (STORE/data/<key>)")
    return data_dir


@flow(name="train-teacher", persist_result=True)
def train_teacher(data_dir: str | None = None, out_dir: str = "runs/pipeline",
                  teacher: TeacherParams = TeacherParams(),
                  tracking: TrackingParams = TrackingParams(),
                  parent_run_id: str | None = None, store: str | None = None) -> str:
    """Train the text teacher into OUT/teacher/<run key> (one folder per settings and data),
    published to the artifact store; returns its best checkpoint's URI."""
    data_dir = _need_data("train-teacher", data_dir)
    st = open_store(store, out_dir)
    with parent_run(tracking, out_dir, "train-teacher", parent_run_id) as t:
        ckpt, _ = run_stage(train_teacher_task, data_dir, out_dir, teacher.resolved(),
                            parent_run_id=t.parent_run_id, tracking_uri=t.uri, store=st.root,
                            output=exists)
    return ckpt


@flow(name="distill", persist_result=True)
def distill(data_dir: str | None = None, teacher_ckpt: str = "",
            out_dir: str = "runs/pipeline", student: StudentParams = StudentParams(),
            tracking: TrackingParams = TrackingParams(),
            parent_run_id: str | None = None, store: str | None = None) -> str:
    """Distil `teacher_ckpt` into the speech student at OUT/student/<run key> (one folder per
    settings, data and teacher), published to the artifact store; returns its best checkpoint's
    URI."""
    data_dir = _need_data("distill", data_dir)
    if not teacher_ckpt:
        raise ValueError("distill: teacher_ckpt is empty; pass the checkpoint train-teacher returned")
    st = open_store(store, out_dir)
    with parent_run(tracking, out_dir, "distill", parent_run_id) as t:
        ckpt, _ = run_stage(train_student, data_dir, teacher_ckpt, out_dir, student.resolved(),
                            parent_run_id=t.parent_run_id, tracking_uri=t.uri, store=st.root,
                            output=exists)
    return ckpt
