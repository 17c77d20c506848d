"""Evaluation tables, checkpoints, round plots and the model registry on MLflow.

Artifacts go wherever the run's experiment stores them: a local folder by default, S3 when the
tracking server runs with `--artifacts-destination s3://...` or the experiment's artifact
location is an `s3://` URI (`MLFLOW_S3_ENDPOINT_URL` + AWS credentials for S3-compatible stores).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

from mlflow.entities import Metric
from mlflow.exceptions import MlflowException

from aligncap_core.defaults import MODEL_NAME
from aligncap_core.errors import ConfigError
from aligncap_core.tracking.runs import client

DEFAULT_MODEL_NAME = MODEL_NAME  # aligncap_core.defaults
CHAMPION_ALIAS = "champion"


def log_eval_table(metrics_by_split: Mapping[str, Mapping[str, float]], name: str, run_id: str, *,
                   uri: str | None = None, as_metrics: bool = True) -> str:
    """Log `{"valid": {"bleu4": 0.2, ...}, "test": {...}}` as an MLflow table `eval/<name>.json`
    (one row per split, shown in the UI's artifact and evaluation views); with `as_metrics`, also
    as metrics `<name>/<split>/<metric>` so runs can be compared and charted. Returns the
    table's `runs:/` URI."""
    if not metrics_by_split:
        raise ConfigError(f"log_eval_table('{name}'): no splits given; pass {{split: {{metric: value}}}}")
    columns = sorted({m for ms in metrics_by_split.values() for m in ms})
    table = {"split": list(metrics_by_split)}
    for col in columns:
        table[col] = [ms.get(col) for ms in metrics_by_split.values()]
    c = client(uri)
    artifact_file = f"eval/{name}.json"
    c.log_table(run_id, data=table, artifact_file=artifact_file)
    if as_metrics:
        import time

        ts = int(time.time() * 1000)
        metrics = [Metric(f"{name}/{split}/{k}", float(v), ts, 0)
                   for split, ms in metrics_by_split.items() for k, v in ms.items()
                   if isinstance(v, (int, float))]
        if metrics:
            c.log_batch(run_id, metrics=metrics)
    return f"runs:/{run_id}/{artifact_file}"


def log_checkpoint(checkpoint_dir: str | os.PathLike, run_id: str, *, artifact_path: str | None = None,
                   uri: str | None = None) -> str:
    """Upload a checkpoint directory to `checkpoints/<dir name>` of the run; returns its
    `runs:/` URI (what `register_champion` takes)."""
    path = Path(checkpoint_dir)
    if not path.is_dir():
        raise ConfigError(f"checkpoint directory not found: {path}; pass the folder a stage wrote")
    artifact_path = artifact_path or f"checkpoints/{path.name}"
    client(uri).log_artifacts(run_id, str(path), artifact_path=artifact_path)
    return f"runs:/{run_id}/{artifact_path}"


def plot_rounds(metrics_by_stage: Mapping[str, Mapping[str, float]], out_png: str | os.PathLike, *,
                metrics: Sequence[str] | None = None, run_id: str | None = None,
                uri: str | None = None) -> Path:
    """Plot each metric across stages in their given order (`distill`, `round-1`, `round-2`...),
    one panel per metric since their scales differ; saves `out_png` and, with `run_id`, logs it
    under `plots/`. Missing values are gaps."""
    import matplotlib

    matplotlib.use("Agg")  # headless: workers have no display
    import matplotlib.pyplot as plt

    stages = list(metrics_by_stage)
    names = list(metrics) if metrics else sorted({m for ms in metrics_by_stage.values() for m in ms})
    if not stages or not names:
        raise ConfigError("plot_rounds: nothing to plot; pass {stage: {metric: value}} with at least one metric")
    cols = min(3, len(names))
    rows = (len(names) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.0 * rows), squeeze=False)
    x = list(range(len(stages)))
    for ax, name in zip(axes.flat, names, strict=False):
        ys = [metrics_by_stage[s].get(name) for s in stages]
        ax.plot(x, [float("nan") if y is None else y for y in ys], marker="o")
        ax.set_title(name, fontsize=10)
        ax.set_xticks(x, stages, rotation=30, ha="right", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names):]:
        ax.axis("off")
    fig.tight_layout()
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    if run_id:
        client(uri).log_artifact(run_id, str(out), artifact_path="plots")
    return out


def version_with_tag(model_name: str, key: str, value: str, *, uri: str | None = None):
    """The newest version of `model_name` whose tag `key` is `value`, None when there is none
    (or no such model)."""
    c = client(uri)
    try:
        versions = c.search_model_versions(f"name = '{model_name}'")
    except MlflowException:
        return None
    found = [v for v in versions if v.tags.get(key) == value]
    return max(found, key=lambda v: int(v.version)) if found else None


def register_champion(source: str, *, run_id: str | None = None, artifact_path: str | None = None,
                      model_name: str = DEFAULT_MODEL_NAME, alias: str = CHAMPION_ALIAS,
                      tags: Mapping[str, str] | None = None, description: str | None = None,
                      uri: str | None = None):
    """Register a checkpoint as a new version of `model_name` and point `alias` at it.

    `source` is a `runs:/<run_id>/<path>` URI (as returned by `log_checkpoint`) or any artifact URI
    (`s3://`, `file://`, `mlflow-artifacts:/`); alternatively pass `run_id` + `artifact_path`.
    The registered model is created when missing. Returns the `ModelVersion`; load the champion
    later with `models:/<model_name>@<alias>` or `client.get_model_version_by_alias`.
    """
    c = client(uri)
    if run_id and artifact_path and not source:
        source = f"runs:/{run_id}/{artifact_path}"
    if source.startswith("runs:/"):
        rid, _, path = source.removeprefix("runs:/").partition("/")
        run_id = run_id or rid
        try:
            base = c.get_run(rid).info.artifact_uri
        except MlflowException as e:
            raise ConfigError(f"register_champion: run {rid} from {source} not found at the tracking server") from e
        # The registry stores a concrete artifact location so the version outlives URI schemes.
        source = f"{base.rstrip('/')}/{path}" if path else base
    try:
        c.get_registered_model(model_name)
    except MlflowException:
        try:
            c.create_registered_model(model_name, description="AlignCap speech emotion captioning checkpoints")
        except MlflowException:
            c.get_registered_model(model_name)  # created meanwhile by another process
    mv = c.create_model_version(model_name, source=source, run_id=run_id,
                                tags=dict(tags or {}), description=description)
    c.set_registered_model_alias(model_name, alias, mv.version)
    return mv
