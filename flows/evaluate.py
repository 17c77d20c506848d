"""Flow `evaluate`: score checkpoints on the prepared data's splits and an optional real-data
manifest; log one evaluation table per stage into its MLflow child run."""

from __future__ import annotations

from prefect import flow, get_run_logger

from flows.common import open_store, parent_run, run_stage
from flows.params import EvalParams, TrackingParams
from tasks import evaluate as evaluate_task
from tasks import log_evaluation

REALDATA = "realdata"


def teacher_metrics(ckpt: str) -> dict[str, dict]:
    """A text teacher cannot caption audio: it is reported by the validation metrics saved in its
    checkpoint (`{"valid": {"loss": ..., "ce": ...}}`)."""
    from aligncap_core.model.checkpoint import read_meta

    metrics = read_meta(ckpt).get("metrics", {})
    return {"valid": {k.split("/", 1)[1]: v for k, v in metrics.items() if k.startswith("valid/")}}


def evaluate_speech(ckpt: str, data_dir: str | None, out_dir: str, evaluation: EvalParams,
                    store: str, real_data: bool = True) -> dict[str, dict]:
    """{split: metrics} of one speech checkpoint on the data's splits and (`real_data`) on real
    data. The reports are keyed by what made them (STORE/eval/<key>), so an evaluation the
    preference rounds already ran is not run again."""
    by_split: dict[str, dict] = {}
    if data_dir:
        m, _ = run_stage(evaluate_task, ckpt, data_dir, out_dir, splits=list(evaluation.splits),
                         limit=evaluation.limit, settings=evaluation.settings(), store=store)
        by_split.update({s: m[s] for s in evaluation.splits if s in m})
    real = evaluation.realdata_manifest() if real_data else None
    if real:
        # one codes folder for every stage: they share the corpus codec, so the real clips are
        # encoded once per worker, not once per stage
        settings = {**evaluation.settings(), "codes_cache": f"{out_dir}/eval/realdata-codes",
                    "group_by": evaluation.realdata_group_by}
        m, _ = run_stage(evaluate_task, ckpt, real, out_dir, splits=None,
                         limit=evaluation.realdata_limit or evaluation.limit, settings=settings,
                         store=store)
        by_split[REALDATA] = m["all"]
        for key, metrics in m.items():  # per corpus: realdata/emodb, realdata/ravdess
            if evaluation.realdata_group_by and key.startswith(f"{evaluation.realdata_group_by}:"):
                by_split[f"{REALDATA}/{key.split(':', 1)[1]}"] = metrics
    return by_split


@flow(name="evaluate", persist_result=True)
def evaluate(checkpoints: dict[str, str], data_dir: str | None = None,
             out_dir: str = "runs/pipeline", evaluation: EvalParams = EvalParams(),
             tracking: TrackingParams = TrackingParams(),
             parent_run_id: str | None = None, store: str | None = None,
             realdata_stages: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """Evaluate each `{stage: checkpoint URI}`; returns `{stage: {split: metrics}}`.

    Splits: `evaluation.splits` of the prepared data at `data_dir` (a URI; absent splits are
    skipped) and, when the file exists, `evaluation.realdata` as split "realdata" for the stages
    named in `realdata_stages` (empty: every speech stage). Reports go to the artifact store
    (STORE/eval/<key>).
    """
    from aligncap_core.model.checkpoint import read_meta

    st = open_store(store, out_dir)
    results: dict[str, dict[str, dict]] = {}
    with parent_run(tracking, out_dir, "evaluate", parent_run_id) as t:
        for stage, ckpt in checkpoints.items():
            if read_meta(ckpt).get("stage") == "teacher":
                results[stage] = teacher_metrics(ckpt)
            else:
                real = realdata_stages is None or stage in realdata_stages
                results[stage] = evaluate_speech(ckpt, data_dir, out_dir, evaluation, st.root, real)
            if results[stage]:
                log_evaluation(results[stage], stage, t.parent_run_id, t.uri)
            get_run_logger().info("evaluated %s: %s", stage, sorted(results[stage]))
    return results
