"""MLflow child runs for tasks: one nested run per stage, found again by name on a retry.

Tasks get the parent run id and the tracking URI as strings (they may run in another process or
on a GPU worker); with no parent id, tracking is off and the stage runs untracked.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

# Pipeline stage -> its MLflow child run: the student is trained by the `distill` stage, so its
# evaluation and registration land on that run rather than on a run of their own.
RUN_NAMES = {"student": "distill"}


def run_name(stage: str) -> str:
    """The MLflow child run that holds `stage`'s training, evaluation and checkpoint."""
    return RUN_NAMES.get(stage, stage)


@contextlib.contextmanager
def stage_run(parent_run_id: str | None, stage: str, params: Mapping[str, Any] | None = None,
              uri: str | None = None) -> Iterator[str | None]:
    """Open (or reopen, on a retry) the child run `stage` of `parent_run_id`; yields its id.

    The run is marked FINISHED when the block exits and FAILED when it raises, so the MLflow UI
    shows which stage broke. Yields None when `parent_run_id` is None.
    """
    if not parent_run_id:
        yield None
        return
    from aligncap_core.tracking import end_run, start_child_run

    run_id = start_child_run(parent_run_id, stage, params=params, uri=uri)
    try:
        yield run_id
    except BaseException:
        end_run(run_id, "FAILED", uri=uri)
        raise
    end_run(run_id, "FINISHED", uri=uri)


@contextlib.contextmanager
def train_logger(run_id: str | None, uri: str | None) -> Iterator[Any]:
    """The training loop's logger: MLflow when tracked, else None (the stage's own JSONL file)."""
    if run_id is None:
        yield None
        return
    from aligncap_core.tracking import MlflowLogger

    with MlflowLogger(run_id, uri) as logger:
        yield logger
