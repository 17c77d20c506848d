"""Run a training stage in this process, or in N processes under `accelerate launch` (DDP).

    run_stage("student", {"data_dir": ..., "teacher_ckpt": ..., "out_dir": ..., "config": {...}},
              processes=None)   # None: $ALIGNCAP_NUM_PROCESSES, else one per visible GPU (CPU: 1)

One process runs the stage function here, exactly as a direct call would (the CPU default
path). N > 1 starts

    python -m accelerate.commands.launch --multi_gpu --num_processes N ... \\
        -m aligncap_core.train.launch STAGE SPEC.json

(torchrun underneath): every process runs the same stage function (`train.runtime` shares the
work; NCCL on GPUs, gloo on a CPU-only machine, where the tests use it), rank 0 writes the
result into the spec's `result_path`, and `run_stage` returns it. The stage functions are the
library's (`train.stages`, `improve.steps.dpo_step`), so a launched run writes the same run
folder, resumes the same way and is refused by the same run identity check.

A spec is JSON: paths, the stage config as a dict, and optionally `tracking`
({"run_id", "uri"}) and `metrics_path`: rank 0 then logs the step metrics into that MLflow run
and / or JSON Lines file.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aligncap_core.errors import ConfigError

ENV_PROCESSES = "ALIGNCAP_NUM_PROCESSES"  # set by a GPU worker (deployments/) or by hand


def resolve_processes(processes: int | None = None) -> int:
    """How many training processes: `processes` when > 0, else $ALIGNCAP_NUM_PROCESSES when
    > 0, else the GPUs this process sees (a job given gpu_count GPUs sees exactly those), else 1."""
    if processes is not None and processes > 0:
        return processes
    env = os.environ.get(ENV_PROCESSES, "").strip()
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ConfigError(f"${ENV_PROCESSES}={env!r} is not a whole number; set it to the number "
                              "of training processes (one per GPU), or unset it") from None
        if n > 0:
            return n
    import torch

    return max(1, torch.cuda.device_count())


def _tracking_logger(spec: dict[str, Any]) -> Any:
    """Rank 0's logger of a spec: the MLflow run of `tracking`, and/or the JSON Lines file
    `metrics_path`; None without either (the stage then logs into its run folder)."""
    from aligncap_core.train.runtime import is_main_process

    t = spec.get("tracking") or {}
    if not is_main_process() or not (t.get("run_id") or spec.get("metrics_path")):
        return None
    from aligncap_core.train.loggers import JsonlLogger, MultiLogger

    loggers: list[Any] = []
    if t.get("run_id"):
        from aligncap_core.tracking import MlflowLogger

        loggers.append(MlflowLogger(t["run_id"], t.get("uri")))
    if spec.get("metrics_path"):
        loggers.append(JsonlLogger(spec["metrics_path"]))
    return loggers[0] if len(loggers) == 1 else MultiLogger(*loggers)


def _teacher(spec: dict[str, Any], logger: Any) -> str:
    from aligncap_core.train.config import TeacherConfig, from_dict
    from aligncap_core.train.stages import train_teacher

    return str(train_teacher(spec["data_dir"], spec["out_dir"],
                             from_dict(TeacherConfig, spec.get("config")), logger=logger,
                             show_progress=spec.get("show_progress", True)))


def _student(spec: dict[str, Any], logger: Any) -> str:
    from aligncap_core.train.config import StudentConfig, from_dict
    from aligncap_core.train.stages import train_student

    return str(train_student(spec["data_dir"], spec["teacher_ckpt"], spec["out_dir"],
                             from_dict(StudentConfig, spec.get("config")), logger=logger,
                             show_progress=spec.get("show_progress", True)))


def _dpo(spec: dict[str, Any], logger: Any) -> str:
    from aligncap_core.improve.steps import dpo_step

    return str(dpo_step(spec["policy_ckpt"], spec["pairs_path"], spec["data_dir"],
                        spec["out_dir"], spec.get("config") or {}, int(spec["round"]), logger))


def _dpo_round(spec: dict[str, Any], logger: Any) -> str:
    from aligncap_core.prefs.dpo import DPORoundConfig, run_dpo_round

    return str(run_dpo_round(spec["policy_ckpt"], spec["pairs_path"], spec.get("teacher"),
                             spec["out_dir"], DPORoundConfig.from_dict(spec.get("config")), logger))


# teacher / student: train.stages; dpo: a preference round's DPO step on its data dir
# (improve.steps.dpo_step, what the flows run); dpo_round: one DPO round on a pairs file
STAGES: dict[str, Callable[[dict[str, Any], Any], str]] = {
    "teacher": _teacher, "student": _student, "dpo": _dpo, "dpo_round": _dpo_round}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_command(stage: str, spec_path: str | Path, processes: int,
                   port: int | None = None) -> list[str]:
    """The `accelerate launch` command line that runs `stage` in `processes` processes on this
    machine (one per GPU; on a CPU-only machine, gloo processes)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    return [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
            "--num_processes", str(processes), "--num_machines", "1",
            "--mixed_precision", "no", "--dynamo_backend", "no",  # the loop does its own autocast
            "--main_process_port", str(port or _free_port()),
            "-m", "aligncap_core.train.launch", stage, str(spec_path)]


def run_stage(stage: str, spec: dict[str, Any], processes: int | None = None,
              logger: Any = None) -> str:
    """Run `stage` with `spec` (module doc); returns what the stage returns (a checkpoint path).
    logger: used in-process only (a launch logs through `spec["tracking"]` or the run folder)."""
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r} (known: {', '.join(STAGES)})")
    n = resolve_processes(processes)
    if n == 1:
        return STAGES[stage](spec, logger if logger is not None else _tracking_logger(spec))
    with tempfile.TemporaryDirectory(prefix=f"aligncap-{stage}-") as tmp:
        spec_path, result_path = Path(tmp) / "spec.json", Path(tmp) / "result.json"
        spec_path.write_text(json.dumps({**spec, "result_path": str(result_path)}, default=str))
        cmd = launch_command(stage, spec_path, n)
        # the children find aligncap where this process does (a checkout run with PYTHONPATH)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in [str(Path(__file__).resolve().parents[2]), os.environ.get("PYTHONPATH")] if p)}
        proc = subprocess.run(cmd, env=env)
        if proc.returncode != 0:
            raise RuntimeError(f"{stage}: the {n}-process launch failed (exit {proc.returncode}); "
                               f"its processes' errors are above. Command: {' '.join(cmd)}")
        if not result_path.is_file():
            raise RuntimeError(f"{stage}: the launch ended without a result ({result_path})")
        return json.loads(result_path.read_text())["result"]


def main(argv: list[str] | None = None) -> None:
    """Entry of every launched process: `python -m aligncap_core.train.launch STAGE SPEC.json`."""
    stage, spec_path = (argv or sys.argv[1:])[:2]
    spec = json.loads(Path(spec_path).read_text())
    logger = _tracking_logger(spec)
    result = STAGES[stage](spec, logger)
    for lg in getattr(logger, "loggers", [logger]):  # send what MLflow still buffers
        if hasattr(lg, "close"):
            lg.close()
    from aligncap_core.train.runtime import is_main_process

    if is_main_process() and spec.get("result_path"):
        Path(spec["result_path"]).write_text(json.dumps({"result": result}))


if __name__ == "__main__":
    main()
