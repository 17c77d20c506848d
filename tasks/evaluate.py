"""Evaluation and the model registry as Prefect tasks: evaluate, register, resolve_champion."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task

from tasks.caching import checkpoint_fingerprint, make_key_fn, manifest_sha, path_key
from tasks.data import IO_RETRIES, PERSIST, RELEASE
from tasks.tracking import run_name, stage_run


def _evaluate_inputs(p: dict[str, Any]) -> list[Any] | None:
    return [checkpoint_fingerprint(p["ckpt"]), manifest_sha(p["data"]), path_key(p["data"]),
            path_key(p["out_json"]),
            {"splits": p.get("splits"), "limit": p.get("limit"), "settings": p.get("settings") or {}}]


@task(name="evaluate", cache_key_fn=make_key_fn("evaluate", _evaluate_inputs), **IO_RETRIES, **PERSIST,
      **RELEASE)
def evaluate(ckpt: str, data: str, out_json: str, splits: list[str] | None = None,
             limit: int | None = None, settings: dict[str, Any] | None = None) -> dict[str, dict]:
    """Caption and score the held-out clips of `data` (a prepared data dir or a raw manifest)
    with a speech checkpoint; writes `out_json` + predictions.jsonl beside it.

    splits: splits to evaluate (None: every split but train); limit: clips per split.
    settings: `evaluate_checkpoint` keywords: meteor, kl_gap, batch_size, max_new_tokens, and
    decoding ({strategy, samples, risk, ...}: `inference.consistent.DecodingSettings`).
    Returns {split: metrics} plus "all" (every evaluated clip together).
    """
    from aligncap_core.inference import evaluate_checkpoint
    from aligncap_core.inference.consistent import DecodingSettings
    from aligncap_core.model.generate import GenerationSettings

    settings = dict(settings or {})
    gen = GenerationSettings(max_new_tokens=settings.pop("max_new_tokens", 64))
    decoding = DecodingSettings(**settings.pop("decoding", {}))
    report = evaluate_checkpoint(ckpt, data, out_json, splits=splits, limit=limit, settings=gen,
                                 decoding=decoding, **settings)
    metrics = report["metrics"]
    get_run_logger().info("evaluate %s on %s: %s", Path(ckpt).name, Path(data).name,
                          {s: {k: metrics[s].get(k) for k in ("bleu4", "cider", "clue_f1")}
                           for s in metrics})
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
             score: float | None = None) -> dict:
    """Publish the champion: copy it to `out_dir` (a plain folder anyone can load) and, when
    tracked, upload it to the stage's MLflow run and point the registry alias `champion` at a
    new model version. Returns {"checkpoint", "version", "model_uri"}.

    Not cached: registering is a side effect that must happen on every run that picks a champion.
    """
    from aligncap_core.serving.pyfunc import log_pyfunc_model
    from aligncap_core.tracking import DEFAULT_MODEL_NAME, register_champion

    out = {"checkpoint": ckpt, "version": None, "model_uri": None}
    if out_dir:
        dest = Path(out_dir)
        tmp = dest.with_name(dest.name + ".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(ckpt, tmp)
        # swap in one rename so a reader never sees half a champion
        if dest.exists():
            shutil.rmtree(dest)
        tmp.rename(dest)
        out["checkpoint"] = str(dest)
    if parent_run_id:
        name = model_name or DEFAULT_MODEL_NAME
        with stage_run(parent_run_id, run_name(stage), uri=tracking_uri) as run:
            source = log_pyfunc_model(ckpt, run, artifact_path="champion", uri=tracking_uri)
            tags = {"stage": stage, "checkpoint": str(Path(ckpt).resolve())}
            if score is not None:
                tags["score"] = str(score)
            mv = register_champion(source, model_name=name, tags=tags, uri=tracking_uri)
        out.update(version=str(mv.version), model_uri=f"models:/{name}@champion")
    get_run_logger().info("champion: %s (stage %s, version %s)", out["checkpoint"], stage, out["version"])
    return out


@task(name="resolve_champion", **IO_RETRIES)
def resolve_champion(dst_dir: str, tracking_uri: str | None = None,
                     model_name: str | None = None) -> dict:
    """The checkpoint behind the registry alias `champion`: its local path when this machine
    has it (the `checkpoint` tag), else its artifacts downloaded into `dst_dir`.

    Returns {"checkpoint", "version", "stage", "score"}; raises a clear error when no champion
    is registered yet (run the pipeline first).
    """
    import mlflow
    from mlflow.exceptions import MlflowException

    from aligncap_core.errors import ConfigError
    from aligncap_core.serving import checkpoint_in
    from aligncap_core.tracking import CHAMPION_ALIAS, DEFAULT_MODEL_NAME, client

    name = model_name or DEFAULT_MODEL_NAME
    try:
        mv = client(tracking_uri).get_model_version_by_alias(name, CHAMPION_ALIAS)
    except MlflowException as e:
        raise ConfigError(f"no '{CHAMPION_ALIAS}' version of model '{name}' at {tracking_uri}: "
                          "run the aligncap-pipeline flow first, or pass start_checkpoint") from e
    local = mv.tags.get("checkpoint")
    if local and Path(local, "meta.json").is_file():
        ckpt = local
    else:
        mlflow.set_tracking_uri(tracking_uri)  # download_artifacts resolves runs:/ through it
        ckpt = mlflow.artifacts.download_artifacts(artifact_uri=mv.source, dst_path=dst_dir)
        ckpt = checkpoint_in(ckpt, f"models:/{name}/{mv.version}")  # a pyfunc model holds it
    score = mv.tags.get("score")
    get_run_logger().info("champion version %s (%s): %s", mv.version, mv.tags.get("stage"), ckpt)
    return {"checkpoint": str(ckpt), "version": str(mv.version), "stage": mv.tags.get("stage"),
            "score": float(score) if score else None}
