"""Structured JSON logs, one object a line on stdout.

    log = get_logger("pdp")
    log.info("token.issued", subject=sub, audience=aud)

Values under keys that name secrets are replaced, so a token never reaches a log.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_SECRET_KEYS = frozenset(
    {"token", "access_token", "subject_token", "refresh_token", "password", "secret", "authorization",
     "private_key", "admin_token"}
)
REDACTED = "[redacted]"


def _redact(fields: dict[str, Any]) -> dict[str, Any]:
    return {k: (REDACTED if k.lower() in _SECRET_KEYS else v) for k, v in fields.items()}


class JSONFormatter(logging.Formatter):
    _second: tuple[int, str] = (-1, "")  # the last second formatted: one line per request at load

    def _stamp(self, created: float, msecs: float) -> str:
        second = int(created)
        if self._second[0] != second:
            self._second = (second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second)))
        return f"{self._second[1]}.{int(msecs):03d}Z"

    def format(self, record: logging.LogRecord) -> str:
        doc: dict[str, Any] = {
            "ts": self._stamp(record.created, record.msecs),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if fields:
            doc.update(_redact(fields))
        if record.exc_info and record.exc_info[0] is not None:
            doc["error_type"] = record.exc_info[0].__name__
            doc["error"] = str(record.exc_info[1])
        return json.dumps(doc, default=str, separators=(",", ":"))


class EventLogger:
    """A thin wrapper that takes an event name and keyword fields."""

    def __init__(self, logger: logging.Logger) -> None:
        self._logger = logger

    def _log(self, level: int, event: str, exc_info: bool, fields: dict[str, Any]) -> None:
        if self._logger.isEnabledFor(level):
            self._logger.log(level, event, extra={"fields": fields}, exc_info=exc_info)

    def debug(self, event: str, **fields: Any) -> None:
        self._log(logging.DEBUG, event, False, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log(logging.INFO, event, False, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log(logging.WARNING, event, False, fields)

    def error(self, event: str, exc_info: bool = False, **fields: Any) -> None:
        self._log(logging.ERROR, event, exc_info, fields)


def get_logger(name: str) -> EventLogger:
    return EventLogger(logging.getLogger(f"jitmesh.{name}"))


def configure(level: str = "info", stream: Any = None) -> None:
    """Route jitmesh, uvicorn and library logs through the JSON formatter."""
    # The JSON lines carry none of the caller's file and line, thread or process, which
    # logging would otherwise look up for every record (the logging HOWTO, "Optimization").
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):
        lg = logging.getLogger(name)
        lg.handlers[:] = []
        lg.propagate = True
    # Access logs would carry query strings; the services log their own events instead.
    logging.getLogger("uvicorn.access").disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)
    logging.getLogger("httpcore").setLevel(logging.WARNING)
