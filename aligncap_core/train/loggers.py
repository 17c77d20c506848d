"""Metrics loggers for the training loop: a two-method protocol, console, JSON Lines, fan-out.

MLflow plugs in later as one more class with the same two methods.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Protocol

from aligncap_core.utils import atomic_write


class Logger(Protocol):
    def log_metrics(self, metrics: dict[str, float], step: int) -> None: ...

    def log_params(self, params: dict[str, Any]) -> None: ...


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"train": {"lr": 1}} -> {"train.lr": 1} (trackers take flat params)."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


class ConsoleLogger:
    """One line per logged step on stderr (above the progress bar, which rich keeps at the bottom)."""

    def __init__(self) -> None:
        from rich.console import Console

        self.console = Console(stderr=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        body = "  ".join(f"{k} {v:.4g}" for k, v in metrics.items())
        self.console.print(f"step {step}  {body}", highlight=False, soft_wrap=True)

    def log_params(self, params: dict[str, Any]) -> None:
        self.console.print(f"params: {json.dumps(flatten(params), default=str)}",
                           highlight=False, soft_wrap=True)


class JsonlLogger:
    """Appends `{"step": n, ...metrics}` lines to `path`; params go to `params.json` beside it.

    A resumed run logs the steps after its checkpoint again: readers keep the last line per step.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(json.dumps({"step": step, **metrics}) + "\n")

    def log_params(self, params: dict[str, Any]) -> None:
        with atomic_write(self.path.with_name("params.json")) as f:
            json.dump(params, f, indent=2, default=str)


class MultiLogger:
    def __init__(self, *loggers: Logger) -> None:
        self.loggers = loggers

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        for lg in self.loggers:
            lg.log_metrics(metrics, step)

    def log_params(self, params: dict[str, Any]) -> None:
        for lg in self.loggers:
            lg.log_params(params)
