"""Logs as JSON lines on stderr: one object per record, for journald and log shippers.

Every record has `ts` (RFC 3339, UTC), `level`, `logger` and `message`; a record
logged with `extra={"fields": {...}}` (the per-job line of metrics.py) carries
those fields too, and one with an exception its traceback as `exception`.
"""

from __future__ import annotations

import logging
import sys
from datetime import UTC, datetime
from typing import Any, TextIO

import orjson

# Names a record's own `fields` may not overwrite: they describe the record itself.
RESERVED = ("ts", "level", "logger", "message")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds")
            .replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        fields = getattr(record, "fields", None)
        if isinstance(fields, dict):
            entry.update((k, v) for k, v in fields.items() if k not in RESERVED)
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        elif record.exc_text:
            entry["exception"] = record.exc_text
        # default=str: a field that is not JSON (a Path, an enum) is written as text
        # rather than losing the whole line.
        return orjson.dumps(entry, default=str).decode()


def configure(level: int = logging.INFO, stream: TextIO | None = None) -> None:
    """The root logger writes JSON lines to `stream` (stderr), replacing any handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
