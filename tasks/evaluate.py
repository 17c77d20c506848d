"""Evaluation and the model registry as Prefect tasks: evaluate, register, resolve_champion."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from aligncap_core.defaults import EVAL
from tasks.caching import checkpoint_fingerprint, make_key_fn, manifest_sha, path_key, store_key
from tasks.data import IO_RETRIES, PERSIST, RELEASE
from tasks.tracking import run_name, stage_run

# settings that change how an evaluation runs, not its numbers
EVAL_OPERATIONAL = frozenset({"batch_size", "codes_cache"})


def _evaluate_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [checkpoint_fingerprint(p["ckpt"]), manifest_sha(p["data"]), path_key(p["data"]),
            store_key(p.get("store"), p["out_dir"]),
            {"splits": p.get("splits"), "limit": p.get("limit"), "settings": p.get("settings") or {}}]


def evaluation_identity(ckpt: str, data: str | Path, splits: list[str] | None, limit: int | None,
                        settings: dict[str, Any]) -> Any:
    """What makes an evaluation report: the checkpoint, the data's content (a prepared dir's
    manifest, or a raw manifest file) and the settings that change the numbers."""
    from aligncap_core.train.identity import RunIdentity
    from tasks.data import source_fingerprint

    fp = checkpoint_fingerprint(ckpt)
    if fp is None:
        from aligncap_core.errors import ConfigError

        raise ConfigError(f"evaluate: {ckpt} is not a checkpoint (no meta.json, or not committed "
                          "in the store)")
    data_fp = source_fingerprint(str(data))
    config = {"splits": splits, "limit": limit,
              "settings": {k: v for k, v in settings.items() if k not in EVAL_OPERATIONAL}}
    return RunIdentity("evaluate", config, {"checkpoint": fp, "data": data_fp})


@task(name="evaluate", cache_key_fn=make_key_fn("evaluate", _evaluate_inputs), **IO_RETRIES, **PERSIST,
      **RELEASE)
def evaluate(ckpt: str, data: str, out_dir: str, splits: list[str] | None = None,
             limit: int | None = None, settings: dict[str, Any] | None = None,
             store: str | None = None) -> dict[str, dict]:
    """Caption and score the held-out clips of `data` (a prepared data dir URI or a raw manifest)
    with a speech checkpoint (URI). The report (report.json + predictions.jsonl) is published as
    STORE/eval/<key> (`evaluation_identity`): the same evaluation asked for again (the rounds'
    and the pipeline's final one, another worker) returns the committed numbers.

    splits: splits to evaluate (None: every split but train; those the data lacks are skipped);
    limit: clips per split. settings: `evaluate_checkpoint` keywords: meteor, kl_gap,
    batch_size, max_new_tokens, codes_cache, and decoding ({strategy, samples, risk, ...}:
    `inference.consistent.DecodingSettings`). Returns {split: metrics} plus "all" (every
    evaluated clip together).
    """
    from aligncap_core.inference import evaluate_checkpoint
    from aligncap_core.inference.consistent import DecodingSettings
    from aligncap_core.model.generate import GenerationSettings
    from aligncap_core.store import ArtifactStore, read_manifest
    from aligncap_core.train.identity import claim_run_dir

    settings = dict(settings or {})
    st = ArtifactStore.open(store, out_dir)
    if "://" in str(data) and read_manifest(data) is None:
        local: str | Path = str(data)  # a raw manifest on S3: evaluate_checkpoint reads it there
    elif "://" in str(data) or Path(data).is_dir():
        local = st.materialize(data)
    else:
        local = Path(data)
    if splits is not None and Path(local).is_dir():
        from aligncap_core.improve.steps import present_splits

        splits = present_splits(local, splits)
    ident = evaluation_identity(ckpt, local, splits, limit, settings)
    rel = f"eval/{ident.key}"
    log = get_run_logger()
    with st.lock(rel, f"evaluation {ident.key}"):
        done = st.committed(rel)
        if done is not None:
            log.info("evaluate %s on %s: reused %s", ckpt, data, st.uri(rel))
            return done["result"]["metrics"]
        claim_run_dir(st.local(rel), ident)  # run.json: what made this report
        gen = GenerationSettings(max_new_tokens=settings.pop("max_new_tokens", EVAL.max_new_tokens))
        decoding = DecodingSettings(**settings.pop("decoding", {}))
        out_json = st.local(rel) / "report.json"
        report = evaluate_checkpoint(ckpt, str(local), str(out_json), splits=splits, limit=limit,
                                     settings=gen, decoding=decoding, **settings)
        metrics = report["metrics"]
        st.publish(rel, result={"metrics": metrics, "checkpoint": ckpt, "data": data})
    log.info("evaluate %s on %s: %s", ckpt, data,
             {s: {k: metrics[s].get(k) for k in ("bleu4", "cider", "clue_f1")} for s in metrics})
    return metrics


@task(name="log_evaluation", **IO_RETRIES)
def log_evaluation(metrics_by_split: dict[str, dict], stage: str, parent_run_id: str | None,
                   tracking_uri: str | None = None) -> str | None:
    """Log one stage's evaluation table (a row per split) into its MLflow child run."""
    if not parent_run_id:
        return None
    from aligncap_core.tracking import log_eval_table

    with stage_run(parent_run_id, run_name(stage), uri=tracking_uri) as run:
        return log_eval_table(metrics_by_split, "eval", run, uri=tracking_uri)


@task(name="register", **IO_RETRIES)
def register(ckpt: str, stage: str, out_dir: str | None = None, parent_run_id: str | None = None,
             tracking_uri: str | None = None, model_name: str | None = None,
             score: float | None = None, data: str | None = None) -> dict:
    """Publish the champion `ckpt` (a URI of the store): copy it to `out_dir` (a plain folder to
    look at and load: the pipeline's OUT/champion) and, when tracked, make it the registry's
    `champion`: a new model version (an aligncap pyfunc model holding the checkpoint, logged to
    the stage's MLflow run, tagged with the checkpoint's store URI, content fingerprint, stage,
    score and data) with the alias on it. A checkpoint registered before (same content) gets
    the alias back instead of a second version, so a retry never adds versions. Returns
    {"checkpoint", "version", "model_uri", "content", "copy"}.

    Not cached: registering is a side effect that must happen on every run that picks a champion.
    """
    from aligncap_core.serving.pyfunc import log_pyfunc_model
    from aligncap_core.store import MANIFEST, materialize
    from aligncap_core.tracking import (
        CHAMPION_ALIAS,
        DEFAULT_MODEL_NAME,
        client,
        register_champion,
        version_with_tag,
    )

    local = materialize(ckpt)
    content = checkpoint_fingerprint(local)
    out = {"checkpoint": ckpt, "version": None, "model_uri": None, "content": content, "copy": None}
    if out_dir:
        dest = Path(out_dir)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(local, tmp, ignore=shutil.ignore_patterns(MANIFEST, ".*"))
        # swap in one rename so a reader never sees half a champion
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        out["copy"] = str(dest)
    if parent_run_id:
        name = model_name or DEFAULT_MODEL_NAME
        mv = version_with_tag(name, "content", content, uri=tracking_uri)
        if mv is not None:
            client(tracking_uri).set_registered_model_alias(name, CHAMPION_ALIAS, mv.version)
        else:
            with stage_run(parent_run_id, run_name(stage), uri=tracking_uri) as run:
                source = log_pyfunc_model(local, run, artifact_path="champion", uri=tracking_uri)
                tags = {"stage": stage, "uri": str(ckpt), "content": content, "data": data or ""}
                if score is not None:
                    tags["score"] = str(score)
                mv = register_champion(source, model_name=name, tags=tags, uri=tracking_uri)
        out.update(version=str(mv.version), model_uri=f"models:/{name}@{CHAMPION_ALIAS}")
    get_run_logger().info("champion: %s (stage %s, version %s)", ckpt, stage, out["version"])
    return out


@task(name="tag_run", **IO_RETRIES)
def tag_run(run_id: str | None, tags: dict[str, Any], tracking_uri: str | None = None) -> None:
    """Set tags (values as strings; None as "") on an MLflow run, e.g. a flow's decision."""
    if not run_id:
        return
    from mlflow.entities import RunTag

    from aligncap_core.tracking import client

    client(tracking_uri).log_batch(run_id, tags=[RunTag(k, "" if v is None else str(v))
                                                 for k, v in tags.items()])


@task(name="resolve_champion", **IO_RETRIES)
def resolve_champion(tracking_uri: str | None = None, model_name: str | None = None) -> dict:
    """The model version behind the registry alias `champion`, downloaded from the registry
    (`serving.resolve_model`: once per version and tracking server) and checked against the
    content fingerprint it was registered with: a champion whose files changed since is
    refused, never trained on.

    Returns {"checkpoint" (the local folder), "version", "stage", "score", "data", "uri",
    "content"}; raises a clear error when no champion is registered yet (run the pipeline first).
    """
    from mlflow.exceptions import MlflowException

    from aligncap_core.errors import ConfigError, StorageError
    from aligncap_core.serving import resolve_model
    from aligncap_core.tracking import CHAMPION_ALIAS, DEFAULT_MODEL_NAME, client

    name = model_name or DEFAULT_MODEL_NAME
    try:
        mv = client(tracking_uri).get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as e:
        raise ConfigError(f"no '{CHAMPION_ALIAS}' version of model '{name}' at {tracking_uri}: "
                          "run the aligncap-pipeline flow first, or pass start_checkpoint") from e
    ckpt = resolve_model(f"models:/{name}/{mv.version}", tracking_uri).checkpoint
    content = mv.tags.get("content")
    if content and checkpoint_fingerprint(ckpt) != content:
        raise StorageError(f"model '{name}' version {mv.version}: the files at {mv.source} are not the "
                           f"ones registered (content {checkpoint_fingerprint(ckpt)}, registered "
                           f"{content}); they were changed after registration. Register a checkpoint "
                           f"again, or delete {ckpt} if only that downloaded copy is damaged")
    score = mv.tags.get("score")
    get_run_logger().info("champion version %s (%s): %s", mv.version, mv.tags.get("stage"), ckpt)
    return {"checkpoint": str(ckpt), "version": str(mv.version), "stage": mv.tags.get("stage"),
            "score": float(score) if score else None, "data": mv.tags.get("data") or None,
            "uri": mv.tags.get("uri"), "content": content}
