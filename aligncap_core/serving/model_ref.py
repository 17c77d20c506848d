"""Where a model comes from: a checkpoint folder, s3://, or MLflow (`models:/`, `runs:/`).

    resolve_model("runs/demo/champion")                  # a checkpoint folder (or its copy)
    resolve_model("s3://bucket/champion")                # downloaded once (checkpoint.fetch_to_local)
    resolve_model("models:/aligncap-sec@champion")       # the registry, $MLFLOW_TRACKING_URI
    resolve_model("runs:/<run id>/champion")             # a run's logged model or checkpoint

An MLflow location holds either an aligncap pyfunc model (MLmodel + artifacts/checkpoint, what
the pipeline registers) or a raw checkpoint folder (versions registered before the pyfunc);
both resolve to the checkpoint inside. Downloads are cached under
$ALIGNCAP_CACHE/mlflow/<server>/<name>/<version> (a registry version never changes its files).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from aligncap_core.errors import ConfigError

PYFUNC_CHECKPOINT = "checkpoint"  # the pyfunc artifact key (and folder under artifacts/)
_MODELS_RE = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")


@dataclass(frozen=True)
class ResolvedModel:
    """A local checkpoint folder and what to call it in answers and reports."""

    checkpoint: Path
    uri: str  # what the user passed
    version: str  # "aligncap-sec/3", "runs:/<id>/champion" or "<stage> step <n>"


def checkpoint_in(folder: str | os.PathLike, label: str | None = None) -> Path:
    """The checkpoint inside `folder`: itself (meta.json) or a pyfunc model's artifact."""
    root = Path(folder)
    if (root / "meta.json").is_file():
        return root
    inner = root / "artifacts" / PYFUNC_CHECKPOINT
    if (root / "MLmodel").is_file() and (inner / "meta.json").is_file():
        return inner
    raise ConfigError(f"{label or root}: neither a checkpoint (no meta.json) nor an aligncap MLflow "
                      "model (no MLmodel + artifacts/checkpoint); pass a student checkpoint folder, "
                      "s3:// URI, models:/NAME@ALIAS or runs:/RUN_ID/PATH")


def _cache_root(tracking_uri: str) -> Path:
    from aligncap_core.store import cache_root
    from aligncap_core.utils import fingerprint

    # one folder per tracking server: two servers may both have an "aligncap-sec" version 1
    return cache_root() / "mlflow" / fingerprint(tracking_uri)[:12]


def _download(artifact_uri: str, dest: Path, tracking_uri: str) -> Path:
    """The artifact folder downloaded under `dest` (once: a registry version never changes)."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from aligncap_core.utils import atomic_dir

    if not dest.is_dir():
        try:
            with atomic_dir(dest) as tmp:
                mlflow.artifacts.download_artifacts(artifact_uri=artifact_uri, dst_path=str(tmp),
                                                    tracking_uri=tracking_uri)
        except MlflowException as e:
            raise ConfigError(f"{artifact_uri}: cannot download from MLflow at {tracking_uri} "
                              f"({str(e).splitlines()[0][:200]})") from e
    # a folder artifact lands under its own name: DEST/champion/MLmodel
    inner = [p for p in dest.iterdir() if p.is_dir()]
    return inner[0] if len(inner) == 1 and not (dest / "MLmodel").exists() and not (dest / "meta.json").exists() else dest


def _local_version(ckpt: Path) -> str:
    meta = json.loads((ckpt / "meta.json").read_text())
    return f"{meta.get('stage', 'checkpoint')} step {meta.get('step', '?')}"


def resolve_model(ref: str | os.PathLike, tracking_uri: str | None = None) -> ResolvedModel:
    """A local checkpoint for any model reference (module doc). MLflow references use
    `tracking_uri` (default $MLFLOW_TRACKING_URI, else `runs/mlflow.db`); artifacts on S3 use
    the usual AWS_* / MLFLOW_S3_ENDPOINT_URL environment. ConfigError naming the reference on
    an unknown model, alias, version or run."""
    s = str(ref)
    if not s.startswith(("models:/", "runs:/")):
        from aligncap_core.model.checkpoint import fetch_to_local

        local = fetch_to_local(s)
        if not local.exists():
            raise ConfigError(f"{s}: no such checkpoint folder; pass a student checkpoint folder, "
                              "s3:// URI, models:/NAME@ALIAS or runs:/RUN_ID/PATH")
        ckpt = checkpoint_in(local, s)
        return ResolvedModel(ckpt, s, _local_version(ckpt))
    from mlflow.exceptions import MlflowException

    from aligncap_core.tracking import client
    from aligncap_core.tracking import tracking_uri as default_uri

    uri = tracking_uri or default_uri()
    if s.startswith("runs:/"):
        run_id, _, path = s.removeprefix("runs:/").partition("/")
        dest = _download(s, _cache_root(uri) / "runs" / run_id / (path.strip("/") or "_root"), uri)
        return ResolvedModel(checkpoint_in(dest, s), s, s)
    m = _MODELS_RE.match(s)
    if not m:
        raise ConfigError(f"{s}: expected models:/NAME@ALIAS or models:/NAME/VERSION")
    c = client(uri)
    try:
        mv = (c.get_model_version_by_alias(m["name"], m["alias"]) if m["alias"]
              else c.get_model_version(m["name"], m["version"]))
    except MlflowException as e:
        raise ConfigError(f"{s}: no such registered model version at {uri} "
                          f"({str(e).splitlines()[0][:200]}); train and register one first") from e
    dest = _download(mv.source, _cache_root(uri) / m["name"] / str(mv.version), uri)
    return ResolvedModel(checkpoint_in(dest, s), s, f"{m['name']}/{mv.version}")
