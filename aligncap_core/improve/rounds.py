"""Iterative self-improvement (ARCHITECTURE.md step 6, SpeechAlign-style rounds).

    summary = self_improve("runs/student/step-00000600", "data/", "runs/improve",
                           {"rounds": 3, "n": 4, "dpo": {"max_steps": 200}})
    summary["champion"]        # the best round's checkpoint by cfg.select_metric on valid

Layout of `out_dir`:
    config.json                  the resolved ImproveConfig, the starting checkpoint, the data
    round-0/round.json           the starting policy's evaluation (eval/report.json)
    round-k/candidates.jsonl     sampled from round k-1's policy
           /judged.jsonl /pairs.jsonl
           /policy/              round k's checkpoint (DPO against round k-1's policy)
           /eval/report.json     + predictions.jsonl
           /round.json           written last: the round is finished
    improve.json                 per-round metrics, the best round and its checkpoint

Resuming: a round with a round.json is never redone; inside an unfinished round, a step whose
output exists is reused (outputs are written atomically, so they are complete).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aligncap_core.errors import ConfigError
from aligncap_core.improve.config import (
    RESUMABLE_KEYS,
    ImproveConfig,
    RoundSelector,
    selection_score,
)
from aligncap_core.improve.policy import round_checkpoint
from aligncap_core.improve.steps import (
    dpo_step,
    evaluate_step,
    generate_candidates_step,
    judge_step,
    pairs_step,
)
from aligncap_core.utils import atomic_write

log = logging.getLogger(__name__)
ROUND_JSON = "round.json"
# (ckpt, data_dir, out_json, splits, limit) -> {split: metrics}: evaluate_step's signature, so
# tests and other evaluators can stand in for it
EvaluateFn = Callable[[str, str, str, list[str], int | None], dict]


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, default=str)


def _read_round(round_dir: Path) -> dict | None:
    path = round_dir / ROUND_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def _evaluate(evaluate_fn: EvaluateFn | None, ckpt: str, data_dir: str, round_dir: Path,
              c: ImproveConfig) -> dict:
    fn = evaluate_fn or evaluate_step
    return fn(ckpt, data_dir, str(round_dir / "eval" / "report.json"), list(c.eval_splits),
              c.eval_limit)


def run_round(policy_ckpt: str, data_dir: str, round_dir: str, cfg: dict, round: int,
              evaluate_fn: EvaluateFn | None = None) -> dict:
    """Round `round` (>= 1) from `policy_ckpt` (the round-(k-1) policy, also the DPO reference):
    sample -> judge -> pair -> DPO -> evaluate. Returns (and writes to round_dir/round.json)
    {round, policy, reference, checkpoint, pairs, metrics, score, seconds}; a finished round
    (round.json present) is returned as recorded.

    A round that finds no preference pair keeps the policy unchanged (checkpoint = policy,
    `no_update` says why): DPO has nothing to learn from, and the round still counts against
    the patience."""
    c = ImproveConfig.from_dict(cfg)
    rdir = Path(round_dir)
    done = _read_round(rdir)
    if done is not None:
        log.info("round %d: finished earlier (%s), skipped", round, rdir / ROUND_JSON)
        return done
    rdir.mkdir(parents=True, exist_ok=True)
    cfg_d, seconds = c.to_dict(), {}

    def timed(name: str, out: Path, fn: Callable[[], Any], done: bool | None = None) -> Any:
        if out.exists() if done is None else done:
            log.info("round %d: %s reused from %s", round, name, out)
            return str(out)
        t0 = time.monotonic()
        result = fn()
        seconds[name] = round_s(time.monotonic() - t0)
        return result

    cands = timed("candidates", rdir / "candidates.jsonl", lambda: generate_candidates_step(
        policy_ckpt, data_dir, str(rdir / "candidates.jsonl"), cfg_d, round))
    judged = timed("judge", rdir / "judged.jsonl", lambda: judge_step(
        cands, c.judge, str(rdir / "judged.jsonl")))
    # pairs are cheap and their summary is needed: always rebuilt from the judged file
    t0 = time.monotonic()
    pairs = pairs_step(judged, cfg_d, str(rdir / "pairs.jsonl"), round, policy_ckpt)
    seconds["pairs"] = round_s(time.monotonic() - t0)
    result: dict[str, Any] = {"round": round, "policy": str(policy_ckpt),
                              "reference": str(policy_ckpt), "pairs": pairs}
    if pairs["n_pairs"] == 0:
        log.warning("round %d: no preference pairs (see %s); the policy is kept unchanged",
                    round, rdir / "judged.jsonl")
        result.update(checkpoint=str(policy_ckpt), no_update="no preference pairs")
    else:
        ckpt = rdir / "policy"
        # "speech" is added to meta.json last (dpo_step): a checkpoint without it is redone
        from aligncap_core.train.loggers import JsonlLogger

        logger = JsonlLogger(rdir / "dpo_metrics.jsonl")  # loss, rewards, margins per step
        timed("dpo", ckpt, lambda: dpo_step(policy_ckpt, pairs["path"], data_dir, str(ckpt),
                                            cfg_d, round, logger), done=_has_speech(ckpt))
        result["checkpoint"] = str(ckpt)
    t0 = time.monotonic()
    result["metrics"] = _evaluate(evaluate_fn, result["checkpoint"], data_dir, rdir, c)
    seconds["evaluate"] = round_s(time.monotonic() - t0)
    result["score"] = selection_score(result["metrics"].get(c.select_split), c.select_metric)
    result["seconds"] = {**seconds, "total": round_s(sum(seconds.values()))}
    _write_json(rdir / ROUND_JSON, result)
    return result


def _has_speech(ckpt: Path) -> bool:
    meta = ckpt / "meta.json"
    return meta.is_file() and "speech" in json.loads(meta.read_text())


def round_s(x: float) -> float:
    return float(f"{x:.1f}")


def _check_resumed_config(out_dir: Path, record: dict) -> None:
    """A resumed run with other settings: the finished rounds keep theirs, so say which differ."""
    path = out_dir / "config.json"
    if not path.is_file():
        return
    old = json.loads(path.read_text())
    changed = sorted(k for k in set(old["config"]) | set(record["config"])
                     if k not in RESUMABLE_KEYS and old["config"].get(k) != record["config"].get(k))
    if changed or old.get("data") != record["data"]:
        log.warning("%s: resumed with different settings (%s); finished rounds keep the ones "
                    "they ran with", out_dir, ", ".join(changed) or "data")


def self_improve(from_ckpt: str, data_dir: str, out_dir: str, cfg: dict | ImproveConfig | None = None,
                 logger: Any = None, evaluate_fn: EvaluateFn | None = None,
                 start_metrics: dict[str, dict] | None = None) -> dict:
    """Run up to `cfg.rounds` preference rounds from `from_ckpt` (a student checkpoint, a round's
    policy checkpoint, or a finished round's folder); round k+1 samples from, and uses as its
    DPO reference, round k's policy. Round 0 (the starting policy) is evaluated too. Stops
    early when the selection score has not improved for `cfg.patience` rounds.

    logger: a `train.loggers.Logger` (params once, per-round metrics with step = round).
    evaluate_fn: stands in for `evaluate_step` (same signature).
    start_metrics: {split: metrics} of the starting policy when it was already evaluated the same
        way (same splits and limit): round 0 records them instead of evaluating again.
    Returns the summary written to out_dir/improve.json: {from, data, select_metric, rounds:
    [round records], best_round, champion, best_score, stopped}."""
    c = ImproveConfig.from_dict(cfg)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    start = round_checkpoint(from_ckpt)
    record = {"from": start, "data": str(data_dir), "config": c.to_dict()}
    _check_resumed_config(out, record)
    _write_json(out / "config.json", record)
    if logger is not None:
        logger.log_params({"stage": "improve", "from": start, "data": str(data_dir), **c.to_dict()})

    r0 = _read_round(out / "round-0")
    if r0 is not None and r0["checkpoint"] != start:
        raise ConfigError(f"{out} holds rounds started from {r0['checkpoint']}, not {start}; "
                          "resume with that --from, or use another --out")
    if r0 is None:
        t0 = time.monotonic()
        metrics = ({s: start_metrics[s] for s in c.eval_splits if s in start_metrics}
                   if start_metrics is not None else
                   _evaluate(evaluate_fn, start, data_dir, out / "round-0", c))
        r0 = {"round": 0, "checkpoint": start, "metrics": metrics,
              "score": selection_score(metrics.get(c.select_split), c.select_metric),
              "seconds": {"evaluate": round_s(time.monotonic() - t0)}}
        _write_json(out / "round-0" / ROUND_JSON, r0)
    records = [r0]
    _log_round(logger, r0)
    sel, stopped = RoundSelector(c, best=r0), f"completed {c.rounds} rounds"
    for k in range(1, c.rounds + 1):
        if reason := sel.stop_reason():
            stopped = reason
            break
        rec = run_round(records[-1]["checkpoint"], data_dir, str(out / f"round-{k}"), c.to_dict(),
                        k, evaluate_fn=evaluate_fn)
        records.append(rec)
        _log_round(logger, rec)
        sel.update(rec)
        _write_json(out / "improve.json", _summary(record, c, records, sel.best, "running"))
    summary = _summary(record, c, records, sel.best, stopped)
    _write_json(out / "improve.json", summary)
    return summary


def _summary(record: dict, c: ImproveConfig, records: list[dict], best: dict, stopped: str) -> dict:
    return {"from": record["from"], "data": record["data"], "select_metric": c.select_metric,
            "select_split": c.select_split, "rounds": records, "best_round": best["round"],
            "best_score": best.get("score"), "champion": best["checkpoint"], "stopped": stopped}


def _log_round(logger: Any, rec: dict) -> None:
    if logger is None:
        return
    flat = {f"{split}/{k}": v for split, m in rec["metrics"].items() for k, v in m.items()
            if isinstance(v, int | float) and not isinstance(v, bool)}
    if rec.get("score") is not None:
        flat["select_score"] = rec["score"]
    if "pairs" in rec:
        flat["n_pairs"] = rec["pairs"]["n_pairs"]
    logger.log_metrics(flat, step=rec["round"])
