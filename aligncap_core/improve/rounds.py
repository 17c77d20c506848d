"""Iterative self-improvement (ARCHITECTURE.md step 6, SpeechAlign-style rounds).

    summary = self_improve("runs/student/step-00000600", "data/", "runs/improve",
                           {"rounds": 3, "n": 4, "dpo": {"max_steps": 200}})
    summary["champion"]        # the best round's checkpoint by cfg.select_metric on valid

Layout of `out_dir`:
    config.json                  the resolved ImproveConfig, the starting checkpoint, the data
    round-0/round.json           the starting policy's evaluation (eval/report.json)
    round-k/clips/               with improve.augment: the clips the round samples, randomised
                                 copies of train clips (manifest, audio, clues, codes, pool.json)
           /candidates.jsonl     sampled from round k-1's policy
           /judged.jsonl /pairs.jsonl
           /policy/              round k's checkpoint (DPO against round k-1's policy)
           /eval/report.json     + predictions.jsonl
           /round.json           written last: the round is finished
    improve.json                 per-round metrics, the best round and its checkpoint

    run.json                     the run's key (`train.identity`): start checkpoint, data, settings

Resuming: a folder is only continued by a run with the same key (the same start, data and
settings; `rounds`, `patience` and `min_delta` may change: raising `rounds` extends a run); any
other run is refused with what differs. A round with a round.json is never redone; inside an
unfinished round each step finds its own finished output (`RoundSteps`). One run at a time
holds the folder (its lock).

Steps. `run_round` and `self_improve` are the one round loop of the project: the library runs
each step in process (`local_steps`), the Prefect flow `self-improve` passes its cached tasks,
which publish their outputs to the artifact store (`flows/improve.py`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
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
    round_clips_step,
)
from aligncap_core.train.identity import RunIdentity, claim_run_dir, locked_run_dir
from aligncap_core.utils import atomic_write

log = logging.getLogger(__name__)
ROUND_JSON = "round.json"
# (ckpt, data_dir, out_json, splits, limit) -> {split: metrics}: evaluate_step's signature, so
# tests and other evaluators can stand in for it
EvaluateFn = Callable[[str, str, str, list[str], int | None], dict]


@dataclass(frozen=True)
class RoundSteps:
    """How the steps of a round run; each has the signature of its `improve.steps` function and
    returns what that returns (the dpo step: the new policy's path or URI, which the next round
    samples from and the summary names). A step is responsible for finding its own finished
    output when a round is resumed.

    round_done(round_dir, record) runs after round.json is written (the flow publishes the
    round's files there) and returns the record to keep. clips(policy, data_dir, out_dir, cfg,
    round) gives the data dir the round samples from and learns from (`round_clips_step`: the
    data dir itself, or the round's randomised copies with `improve.augment`); None runs
    `round_clips_step` in process."""

    candidates: Callable[[str, str, str, dict, int], str]
    judge: Callable[[str, dict, str], str]
    pairs: Callable[[str, dict, str, int, str], dict]
    dpo: Callable[[str, str, str, str, dict, int], str]
    evaluate: EvaluateFn
    round_done: Callable[[Path, dict], dict] | None = None
    clips: Callable[[str, str, str, dict, int], str] | None = None


def _reuse(what: str, out_arg: int, done: Callable[[Path], bool],
           fn: Callable[..., Any]) -> Callable[..., Any]:
    """`fn`, unless its output (positional argument `out_arg`) is already complete."""
    def step(*args: Any) -> Any:
        path = Path(args[out_arg])
        if done(path):
            log.info("%s reused from %s", what, path)
            return str(path)
        return fn(*args)

    return step


def _logged_dpo_step(policy: str, pairs: str, data_dir: str, out_dir: str, cfg: dict, round: int) -> str:
    """`dpo_step` with its step metrics (loss, rewards, margins) in round-k/dpo_metrics.jsonl."""
    from aligncap_core.train.loggers import JsonlLogger

    return dpo_step(policy, pairs, data_dir, out_dir, cfg, round,
                    JsonlLogger(Path(out_dir).parent / "dpo_metrics.jsonl"))


def local_steps(evaluate_fn: EvaluateFn | None = None) -> RoundSteps:
    """The library's steps, in this process; a step whose output file exists is reused (outputs
    are written atomically, so they are complete); a DPO checkpoint counts once it has its
    speech settings ("speech" is added to meta.json last); pairs are always rebuilt (cheap, and
    their summary is needed)."""
    return RoundSteps(
        clips=round_clips_step,  # finds its own finished pool (pool.json)
        candidates=_reuse("candidates", 2, Path.exists, generate_candidates_step),
        judge=_reuse("judgments", 2, Path.exists, judge_step),
        pairs=pairs_step,
        dpo=_reuse("DPO checkpoint", 3, _has_speech, _logged_dpo_step),
        evaluate=evaluate_fn or evaluate_step)


def _write_json(path: Path, obj: Any) -> None:
    with atomic_write(path) as f:
        json.dump(obj, f, indent=2, default=str)


def _read_round(round_dir: Path) -> dict | None:
    path = round_dir / ROUND_JSON
    return json.loads(path.read_text()) if path.is_file() else None


def _evaluate(steps: RoundSteps, ckpt: str, data_dir: str, round_dir: Path, c: ImproveConfig) -> dict:
    return steps.evaluate(ckpt, data_dir, str(round_dir / "eval" / "report.json"), list(c.eval_splits),
                          c.eval_limit)


def run_round(policy_ckpt: str, data_dir: str, round_dir: str, cfg: dict, round: int,
              evaluate_fn: EvaluateFn | None = None, steps: RoundSteps | None = None) -> dict:
    """Round `round` (>= 1) from `policy_ckpt` (the round-(k-1) policy, also the DPO reference):
    sample -> judge -> pair -> DPO -> evaluate, each step by `steps` (default `local_steps`).
    Returns (and writes to round_dir/round.json) {round, policy, reference, checkpoint, pairs,
    metrics, score, seconds}; a finished round (round.json present) is returned as recorded.

    A round that finds no preference pair keeps the policy unchanged (checkpoint = policy,
    `no_update` says why): DPO has nothing to learn from, and the round still counts against
    the patience."""
    steps = steps or local_steps(evaluate_fn)
    c = ImproveConfig.from_dict(cfg)
    rdir = Path(round_dir)
    done = _read_round(rdir)
    if done is not None:
        log.info("round %d: finished earlier (%s), skipped", round, rdir / ROUND_JSON)
        return done
    rdir.mkdir(parents=True, exist_ok=True)
    cfg_d, seconds = c.to_dict(), {}

    def timed(name: str, fn: Callable[[], Any]) -> Any:
        t0 = time.monotonic()
        result = fn()
        seconds[name] = round_s(time.monotonic() - t0)
        return result

    # the clips the round samples and learns from: the train clips, or (improve.augment) their
    # randomised copies in round-k/clips; the policy is always evaluated on data_dir
    clips = timed("clips", lambda: (steps.clips or round_clips_step)(
        policy_ckpt, data_dir, str(rdir / "clips"), cfg_d, round))
    cands = timed("candidates", lambda: steps.candidates(
        policy_ckpt, clips, str(rdir / "candidates.jsonl"), cfg_d, round))
    judged = timed("judge", lambda: steps.judge(cands, c.judge, str(rdir / "judged.jsonl")))
    pairs = timed("pairs", lambda: steps.pairs(judged, cfg_d, str(rdir / "pairs.jsonl"), round,
                                               policy_ckpt))
    result: dict[str, Any] = {"round": round, "policy": str(policy_ckpt),
                              "reference": str(policy_ckpt), "pairs": pairs}
    if str(clips) != str(data_dir):
        result["clips"] = str(clips)
    if pairs["n_pairs"] == 0:
        log.warning("round %d: no preference pairs (see %s); the policy is kept unchanged",
                    round, rdir / "judged.jsonl")
        result.update(checkpoint=str(policy_ckpt), no_update="no preference pairs")
    else:
        result["checkpoint"] = str(timed("dpo", lambda: steps.dpo(
            policy_ckpt, pairs["path"], clips, str(rdir / "policy"), cfg_d, round)))
    result["metrics"] = timed("evaluate", lambda: _evaluate(steps, result["checkpoint"], data_dir, rdir, c))
    result["score"] = selection_score(result["metrics"].get(c.select_split), c.select_metric)
    result["seconds"] = {**seconds, "total": round_s(sum(seconds.values()))}
    _write_json(rdir / ROUND_JSON, result)
    if steps.round_done is not None:
        result = steps.round_done(rdir, result)
    return result


def _has_speech(ckpt: Path) -> bool:
    meta = ckpt / "meta.json"
    return meta.is_file() and "speech" in json.loads(meta.read_text())


def round_s(x: float) -> float:
    return float(f"{x:.1f}")


def improve_identity(start: str, data_dir: str, cfg: dict | ImproveConfig) -> RunIdentity:
    """What makes a self-improvement run: the starting policy (its checkpoint fingerprint, the
    same wherever it is materialized), the data it samples from and evaluates on, and the
    settings except those that only steer the loop (`RESUMABLE_KEYS`)."""
    from aligncap_core.train.data import data_fingerprint
    from aligncap_core.train.identity import checkpoint_fingerprint

    c = ImproveConfig.from_dict(cfg)
    start = round_checkpoint(start)
    fp = checkpoint_fingerprint(start)
    if fp is None:
        raise ConfigError(f"{start}: not a checkpoint (no meta.json); self-improvement starts from a "
                          "student (distill) checkpoint, a round's policy or its folder")
    return RunIdentity("improve", {k: v for k, v in c.to_dict().items() if k not in RESUMABLE_KEYS},
                       {"start": fp, "data": data_fingerprint(data_dir)})


def self_improve(from_ckpt: str, data_dir: str, out_dir: str, cfg: dict | ImproveConfig | None = None,
                 logger: Any = None, evaluate_fn: EvaluateFn | None = None,
                 start_metrics: dict[str, dict] | None = None, steps: RoundSteps | None = None) -> dict:
    """Run up to `cfg.rounds` preference rounds from `from_ckpt` (a student checkpoint, a round's
    policy checkpoint, or a finished round's folder); round k+1 samples from, and uses as its
    DPO reference, round k's policy. Round 0 (the starting policy) is evaluated too. Stops
    early when the selection score has not improved for `cfg.patience` rounds.

    logger: a `train.loggers.Logger` (params once, per-round metrics with step = round).
    evaluate_fn: stands in for `evaluate_step` (same signature).
    start_metrics: {split: metrics} of the starting policy when it was already evaluated the same
        way (same splits and limit): round 0 records them instead of evaluating again.
    steps: how each step runs (default `local_steps(evaluate_fn)`).
    Returns the summary written to out_dir/improve.json: {from, data, select_metric, rounds:
    [round records], best_round, champion, best_score, stopped, key}. A folder made by another
    run (other start, data or settings) raises `train.identity.RunMismatchError`."""
    with locked_run_dir(out_dir, "self-improvement"):
        return _self_improve(from_ckpt, data_dir, Path(out_dir), ImproveConfig.from_dict(cfg), logger,
                             start_metrics, steps or local_steps(evaluate_fn))


def _self_improve(from_ckpt: str, data_dir: str, out: Path, c: ImproveConfig, logger: Any,
                  start_metrics: dict[str, dict] | None, steps: RoundSteps) -> dict:
    start = round_checkpoint(from_ckpt)
    ident = improve_identity(start, data_dir, c)
    claim_run_dir(out, ident, outputs=("round-",))
    record = {"from": start, "data": str(data_dir), "config": c.to_dict(), "key": ident.key}
    _write_json(out / "config.json", record)
    if logger is not None:
        logger.log_params({"stage": "improve", "from": start, "data": str(data_dir), **c.to_dict()})

    r0 = _read_round(out / "round-0")
    if r0 is None:
        t0 = time.monotonic()
        metrics = ({s: start_metrics[s] for s in c.eval_splits if s in start_metrics}
                   if start_metrics is not None else
                   _evaluate(steps, start, data_dir, out / "round-0", c))
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
                        k, steps=steps)
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
            "best_score": best.get("score"), "champion": best["checkpoint"], "stopped": stopped,
            "key": record["key"]}


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
