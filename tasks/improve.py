"""Preference-round stages as Prefect tasks: candidates -> judge -> pairs -> DPO.

The round's config travels as `ImproveConfig.to_dict()` and each task rebuilds it with
`ImproveConfig.from_dict`. Every task writes one file or checkpoint folder at a path the round
loop chooses (OUT/improve/<run key>/round-k/...: `aligncap_core.improve.rounds`), so a cached
result always names a file of this run. The DPO checkpoint, which other workers evaluate and
the next night starts from, is published to the artifact store; `dpo_round` returns its URI.
"""

from __future__ import annotations

from typing import Any

from prefect import get_run_logger, task

from tasks.caching import (
    checkpoint_fingerprint,
    file_sha,
    make_key_fn,
    manifest_sha,
    path_key,
    store_key,
)
from tasks.data import IO_RETRIES, PERSIST, RELEASE
from tasks.tracking import stage_run, train_logger
from tasks.train import TRAIN_RETRIES


def _round_cfg(cfg: dict[str, Any]) -> dict[str, Any]:
    # keys that only steer the loop (how many rounds, when to stop) do not change what one
    # round computes, so raising `rounds` re-uses the finished rounds
    from aligncap_core.improve.config import RESUMABLE_KEYS

    return {k: v for k, v in cfg.items() if k not in RESUMABLE_KEYS}


def _clips_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [checkpoint_fingerprint(p["policy_ckpt"]), manifest_sha(p["data_dir"]),
            path_key(p["out_dir"]), _round_cfg(p["cfg"]), p["round"]]


@task(name="round_clips", cache_key_fn=make_key_fn("clips", _clips_inputs), **IO_RETRIES, **PERSIST)
def round_clips(policy_ckpt: str, data_dir: str, out_dir: str, cfg: dict[str, Any], round: int) -> str:
    """The data dir the round samples from: the train data, or (improve.augment) randomised
    copies of the round's train clips, tokenized with the policy's codec; returns its path."""
    from aligncap_core.improve import round_clips_step

    path = round_clips_step(policy_ckpt, data_dir, out_dir, cfg, round)
    if path != str(data_dir):
        get_run_logger().info("round %d: randomised copies of its clips -> %s", round, path)
    return path


def _candidates_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [checkpoint_fingerprint(p["policy_ckpt"]), manifest_sha(p["data_dir"]),
            path_key(p["out_path"]), _round_cfg(p["cfg"]), p["round"]]


@task(name="generate_candidates", cache_key_fn=make_key_fn("candidates", _candidates_inputs),
      **TRAIN_RETRIES, **PERSIST, **RELEASE)
def generate_candidates(policy_ckpt: str, data_dir: str, out_path: str, cfg: dict[str, Any],
                        round: int) -> str:
    """Sample `cfg.n` candidate captions per train clip from the policy; returns the JSONL path."""
    from aligncap_core.improve import generate_candidates_step

    path = generate_candidates_step(policy_ckpt, data_dir, out_path, cfg, round)
    get_run_logger().info("round %d: candidates -> %s", round, path)
    return str(path)


def _judge_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [file_sha(p["candidates_path"]), path_key(p["out_path"]), p["judge_cfg"]]


# The judge may be a remote LLM endpoint: retries cover rate limits and dropped connections.
@task(name="judge", cache_key_fn=make_key_fn("judge", _judge_inputs), **IO_RETRIES, **PERSIST)
def judge(candidates_path: str, judge_cfg: dict[str, Any], out_path: str) -> str:
    """Score every candidate with the judge (offline rubric or OpenAI-compatible); returns the
    judged JSONL path."""
    from aligncap_core.improve import judge_step

    path = judge_step(candidates_path, judge_cfg, out_path)
    get_run_logger().info("judge (%s): -> %s", judge_cfg.get("kind", "rubric"), path)
    return str(path)


def _pairs_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [file_sha(p["judged_path"]), checkpoint_fingerprint(p["policy_ckpt"]),
            path_key(p["out_path"]), _round_cfg(p["cfg"]), p["round"]]


@task(name="build_pairs", cache_key_fn=make_key_fn("pairs", _pairs_inputs), **IO_RETRIES, **PERSIST)
def build_pairs(judged_path: str, cfg: dict[str, Any], out_path: str, round: int,
                policy_ckpt: str) -> dict:
    """Chosen/rejected pairs from the judged candidates; returns the pairs summary (counts)."""
    from aligncap_core.improve import pairs_step

    summary = pairs_step(judged_path, cfg, out_path, round, policy_ckpt)
    get_run_logger().info("round %d: pairs %s", round, summary)
    return summary


def _dpo_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [checkpoint_fingerprint(p["policy_ckpt"]), file_sha(p["pairs_path"]),
            manifest_sha(p["data_dir"]), path_key(p["out_dir"]), store_key(p.get("store"), p["work"]),
            _round_cfg(p["cfg"]), p["round"]]


@task(name="dpo_round", cache_key_fn=make_key_fn("dpo", _dpo_inputs), **TRAIN_RETRIES, **PERSIST,
      **RELEASE)
def dpo_round(policy_ckpt: str, pairs_path: str, data_dir: str, out_dir: str, cfg: dict[str, Any],
              round: int, parent_run_id: str | None = None, tracking_uri: str | None = None,
              store: str | None = None, work: str = ".") -> str:
    """DPO (+KD regulariser) on the round's pairs, starting from the policy (a URI), into
    `out_dir` inside the work folder `work`; publishes the new checkpoint to the store under the
    same relative path and returns its URI (a committed one is returned without training).
    MLflow child run `round-<k>` (its params: the round's DPO config). Several GPUs: one DDP
    process each (`train.launch`)."""
    from aligncap_core.improve import ImproveConfig
    from aligncap_core.store import ArtifactStore
    from aligncap_core.train.launch import run_stage

    st = ArtifactStore.open(store, work)
    rel = st.rel_of(out_dir)
    if st.committed(rel) is not None:
        get_run_logger().info("round %d: DPO checkpoint already in the store: %s", round, st.uri(rel))
        return st.uri(rel)
    params = {"policy_checkpoint": policy_ckpt, "pairs": pairs_path,
              **ImproveConfig.from_dict(cfg).dpo_config(round).to_dict()}
    with stage_run(parent_run_id, f"round-{round}", params, tracking_uri) as run, \
            train_logger(run, tracking_uri) as logger:
        # one process per GPU of the worker under `accelerate launch` (tasks/train.py)
        spec = {"policy_ckpt": policy_ckpt, "pairs_path": pairs_path, "data_dir": data_dir,
                "out_dir": out_dir, "config": cfg, "round": round,
                "tracking": {"run_id": run, "uri": tracking_uri}}
        run_stage("dpo", spec, logger=logger)
    uri = st.publish(rel)
    get_run_logger().info("round %d: DPO checkpoint %s", round, uri)
    return uri
