"""GPU flow `self-improve`: SpeechAlign-style preference rounds from a checkpoint or from the
registered `champion` (the nightly schedule).

The round loop is the library's (`aligncap_core.improve.self_improve`: layout, resume, early
stop, selection); this flow hands it its steps as cached Prefect tasks (`task_steps`), so the UI
shows every step of every round and a re-run skips finished ones. Outputs live under the run's
key (`improve_identity`: the starting checkpoint's content, the data, the settings), in
OUT/improve/<key>/round-k of the work folder and STORE/improve/<key>/round-k of the artifact
store: a night that starts from another champion writes elsewhere, so the files of a registered
champion are never touched. Evaluations are keyed the same way (STORE/eval/<key>), so the
pipeline's final evaluation reuses the rounds'.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.common import exists, open_store, parent_run, run_stage
from flows.params import EvalParams, ImproveParams, TrackingParams
from tasks import (
    build_pairs,
    dpo_round,
    evaluate,
    generate_candidates,
    judge,
    log_evaluation,
    publish,
    register,
    resolve_champion,
    round_clips,
    tag_run,
)


def task_steps(st: Any, data_uri: str, evaluation: EvalParams, t: Any) -> Any:
    """The library's `RoundSteps` as this flow's cached tasks: candidates, judgments and pairs
    stay in the work folder; the DPO checkpoint, the evaluation reports and each finished round
    are published to the store `st` (the checkpoint and the round by their URIs)."""
    from aligncap_core.improve import RoundSteps

    def clips(policy: str, data: str, out: str, cfg: dict, k: int) -> str:
        if cfg.get("augment") is None:  # the round samples the train clips: nothing to make
            return data
        return run_stage(round_clips, policy, data, out, cfg, k, output=exists)[0]

    def candidates(policy: str, data: str, out: str, cfg: dict, k: int) -> str:
        return run_stage(generate_candidates, policy, data, out, cfg, k, output=exists)[0]

    def judge_(cands: str, judge_cfg: dict, out: str) -> str:
        return run_stage(judge, cands, judge_cfg, out, output=exists)[0]

    def pairs(judged: str, cfg: dict, out: str, k: int, policy: str) -> dict:
        return run_stage(build_pairs, judged, cfg, out, k, policy, output=lambda r: exists(r["path"]))[0]

    def dpo(policy: str, pairs_path: str, data: str, out: str, cfg: dict, k: int) -> str:
        return run_stage(dpo_round, policy, pairs_path, data, out, cfg, k, t.parent_run_id, t.uri,
                         store=st.root, work=str(st.work), output=exists)[0]

    def evaluate_(ckpt: str, data: str, out_json: str, splits: list[str], limit: int | None) -> dict:
        # the data's URI, not this worker's copy: the same evaluation as the pipeline's final one
        return run_stage(evaluate, ckpt, data_uri, str(st.work), splits=splits, limit=limit,
                         settings=evaluation.settings(), store=st.root)[0]

    def round_done(round_dir: Path, record: dict) -> dict:
        # the round's files; its policy is an artifact of its own (published by `dpo`)
        publish(st.root, str(st.work), st.rel_of(round_dir),
                {"round": record["round"], "checkpoint": record["checkpoint"]}, skip=["policy"])
        return record

    return RoundSteps(clips=clips, candidates=candidates, judge=judge_, pairs=pairs, dpo=dpo,
                      evaluate=evaluate_, round_done=round_done)


@flow(name="self-improve", persist_result=True)
def self_improve(data_dir: str | None = None, out_dir: str = "runs/pipeline",
                 start_checkpoint: str | None = None, start_stage: str = "start",
                 improve: ImproveParams = ImproveParams(), evaluation: EvalParams = EvalParams(),
                 tracking: TrackingParams = TrackingParams(),
                 parent_run_id: str | None = None, store: str | None = None) -> dict[str, Any]:
    """Run the preference rounds; returns {"start", "rounds": {stage: {"checkpoint" (URI),
    "metrics", "score", "pairs"}}, "best", "key", "registered"}.

    start_checkpoint: the policy of round 0 (a URI). Empty: the registered `champion` version,
    downloaded from the registry (and, with `data_dir` empty too, the data it was trained on).
    start_stage names the start in reports (the pipeline passes "student").
    Standalone (the nightly schedule), the best round becomes a new registered version with the
    alias `champion` only when it beats the starting policy on the selection split by more than
    `min_delta`; otherwise the registry is left as it is. Inside the pipeline, the pipeline
    picks the champion.
    """
    from aligncap_core.improve import improve_identity
    from aligncap_core.improve import self_improve as run_rounds

    log = get_run_logger()
    st = open_store(store, out_dir)
    cfg = improve.resolved(evaluation)
    with parent_run(tracking, out_dir, "self-improve", parent_run_id, cfg) as t:
        champion = None
        if not start_checkpoint:
            champion = resolve_champion(t.uri, tracking.model_name)
            start_checkpoint, start_stage = champion["checkpoint"], "champion"
            data_dir = data_dir or champion["data"]
        if not data_dir:
            raise ValueError("self-improve: data_dir is empty (and the champion records no data); "
                             "pass the data URI that prepare-data returned")
        data_local = str(st.materialize(data_dir))
        ident = improve_identity(start_checkpoint, data_local, cfg)
        rel = f"improve/{ident.key}"
        log.info("self-improvement %s from %s (%s)", ident.key, start_checkpoint, start_stage)
        with st.lock(rel, f"self-improvement {ident.key}"):
            summary = run_rounds(start_checkpoint, data_local, str(st.local(rel)), cfg,
                                 steps=task_steps(st, data_dir, evaluation, t))
        stages = {0: start_stage, **{r["round"]: f"round-{r['round']}" for r in summary["rounds"][1:]}}
        for r in summary["rounds"]:
            log_evaluation(r["metrics"], stages[r["round"]], t.parent_run_id, t.uri)
        rounds = {stages[r["round"]]: {"checkpoint": r["checkpoint"], "metrics": r["metrics"],
                                       "score": r["score"], "pairs": r["pairs"]["n_pairs"]}
                  for r in summary["rounds"][1:]}
        best = {"stage": stages[summary["best_round"]], "checkpoint": summary["champion"],
                "score": summary["best_score"]}
        log.info("best: %s (%s = %s); start %s", best["stage"], cfg["select_metric"], best["score"],
                 summary["rounds"][0]["score"])
        registered = None
        if t.owned and tracking.register_champion and summary["best_round"] > 0:
            registered = register(best["checkpoint"], best["stage"], None, t.parent_run_id, t.uri,
                                  tracking.model_name, best["score"], data_dir)
        # what this run decided, on its MLflow run: which version it started from, the scores
        # it compared, and the version it registered (empty: the registry was left as it was)
        tag_run(t.parent_run_id if t.owned else None, {
            "aligncap.improve.key": ident.key, "aligncap.improve.start_version": champion and champion["version"],
            "aligncap.improve.start_score": summary["rounds"][0]["score"],
            "aligncap.improve.best_stage": best["stage"], "aligncap.improve.best_score": best["score"],
            "aligncap.improve.min_delta": cfg["min_delta"],
            "aligncap.improve.registered_version": registered and registered["version"]}, t.uri)
    r0 = summary["rounds"][0]
    return {"start": {"stage": start_stage, "checkpoint": start_checkpoint, "metrics": r0["metrics"],
                      "score": r0["score"], "version": champion and champion["version"]},
            "rounds": rounds, "best": best, "key": ident.key, "registered": registered}
