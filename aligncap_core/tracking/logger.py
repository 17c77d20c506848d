"""`MlflowLogger`: the training loop's logger protocol (`log_metrics`, `log_params`) on MLflow.

Metrics are sent in `log_batch` calls (one request per batch, not per value). A tracking server
that is down or slow must never stop training, so every failure is caught: the values stay in a
buffer (memory, plus a JSON Lines spool file when `spool_path` is given, so a restarted process
still sends them), one warning is printed per outage, and the buffer is sent on the next
successful call. After a failure the logger waits `retry_after_s` before trying again, so a dead
server costs training one connection attempt per interval, not one per step.
"""

from __future__ import annotations

import atexit
import json
import logging
import math
import os
import socket
import time
import weakref
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlflow.entities import Metric, Param
from mlflow.exceptions import MlflowException
from mlflow.utils.validation import MAX_METRICS_PER_BATCH, MAX_PARAMS_TAGS_PER_BATCH

from aligncap_core.tracking.redact import flatten_params
from aligncap_core.tracking.runs import client, tracking_uri

log = logging.getLogger("aligncap.tracking")

# Error codes that mean "this request is wrong", not "the server is unavailable": retrying would
# fail forever, so such a batch is dropped with a warning instead of blocking the buffer.
_PERMANENT_ERRORS = {"INVALID_PARAMETER_VALUE", "RESOURCE_DOES_NOT_EXIST", "BAD_REQUEST",
                     "PERMISSION_DENIED", "INVALID_STATE"}


def _is_permanent(exc: Exception) -> bool:
    return isinstance(exc, MlflowException) and exc.error_code in _PERMANENT_ERRORS


def _close_at_exit(ref: weakref.ref) -> None:
    logger = ref()
    if logger is not None and logger.pending:
        logger.close()


def _check_reachable(uri: str, timeout: float = 2.0) -> None:
    """Raise ConnectionError fast when an http(s) tracking server does not accept connections.

    MLflow's own client retries a refused connection with exponential backoff (minutes by
    default); probing first keeps a dead server from stalling the training loop.
    """
    parts = urlsplit(uri)
    if parts.scheme not in ("http", "https"):
        return
    port = parts.port or (443 if parts.scheme == "https" else 80)
    try:
        socket.create_connection((parts.hostname, port), timeout=timeout).close()
    except OSError as e:
        raise ConnectionError(f"cannot connect to {parts.hostname}:{port}: {e}") from e


class MlflowLogger:
    """Logs one run's step metrics and params; never raises into the caller.

    run_id: the (child) run to log into. uri: tracking URI (default `tracking_uri()`).
    batch_size: metrics buffered before a send. flush_interval_s: a partial batch is sent once it
    is this old, so the UI stays close to live. max_buffer: values kept while the server is down
    (the oldest are dropped beyond it, with a warning). spool_path: a JSON Lines file (one per
    run) holding unsent values across restarts. Call `close()` (or use `with`) at the end;
    otherwise the rest is sent when the interpreter exits.
    """

    def __init__(self, run_id: str, uri: str | None = None, *, batch_size: int = 200,
                 flush_interval_s: float = 10.0, retry_after_s: float = 30.0,
                 spool_path: str | os.PathLike | None = None, max_buffer: int = 1_000_000) -> None:
        self.run_id = run_id
        self.uri = uri or tracking_uri()
        self.batch_size = min(batch_size, MAX_METRICS_PER_BATCH)
        self.flush_interval_s = flush_interval_s
        self.retry_after_s = retry_after_s
        self.max_buffer = max_buffer
        self.spool_path = Path(spool_path) if spool_path else None
        self._metrics: list[Metric] = []
        self._params: list[Param] = []
        self._last_flush = time.monotonic()
        self._retry_at = 0.0
        self._down_since: float | None = None
        self._dropped = 0
        self._client = None
        self._load_spool()
        # The training loop only knows log_metrics/log_params; a last partial batch must still
        # reach the server when the caller never calls close().
        atexit.register(_close_at_exit, weakref.ref(self))

    # -- the logger protocol -------------------------------------------------------------------
    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Buffer `metrics` at `step`; non-finite and non-numeric values are skipped."""
        ts = int(time.time() * 1000)
        for k, v in metrics.items():
            try:
                value = float(v)
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                self._metrics.append(Metric(str(k), value, ts, int(step)))
        self._trim()
        if (len(self._metrics) >= self.batch_size
                or time.monotonic() - self._last_flush >= self.flush_interval_s):
            self.flush()

    def log_params(self, params: Mapping[str, Any]) -> None:
        """Flatten and redact `params` (see `flatten_params`) and send them now if possible."""
        self._params.extend(Param(k, v) for k, v in flatten_params(params).items())
        self.flush()

    # -- sending -------------------------------------------------------------------------------
    @property
    def pending(self) -> int:
        """Values buffered and not yet accepted by the server."""
        return len(self._metrics) + len(self._params)

    def flush(self, force: bool = False) -> bool:
        """Send everything buffered; True when the buffer is empty afterwards. Never raises.

        Within `retry_after_s` of a failure nothing is attempted unless `force`.
        """
        if not self.pending:
            return True
        if not force and time.monotonic() < self._retry_at:
            return False
        try:
            _check_reachable(self.uri)
            self._client = self._client or client(self.uri)
            while self._params:
                self._send(params=self._params[:MAX_PARAMS_TAGS_PER_BATCH])
                del self._params[:MAX_PARAMS_TAGS_PER_BATCH]
            while self._metrics:
                self._send(metrics=self._metrics[:self.batch_size])
                del self._metrics[:self.batch_size]
        except Exception as e:  # noqa: BLE001 - any failure must stay out of the training loop
            self._on_failure(e)
            return False
        self._on_success()
        return True

    def _send(self, metrics: list[Metric] = (), params: list[Param] = ()) -> None:
        try:
            self._client.log_batch(self.run_id, metrics=metrics, params=params, synchronous=True)
        except MlflowException as e:
            if not _is_permanent(e):
                raise
            what = f"{len(metrics)} metrics" if metrics else f"{len(params)} params"
            log.warning("MLflow rejected %s for run %s and they were dropped: %s",
                        what, self.run_id, str(e).splitlines()[0][:300])

    def _on_failure(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self.retry_after_s
        if self._down_since is None:
            self._down_since = time.time()
            log.warning(
                "MLflow tracking at %s is unreachable (%s: %s); training continues and metrics are "
                "buffered (%d so far%s), retried every %.0f s and sent when it is back. Start the "
                "server (`aligncap up`) or check MLFLOW_TRACKING_URI.",
                self.uri, type(exc).__name__, str(exc).splitlines()[0][:200] if str(exc) else "",
                self.pending, f", spooled to {self.spool_path}" if self.spool_path else "",
                self.retry_after_s)
        self._write_spool()

    def _on_success(self) -> None:
        self._last_flush = time.monotonic()
        self._retry_at = 0.0
        if self._down_since is not None:
            log.warning("MLflow tracking at %s is reachable again; buffered metrics were sent.", self.uri)
            self._down_since = None
        if self.spool_path and self.spool_path.exists():
            self.spool_path.unlink()

    def _trim(self) -> None:
        extra = self.pending - self.max_buffer
        if extra > 0:
            del self._metrics[:extra]
            if self._dropped == 0:
                log.warning("MLflow metric buffer is full (%d values): dropping the oldest.", self.max_buffer)
            self._dropped += extra

    # -- spool file: buffered values survive a restart of the training process -----------------
    def _write_spool(self) -> None:
        if not self.spool_path:
            return
        try:
            self.spool_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.spool_path.with_suffix(".tmp")
            with open(tmp, "w", encoding="utf-8") as f:
                for p in self._params:
                    f.write(json.dumps({"run_id": self.run_id, "param": p.key, "value": p.value}) + "\n")
                for m in self._metrics:
                    f.write(json.dumps({"run_id": self.run_id, "metric": m.key, "value": m.value,
                                        "timestamp": m.timestamp, "step": m.step}) + "\n")
            os.replace(tmp, self.spool_path)
        except OSError as e:
            log.warning("cannot write the MLflow spool file %s (%s); buffered metrics are kept in memory only",
                        self.spool_path, e)

    def _load_spool(self) -> None:
        if not self.spool_path or not self.spool_path.exists():
            return
        for line in self.spool_path.read_text(encoding="utf-8").splitlines():
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash
            if rec.get("run_id") != self.run_id:
                continue
            if "param" in rec:
                self._params.append(Param(rec["param"], rec["value"]))
            else:
                self._metrics.append(Metric(rec["metric"], rec["value"], rec["timestamp"], rec["step"]))

    # -- lifecycle -------------------------------------------------------------------------------
    def close(self) -> bool:
        """Final flush (ignores the retry interval); True when nothing was left unsent."""
        ok = self.flush(force=True)
        if not ok:
            log.warning("%d MLflow values for run %s were not sent%s.", self.pending, self.run_id,
                        f"; they are kept in {self.spool_path}" if self.spool_path else "")
        return ok

    def __enter__(self) -> MlflowLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
