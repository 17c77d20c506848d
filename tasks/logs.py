"""`aligncap_core`'s log records in the Prefect run's logs.

The library logs through Python's `logging` (`aligncap_core.*`, `aligncap.tracking`) and never
imports Prefect; Prefect sends to the API only the records of its own loggers. So without this
a stage's progress lines (`utils.LoggedProgress`: count, elapsed, ETA), a lock it waited for or
a checkpoint it materialized would show in a worker's console at best and never in the UI where
users watch the run. `forward_core_logs()` gives those loggers Prefect's API handler, as
PREFECT_LOGGING_EXTRA_LOGGERS would, but without depending on that variable being set before the
worker imports Prefect, and at INFO unless a level was set. Records logged outside a run (no
flow or task run to attach them to) only go to the console, without Prefect's warning.
"""

from __future__ import annotations

import logging

from prefect.exceptions import MissingContextError
from prefect.logging.handlers import APILogHandler

CORE_LOGGERS = ("aligncap_core", "aligncap")


class CoreLogHandler(APILogHandler):
    """Prefect's API log handler, silent outside a flow or task run."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 - logging's name
        import sys

        if isinstance(sys.exc_info()[1], MissingContextError):
            return
        super().handleError(record)


def forward_core_logs() -> None:
    """Idempotent: once per process, on import of `tasks`."""
    for name in CORE_LOGGERS:
        logger = logging.getLogger(name)
        if not any(isinstance(h, CoreLogHandler) for h in logger.handlers):
            logger.addHandler(CoreLogHandler())
        if logger.level == logging.NOTSET:
            logger.setLevel(logging.INFO)
