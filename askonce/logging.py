"""Structured logging that never carries patient data.

Log calls pass ids and counts as ``extra={...}``. The JSON formatter writes only
the keys on an allow-list, so a careless ``extra={"name": ...}`` cannot leak PHI
into the logs; the message itself is written as given, so messages must be
constant strings (ruff's ``G`` rules keep f-strings out of log calls).
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from typing import Any

#: ``extra`` keys a log record may carry. Anything else is dropped, not logged.
ALLOWED_EXTRA_KEYS = frozenset(
    {
        "source_id",
        "source",
        "run_id",
        "resource_type",
        "resource_id",
        "golden_id",
        "record_id",
        "task_id",
        "task",
        "count",
        "pages",
        "resources",
        "quarantined",
        "skipped",
        "errors",
        "status",
        "status_code",
        "attempt",
        "delay_s",
        "elapsed_ms",
        "method",
        "path",
        "url",
        "port",
        # the address of a system connecting to a port of ours (an interface engine's)
        "peer",
        "fields",
        "principal",
        "consumer_id",
        "event",
        "grade",
        "score",
        "revision",
        "reason",
        # an exception's type name (never its message: see JsonFormatter)
        "error",
        # delivery and retention: counts, subscription ids and message kinds
        "subscription",
        "kind",
        "notifications",
        "events",
        "failures",
        "queue_rows",
        "outbox_events",
        "sync_runs",
        "held_by",
        "complete",
        "export_jobs",
        # Bulk Data exports: the job's id and its counts
        "job",
        "files",
        # a source's merges followed into the golden records: a count
        "merged",
        # stored records read again that now read otherwise (sync.reparse): a count
        "changed",
    }
)

_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, with allow-listed ``extra`` fields only."""

    def format(self, record: logging.LogRecord) -> str:
        payload: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key.startswith("_"):
                continue
            if key in ALLOWED_EXTRA_KEYS:
                payload[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # The exception type only: exception messages can quote patient data.
            payload["exc_type"] = record.exc_info[0].__name__
        return json.dumps(payload, default=str)


class PlainFormatter(JsonFormatter):
    """Human-readable variant for a terminal, with the same allow-list."""

    def format(self, record: logging.LogRecord) -> str:
        data = json.loads(super().format(record))
        head = f"{data.pop('ts')} {data.pop('level'):<7} {data.pop('logger')}: {data.pop('msg')}"
        tail = " ".join(f"{k}={v}" for k, v in data.items())
        return f"{head} {tail}".rstrip()


def configure_logging(level: str = "INFO", *, json_lines: bool = True) -> None:
    """Install the PHI-safe formatter on the root logger (idempotent)."""
    root = logging.getLogger()
    root.setLevel(level)
    formatter: logging.Formatter = JsonFormatter() if json_lines else PlainFormatter()
    for handler in root.handlers:
        if getattr(handler, "_askonce", False):
            handler.setFormatter(formatter)
            return
    handler = logging.StreamHandler(sys.stderr)
    handler._askonce = True  # type: ignore[attr-defined]
    handler.setFormatter(formatter)
    root.addHandler(handler)
    for noisy in ("httpx", "httpcore", "uvicorn.access", "alembic"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, root.level))
