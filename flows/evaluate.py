"""Flow `evaluate`: score checkpoints on the prepared data's splits and an optional real-data
manifest; log one evaluation table per stage into its MLflow child run."""

from __future__ import annotations

from pathlib import Path

from prefect import flow, get_run_logger

from flows.common import exists, parent_run, run_stage
from flows.params import EvalParams, TrackingParams
from tasks import evaluate as evaluate_task
from tasks import log_evaluation

REALDATA = "realdata"


def report_path(out_dir: str, stage: str, source: str) -> str:
    """Where the report of `stage` on `source` goes. One place, so the rounds' evaluations and
    the final one share paths, and therefore cache entries."""
    return str(Path(out_dir) / "eval" / stage / source / "report.json")


def teacher_metrics(ckpt: str) -> dict[str, dict]:
    """A text teacher cannot caption audio: it is reported by the validation metrics saved in its
    checkpoint (`{"valid": {"loss": ..., "ce": ...}}`)."""
    from aligncap_core.model.checkpoint import read_meta

    metrics = read_meta(ckpt).get("metrics", {})
    return {"valid": {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("valid/")}}


def evaluate_speech(stage: str, ckpt: str, data_dir: str | None, out_dir: str,
                    evaluation: EvalParams) -> dict[str, dict]:
    """{split: metrics} of one speech checkpoint on the data's splits and on real data."""
    from aligncap_core.improve.steps import present_splits

    by_split: dict[str, dict] = {}
    splits = present_splits(data_dir, evaluation.splits) if data_dir else []
    if splits:
        path = report_path(out_dir, stage, "data")
        m, _ = run_stage(evaluate_task, ckpt, data_dir, path, splits=splits, limit=evaluation.limit,
                         settings=evaluation.settings(), output=lambda _: exists(path))
        by_split.update({s: m[s] for s in splits})
    real = evaluation.realdata_manifest()
    if real:
        path = report_path(out_dir, stage, REALDATA)
        # one codes folder for every stage: they share the corpus codec, so the real clips are
        # encoded once per pipeline run, not once per stage
        settings = {**evaluation.settings(), "codes_cache": str(Path(out_dir) / "eval" / "realdata-codes"),
                    "group_by": evaluation.realdata_group_by}
        m, _ = run_stage(evaluate_task, ckpt, real, path, splits=None,
                         limit=evaluation.realdata_limit or evaluation.limit,
                         settings=settings, output=lambda _: exists(path))
        by_split[REALDATA] = m["all"]
        for key, metrics in m.items():  # per corpus: realdata/emodb, realdata/ravdess
            if evaluation.realdata_group_by and key.startswith(f"{evaluation.realdata_group_by}:"):
                by_split[f"{REALDATA}/{key.split(':', 1)[1]}"] = metrics
    return by_split


@flow(name="evaluate", persist_result=True)
def evaluate(checkpoints: dict[str, str], data_dir: str | None = "runs/pipeline/data",
             out_dir: str = "runs/pipeline", evaluation: EvalParams = EvalParams(),
             tracking: TrackingParams = TrackingParams(),
             parent_run_id: str | None = None) -> dict[str, dict[str, dict]]:
    """Evaluate each `{stage: checkpoint}`; returns `{stage: {split: metrics}}`.

    Splits: `evaluation.splits` of `data_dir` (the absent ones skipped) and, when the file
    exists, `evaluation.realdata` as split "realdata". Reports go to OUT/eval/<stage>/.
    """
    results: dict[str, dict[str, dict]] = {}
    with parent_run(tracking, out_dir, "evaluate", parent_run_id) as t:
        for stage, ckpt in checkpoints.items():
            from aligncap_core.model.checkpoint import read_meta

            if read_meta(ckpt).get("stage") == "teacher":
                results[stage] = teacher_metrics(ckpt)
            else:
                results[stage] = evaluate_speech(stage, ckpt, data_dir, out_dir, evaluation)
            if results[stage]:
                log_evaluation(results[stage], stage, t.parent_run_id, t.uri)
            get_run_logger().info("evaluated %s: %s", stage, sorted(results[stage]))
    return results
