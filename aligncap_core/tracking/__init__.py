"""MLflow tracking for aligncap (see ARCHITECTURE.md, "MLflow"): runs that work across processes,
redacted params, a buffering train logger, evaluation tables, plots and the model registry.

Typical use from a flow and its stages (each call may run in a different process):

    uri = tracking_uri()                               # $MLFLOW_TRACKING_URI or runs/mlflow.db
    exp = experiment_for("aligncap-demo")
    parent = start_parent_run(exp, "pipeline", tags={"prefect.flow_run_id": flow_run_id})
    child = start_child_run(parent, "distill", params=cfg)       # retried stage -> same child
    with MlflowLogger(child) as logger:
        train_student(..., logger=logger)
    log_eval_table({"valid": scores}, "eval", child)
    register_champion(log_checkpoint(best_dir, child))
"""

from aligncap_core.tracking.artifacts import (
    CHAMPION_ALIAS,
    DEFAULT_MODEL_NAME,
    log_checkpoint,
    log_eval_table,
    plot_rounds,
    register_champion,
    version_with_tag,
)
from aligncap_core.tracking.logger import MlflowLogger
from aligncap_core.tracking.redact import (
    REDACTED,
    flatten_params,
    is_secret_key,
    redact_config,
    redact_value,
)
from aligncap_core.tracking.runs import (
    FLOW_RUN_TAG,
    PARENT_RUN_TAG,
    STAGE_TAG,
    client,
    end_run,
    experiment_for,
    find_child_run,
    log_config_artifact,
    log_params,
    resume_run,
    start_child_run,
    start_parent_run,
    tracking_uri,
)

__all__ = [
    "CHAMPION_ALIAS", "DEFAULT_MODEL_NAME", "FLOW_RUN_TAG", "PARENT_RUN_TAG", "REDACTED", "STAGE_TAG",
    "MlflowLogger", "client", "end_run", "experiment_for", "find_child_run", "flatten_params",
    "is_secret_key", "log_checkpoint", "log_config_artifact", "log_eval_table", "log_params",
    "plot_rounds", "redact_config", "redact_value", "register_champion", "resume_run",
    "start_child_run", "start_parent_run", "tracking_uri", "version_with_tag",
]
