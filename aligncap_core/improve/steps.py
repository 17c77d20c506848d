"""The steps of one preference round, each a function of paths and small dicts.

    cands = generate_candidates_step(policy, data_dir, "r1/candidates.jsonl", cfg, round=1)
    judged = judge_step(cands, cfg["judge"], "r1/judged.jsonl")
    pairs = pairs_step(judged, cfg, "r1/pairs.jsonl", round=1, policy_ckpt=policy)
    ckpt = dpo_step(policy, pairs["path"], data_dir, "r1/policy", cfg, round=1)
    metrics = evaluate_step(ckpt, data_dir, "r1/eval/report.json", ["valid"], limit=100)

Models never leave a step (the Prefect tasks of `flows/` wrap each one); every output file is
written atomically, so a file that exists is complete. `cfg` is an `ImproveConfig` dict.
"""

from __future__ import annotations

import json
import logging
import random
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from aligncap_core.errors import ConfigError, DataError
from aligncap_core.improve.config import ImproveConfig
from aligncap_core.improve.policy import (
    check_codec,
    inherit_student_settings,
    policy_prompt,
    teacher_adapter_of,
)
from aligncap_core.utils import atomic_write, read_jsonl, release_memory, write_jsonl

log = logging.getLogger(__name__)
# the per-split numbers a round reports (the full report stays in the eval json)
SUMMARY_KEYS = ("n", "clue_f1", "hallucination_rate", "generic_rate", "kl_gap", "bleu4", "meteor",
                "rouge_l", "cider", "acc_emotion")
# the round's seed stride: seed + start of each generation batch must not reach the next round
SEED_STRIDE = 1_000_003


def select_clips(data_dir: str | Path, clips_per_round: int | None, seed: int) -> list[dict]:
    """Train rows with captions and codes; a seeded subsample of `clips_per_round` of them (kept
    in manifest order) when there are more."""
    from aligncap_core.train.data import read_rows

    rows = [r for r in read_rows(data_dir, "train")
            if r.get("codes") and any(c and c.strip() for c in r.get("captions") or [])]
    if not rows:
        raise DataError(f"{data_dir}: no train rows with captions and codes to sample from; run "
                        "`aligncap data tokenize` on a prepared data dir")
    if clips_per_round is None or clips_per_round >= len(rows):
        return rows
    keep = set(random.Random(seed).sample(range(len(rows)), clips_per_round))
    return [r for i, r in enumerate(rows) if i in keep]


POOL_JSON = "pool.json"  # written last by round_clips_step: the round's clips are complete


def round_clips_step(policy_ckpt: str, data_dir: str, out_dir: str, cfg: dict, round: int) -> str:
    """The data dir round `round` samples its candidates from (and its DPO step reads).

    Without `cfg.augment`: `data_dir` itself. With it: `out_dir`, holding one randomised copy
    (`data.augment` with `cfg.augment_config(round)`; labels re-measured, captions rewritten
    where a label moved, a copy that fails its checks left out) of each train clip the round
    samples (`select_clips`, the same subsample as without), their clues, and their codes from
    the policy's own codec. Writes OUT_DIR/pool.json last (what was kept and rejected) and
    returns out_dir; a folder with pool.json is a finished pool."""
    from aligncap_core.clues.annotate import add_clues
    from aligncap_core.codec import tokenize_dataset
    from aligncap_core.data.augment import augment_dataset
    from aligncap_core.improve.policy import policy_codec
    from aligncap_core.train.data import row_audio_path

    c = ImproveConfig.from_dict(cfg)
    if c.augment is None:
        return str(data_dir)
    out = Path(out_dir)
    if (out / POOL_JSON).is_file():
        return str(out)
    codec = policy_codec(policy_ckpt)
    if codec is None or not codec.source:
        raise ConfigError(f"{policy_ckpt} records no codec; improve.augment tokenizes the round's "
                          "copies with the policy's own codec: start from a student trained by "
                          "this version, or set improve.augment: null")
    rows = select_clips(data_dir, c.clips_per_round, c.seed + round)
    source = out / "source"
    source.mkdir(parents=True, exist_ok=True)
    write_jsonl(source / "manifest.jsonl",
                [{**r, "audio": str(row_audio_path(data_dir, r).resolve())} for r in rows])
    augment = c.augment_config(round)
    summary = augment_dataset(source, out, augment, progress=False, copies_only=True)
    unlabelled = summary["skipped"].get("no_reference", 0)
    if unlabelled:  # a copy's labels are re-measured against its source's measured ones
        log.warning("round %d: %d of %d sampled clips carry no measured pitch / speed / volume "
                    "(`measured`, as the built-in corpus' rows do) and get no copy", round,
                    unlabelled, len(rows))
    if not summary["kept"] and unlabelled == len(rows):
        raise DataError(f"round {round}: none of the {len(rows)} sampled clips carries measured labels "
                        "(`measured` and pitch / speed / volume attributes), which improve.augment "
                        "re-measures its copies against; set improve.augment: null for this data")
    if not summary["kept"]:
        raise DataError(f"round {round}: every randomised copy of the {len(rows)} sampled clips was "
                        f"rejected ({summary['rejects_by_reason']}; {out / 'rejects.jsonl'})")
    kept_clues = {r["id"]: r.get("p_act") for r in read_jsonl(out / "manifest.jsonl")
                  if r.get("augment", {}).get("captions") == "kept"}
    add_clues(out, progress=False)
    # a copy whose captions were kept must get its source's acoustic prompt back: if not, the
    # data dir's clues were made with another template or parser and the KD teacher would read
    # the round's clips differently from the ones it was trained on
    differ = [r["id"] for r in read_jsonl(out / "manifest.jsonl")
              if r["id"] in kept_clues and r.get("p_act") != kept_clues[r["id"]]]
    if differ:
        raise DataError(f"{data_dir}: the acoustic prompts of {len(differ)} clips (e.g. "
                        f"{differ[0]}) are not what `aligncap data clues` with the default template "
                        "builds from their captions; improve.augment needs the data's clues made "
                        "with the default template")
    tokenize_dataset(out, codec=codec.source, n_q=codec.n_q or 2, progress=False)
    shutil.rmtree(source)
    record = {"round": round, "clips": len(rows), "kept": summary["kept"],
              "rejected": summary["rejected"], "rejects_by_reason": summary["rejects_by_reason"],
              "relabeled": summary["relabeled"], "transforms": summary["transforms"],
              "augment": augment.to_dict()}
    with atomic_write(out / POOL_JSON) as f:
        json.dump(record, f, indent=2)
    log.info("round %d: %d randomised copies of %d sampled clips (%d rejected) in %s", round,
             summary["kept"], len(rows), summary["rejected"], out)
    return str(out)


def generate_candidates_step(policy_ckpt: str, data_dir: str, out_path: str, cfg: dict,
                             round: int) -> str:
    """Sample `cfg.n` captions per train clip (a fresh seeded subsample per round) from the
    policy. Writes JSON Lines, one clip a line: {id, round, policy, instruction, prompt_ids
    (exactly what the student reads), references, attributes, transcript, candidates,
    sampling}; returns `out_path`."""
    import torch

    from aligncap_core.codec.prosody import ProsodySettings
    from aligncap_core.model.batching import student_prompt_windows
    from aligncap_core.model.checkpoint import load_for_generation
    from aligncap_core.prefs.candidates import sample_candidates
    from aligncap_core.train.data import speech_tokens

    c = ImproveConfig.from_dict(cfg)
    rows = select_clips(data_dir, c.clips_per_round, c.seed + round)
    prompt = policy_prompt(policy_ckpt)
    check_codec(policy_ckpt, prompt, rows)
    from aligncap_core.precision import inference_dtype

    device = "cuda" if torch.cuda.is_available() else None
    # as captioning: bf16 where the device runs it fast (a GPU; a CPU with AMX / AVX512-BF16),
    # the adapter merged into the weights
    dtype = inference_dtype("auto", torch.device(device or "cpu"))
    model, tok, _ = load_for_generation(policy_ckpt, device=device, dtype=dtype)
    n_pos = int(getattr(model.config, "max_position_embeddings", 1 << 30))
    budget = min(n_pos, prompt.max_len or n_pos) - c.max_new_tokens
    if budget < 2:
        raise ConfigError(f"max_new_tokens={c.max_new_tokens} leaves no room for the prompt")
    prompts, kept = [], []
    prosody = ProsodySettings.coerce(prompt.prosody)
    for r in rows:
        ids = student_prompt_windows(tok, prompt.instruction,
                                     speech_tokens(data_dir, r, prompt.keep_q, prosody), budget)
        if len(ids) > 1:
            continue  # a preference pair has one prompt: a clip read in windows sits the round out
        prompts.append({"id": r["id"], "prompt_ids": ids[0]})
        kept.append(r)
    if len(kept) < len(rows):
        log.warning("round %d: %d of %d sampled clips are longer than the policy reads at once "
                    "(%d tokens) and were left out of the round's pairs (training reads them in "
                    "windows; a preference pair has one prompt)", round, len(rows) - len(kept),
                    len(rows), budget)
    if not kept:
        raise ConfigError(f"round {round}: every sampled clip is longer than the policy reads at "
                          f"once ({budget} tokens); raise train.max_len or use shorter clips")
    rows = kept
    sampled = sample_candidates(model, tok, prompts, n=c.n, temperature=c.temperature,
                                top_p=c.top_p, max_new_tokens=c.max_new_tokens,
                                batch_size=c.sample_batch_size, seed=c.seed + SEED_STRIDE * round,
                                show_progress=True)
    del model
    release_memory()
    out = [{"id": r["id"], "round": round, "policy": str(policy_ckpt),
            "instruction": prompt.instruction, "prompt_ids": p["prompt_ids"],
            "references": [x for x in r.get("captions") or [] if x and x.strip()],
            "attributes": r.get("attributes") or {}, "transcript": r.get("transcript") or "",
            "candidates": s["candidates"], "sampling": s["sampling"]}
           for r, p, s in zip(rows, prompts, sampled, strict=True)]
    write_jsonl(out_path, out)
    return str(out_path)


def judge_step(candidates_path: str, judge_cfg: dict, out_path: str) -> str:
    """Score every candidate *and* every reference caption with one judge (the golden_vs_sample
    margin compares them on the same scale). Writes the candidate rows with `candidates` and
    `references` as [[text, judgment dict]] and `judge` (the judge's name); returns out_path."""
    from aligncap_core.prefs.judges import make_judge
    from aligncap_core.prefs.pairs import judge_clips

    rows = read_jsonl(candidates_path)
    judge = make_judge(dict(judge_cfg or {"kind": "rubric"}))
    judged = judge_clips(judge, rows)
    for r in judged:
        r["candidates"] = [[t, j.to_dict()] for t, j in r["candidates"]]
        r["references"] = [[t, j.to_dict()] for t, j in r["references"]]
        r["judge"] = judge.name
    write_jsonl(out_path, judged)
    return str(out_path)


def pairs_step(judged_path: str, cfg: dict, out_path: str, round: int, policy_ckpt: str) -> dict:
    """Chosen/rejected pairs from the judged candidates (cfg.pair_strategy; "both" = the union
    of both strategies, a pair found by both kept once). Returns {path, n_pairs, by_strategy,
    n_clips, skipped: {clips_without_pairs, skipped_judgments, duplicate_pairs}}."""
    from aligncap_core.improve.config import BOTH
    from aligncap_core.prefs.pairs import build_preference_pairs, write_pairs

    c = ImproveConfig.from_dict(cfg)
    judged = read_jsonl(judged_path)
    sampled_from = {str(r.get("policy")) for r in judged}
    if sampled_from - {str(policy_ckpt)}:
        log.warning("pairs: candidates in %s were sampled from %s, not from %s", judged_path,
                    sorted(sampled_from), policy_ckpt)
    judge = next((r["judge"] for r in judged if r.get("judge")), "unknown")
    strategies = BOTH if c.pair_strategy == "both" else (c.pair_strategy,)
    pairs: list[dict] = []
    seen: set[tuple[str, str, str]] = set()
    by_strategy: dict[str, int] = {}
    duplicates = 0
    for s in strategies:
        found = build_preference_pairs(judged, s, c.min_margin, c.max_pairs_per_clip,
                                       round=round, policy=str(policy_ckpt), judge=judge)
        by_strategy[s] = len(found)
        for p in found:
            key = (p["id"], p["chosen"], p["rejected"])
            if key in seen:
                duplicates += 1
                continue
            seen.add(key)
            pairs.append(p)
    write_pairs(out_path, pairs)
    with_pairs = {p["id"] for p in pairs}
    skipped_judgments = sum(1 for r in judged for key in ("candidates", "references")
                            for _, j in r.get(key) or [] if j.get("skipped"))
    return {"path": str(out_path), "n_pairs": len(pairs), "by_strategy": by_strategy,
            "n_clips": len(judged),
            "skipped": {"clips_without_pairs": sum(r["id"] not in with_pairs for r in judged),
                        "skipped_judgments": skipped_judgments, "duplicate_pairs": duplicates}}


def teacher_texts(data_dir: str | Path, ids: set[str], acoustic_prompt: bool) -> dict[str, str]:
    """clip id -> the KD teacher's input (transcript [+ P_act]) from the data dir's rows."""
    from aligncap_core.train.data import read_rows, teacher_text

    texts = {r["id"]: teacher_text(r, acoustic_prompt) for r in read_rows(data_dir)
             if r.get("id") in ids}
    missing = sorted(ids - set(texts))
    if missing:
        raise DataError(f"{data_dir}: pairs name clips that are not in its manifest "
                        f"({', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}); pass the "
                        "data dir the candidates were sampled from")
    return texts


def dpo_step(policy_ckpt: str, pairs_path: str, data_dir: str, out_dir: str, cfg: dict,
             round: int, logger: Any = None) -> str:
    """One DPO round (+ lambda_kd * KD on the chosen caption; `cfg.dpo.lambda_kd = 0` runs plain
    DPO without a teacher pass) from `policy_ckpt`, which is also the frozen reference. The KD
    teacher reads the inputs built from the data dir's rows, exactly as in distillation. Saves
    the new policy (stage "dpo", this round) as a self-contained student; returns its path.
    logger: receives DPO's step metrics (loss, rewards, margins, pair accuracy)."""
    from aligncap_core.model.checkpoint import read_meta
    from aligncap_core.prefs.dpo import run_dpo_round
    from aligncap_core.prefs.dpo_data import TeacherInfo
    from aligncap_core.prefs.pairs import read_pairs

    c = ImproveConfig.from_dict(cfg)
    dcfg = c.dpo_config(round)
    teacher = None
    if dcfg.lambda_kd > 0:
        ids = {p["id"] for p in read_pairs(pairs_path)}
        teacher = TeacherInfo(adapter=teacher_adapter_of(read_meta(policy_ckpt)),
                              texts=teacher_texts(data_dir, ids, policy_prompt(policy_ckpt).acoustic_prompt))
    out = run_dpo_round(policy_ckpt, pairs_path, teacher, out_dir, dcfg, logger)
    release_memory()
    from aligncap_core.train.runtime import is_main_process, wait_for_everyone

    if is_main_process():  # launched (train.launch): rank 0 writes, the others wait for it
        inherit_student_settings(policy_ckpt, out, data_dir)
    wait_for_everyone()
    return str(out)


def present_splits(data_dir: str | Path, splits: Sequence[str]) -> list[str]:
    """The requested splits the data has (absent ones are skipped with a warning)."""
    from aligncap_core.train.data import read_rows

    have = {str(r.get("split")) for r in read_rows(data_dir)}
    missing = [s for s in splits if s not in have]
    if missing:
        log.warning("evaluate: %s has no split(s) %s; skipped", data_dir, ", ".join(missing))
    return [s for s in splits if s in have]


def evaluate_step(ckpt: str, data_dir: str, out_json: str, splits: list[str],
                  limit: int | None) -> dict:
    """Evaluate a policy on `splits` (at most `limit` clips each) with
    `inference.evaluate_checkpoint` (report at out_json, predictions.jsonl beside it); returns
    {split: {SUMMARY_KEYS present}}."""
    from aligncap_core.inference.evaluate import evaluate_checkpoint

    wanted = present_splits(data_dir, splits)
    if not wanted:
        raise DataError(f"{data_dir}: none of the evaluation splits {list(splits)} is in the data")
    report = evaluate_checkpoint(ckpt, data_dir, out_json, splits=wanted, limit=limit)
    release_memory()
    return {s: {k: report["metrics"][s][k] for k in SUMMARY_KEYS if k in report["metrics"][s]}
            for s in wanted}
