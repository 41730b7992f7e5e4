"""Structured logs: one JSON object per line when stderr is not a terminal, text when it is.

Every line about a task carries ``taskId`` and ``keyId`` (pass ``extra=task_extra(task)``), so
an operator can follow one task across the API, the worker and the callbacks with one filter.
Secrets never reach the output: a filter on the handler masks plain API keys, ``Bearer``
credentials, HMAC keys and the query of signed URLs in every record, whoever logged it
(uvicorn's access log included).
"""

from __future__ import annotations

import logging
import re
import sys
import traceback
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

__all__ = ["JsonFormatter", "RedactFilter", "configure_logging", "redact", "task_extra"]

#: record attributes a ``LogRecord`` always has; anything else came in through ``extra``.
#: uvicorn's ``color_message`` (the message again, with terminal colours) is left out too.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {
    "message",
    "asctime",
    "color_message",
}

_SECRETS = [
    # plain API keys (keys.KEY_PREFIX + 48 hex characters)
    (re.compile(r"\bsb-[0-9a-fA-F]{16,}"), "sb-***"),
    # Authorization header values, however they got into a message
    (re.compile(r"(?i)\b(bearer)\s+[^\s\"',;]+"), r"\1 ***"),
    # HMAC keys and signatures given as name=value or "name": "value"
    (
        re.compile(
            r"(?i)\b(hmac[_-]?key|webhook[_-]?secret|secret|signature)([\"']?\s*[:=]\s*[\"']?)[^\s\"',;&]+"
        ),
        r"\1\2***",
    ),
    # signed URLs: the query that makes them valid is the secret part
    (
        re.compile(r"(?i)([?&](?:sig|signature|token|expires|x-amz-[a-z-]+)=)[^\s&\"']+"),
        r"\1***",
    ),
]


def redact(text: str) -> str:
    """``text`` with API keys, bearer credentials, HMAC keys and URL signatures masked."""
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text


def task_extra(task: Any) -> dict[str, str]:
    """``extra=`` for a log call about ``task``: its id and its key's id."""
    return {"taskId": task.id, "keyId": task.key_id}


class RedactFilter(logging.Filter):
    """Masks secrets in the message and its arguments before any handler formats them."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact(message)
        if cleaned != message or record.args:
            record.msg, record.args = cleaned, None
        return True


class JsonFormatter(logging.Formatter):
    """``{"time", "level", "logger", "msg", ...extra fields, "exc"?}`` on one line."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.fromtimestamp(record.created, tz=UTC).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for name, value in record.__dict__.items():
            if name not in _STANDARD and not name.startswith("_"):
                entry[name] = redact(value) if isinstance(value, str) else value
        if record.exc_info:
            entry["exc"] = redact("".join(traceback.format_exception(*record.exc_info)))
        return orjson.dumps(entry, default=str).decode()


class _TextFormatter(logging.Formatter):
    """The terminal form: the task's ids appended when the record has them."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        ids = [
            f"{name}={getattr(record, name)}"
            for name in ("taskId", "keyId")
            if hasattr(record, name)
        ]
        return f"{text} [{' '.join(ids)}]" if ids else text


def configure_logging(
    level: str, *, json: bool | None = None, stream: TextIO | None = None
) -> None:
    """Route every logger (uvicorn's too) to one handler on stderr.

    ``json`` None chooses by the stream: JSON unless it is a terminal.
    """
    stream = stream or sys.stderr
    if json is None:
        json = not (hasattr(stream, "isatty") and stream.isatty())
    handler = logging.StreamHandler(stream)
    handler.addFilter(RedactFilter())
    handler.setFormatter(
        JsonFormatter()
        if json
        else _TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    )
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    # alembic names its plugins and its SQLite settings at info on every start: noise to an
    # operator. What a migration changed, seedbed logs itself (``store.migrate``).
    debug = root.level <= logging.DEBUG
    logging.getLogger("alembic").setLevel(logging.NOTSET if debug else logging.WARNING)
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        # uvicorn's own handlers are not installed (log_config=None): its records come here
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
