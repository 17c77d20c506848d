"""GPU flow `self-improve`: SpeechAlign-style preference rounds, each a chain of tasks
candidates -> judge -> pairs -> DPO -> evaluate, continuing from a checkpoint or the MLflow
`champion`.

The round logic is `aligncap_core.improve.rounds.self_improve`'s, with each step a cached task
so the Prefect UI shows (and a re-run skips) every step of every round: round k+1 samples from,
and uses as its DPO reference, round k's policy; a round without preference pairs keeps the
policy; the loop stops after `rounds` or when the selection score has not improved for
`patience` rounds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common import exists, parent_run, run_stage
from flows.evaluate import report_path
from flows.params import EvalParams, ImproveParams, TrackingParams
from tasks import (
    build_pairs,
    dpo_round,
    evaluate,
    generate_candidates,
    judge,
    log_evaluation,
    register,
    resolve_champion,
)


@flow(name="self-improve", persist_result=True)
def self_improve(data_dir: str = "runs/pipeline/data", out_dir: str = "runs/pipeline",
                 start_checkpoint: str | None = None, start_stage: str = "start",
                 improve: ImproveParams = ImproveParams(), evaluation: EvalParams = EvalParams(),
                 tracking: TrackingParams = TrackingParams(),
                 parent_run_id: str | None = None) -> dict[str, Any]:
    """Run the preference rounds into OUT/rounds/round-k; returns {"start", "rounds": {stage:
    {"checkpoint", "metrics", "score", "pairs"}}, "best"}.

    start_checkpoint: the policy of round 0 (empty: the registered `champion`, downloaded when not
    on this machine); start_stage names it in reports (the pipeline passes "student").
    Standalone (the nightly schedule), the best round is registered as the new champion when it
    beats the starting policy; inside the pipeline, the pipeline picks the champion.
    """
    from aligncap_core.improve import ImproveConfig, RoundSelector, selection_score

    log = get_run_logger()
    out = Path(out_dir)
    cfg = improve.resolved(evaluation)
    settings = evaluation.settings()
    with parent_run(tracking, out_dir, "self-improve", parent_run_id, cfg) as t:
        if not start_checkpoint:
            champ = resolve_champion(str(out / "champion-start"), t.uri, tracking.model_name)
            start_checkpoint, start_stage = champ["checkpoint"], "champion"

        def assess(stage: str, ckpt: str) -> dict[str, dict]:
            path = report_path(out_dir, stage, "data")
            metrics, _ = run_stage(evaluate, ckpt, data_dir, path, splits=cfg["eval_splits"],
                                   limit=cfg["eval_limit"], settings=settings,
                                   output=lambda _: exists(path))
            log_evaluation(metrics, stage, t.parent_run_id, t.uri)
            return metrics

        m0 = assess(start_stage, start_checkpoint)
        sel = RoundSelector(ImproveConfig.from_dict(cfg), best={
            "stage": start_stage, "checkpoint": start_checkpoint,
            "score": selection_score(m0.get(cfg["select_split"]), cfg["select_metric"])})
        rounds: dict[str, dict] = {}
        policy = start_checkpoint
        for k in range(1, cfg["rounds"] + 1):
            if reason := sel.stop_reason():
                log.info(reason)
                break
            stage, rdir = f"round-{k}", out / "rounds" / f"round-{k}"
            cands, ran = run_stage(generate_candidates, policy, data_dir,
                                   str(rdir / "candidates.jsonl"), cfg, k, output=exists)
            judged, ran = run_stage(judge, cands, cfg["judge"], str(rdir / "judged.jsonl"),
                                    refresh=ran, output=exists)
            pairs, _ = run_stage(build_pairs, judged, cfg, str(rdir / "pairs.jsonl"), k, policy,
                                 refresh=ran, output=lambda r: exists(r["path"]))
            if pairs["n_pairs"] == 0:
                # nothing to learn from: the policy carries over and the round counts as stale
                log.warning("%s: no preference pairs; the policy is kept unchanged", stage)
                ckpt = policy
            else:
                ckpt, _ = run_stage(dpo_round, policy, pairs["path"], data_dir, str(rdir / "policy"),
                                    cfg, k, t.parent_run_id, t.uri, output=exists)
            metrics = assess(stage, ckpt)
            score = selection_score(metrics.get(cfg["select_split"]), cfg["select_metric"])
            rounds[stage] = {"checkpoint": ckpt, "metrics": metrics, "score": score,
                             "pairs": pairs["n_pairs"]}
            log.info("%s: %s = %s (best so far %s)", stage, cfg["select_metric"], score,
                     sel.best["score"])
            sel.update({"stage": stage, "checkpoint": ckpt, "score": score})
            policy = ckpt
        best = sel.best
        if t.owned and tracking.register_champion and best["stage"] in rounds:
            register(best["checkpoint"], best["stage"], str(out / "champion"), t.parent_run_id,
                     t.uri, tracking.model_name, best["score"])
    return {"start": {"stage": start_stage, "checkpoint": start_checkpoint, "metrics": m0},
            "rounds": rounds, "best": best}
