from __future__ import annotations

import json
import logging

from askonce.logging import JsonFormatter, PlainFormatter


def _record(**extra: object) -> logging.LogRecord:
    record = logging.makeLogRecord({"name": "t", "levelname": "INFO", "msg": "page stored"})
    for key, value in extra.items():
        setattr(record, key, value)
    return record


def test_only_allow_listed_extras_reach_the_log() -> None:
    record = _record(source_id=3, count=50, family="Müller", birthDate="1970-01-01", phone="+1")
    line = JsonFormatter().format(record)
    data = json.loads(line)
    assert data["source_id"] == 3 and data["count"] == 50 and data["msg"] == "page stored"
    for leaked in ("Müller", "1970-01-01", "family", "birthDate", "phone"):
        assert leaked not in line


def test_exception_messages_are_not_logged() -> None:
    try:
        raise ValueError("patient Jane Doe born 1980-02-03")
    except ValueError:
        import sys

        record = _record()
        record.exc_info = sys.exc_info()
    line = JsonFormatter().format(record)
    assert "Jane" not in line and json.loads(line)["exc_type"] == "ValueError"
    assert "Jane" not in PlainFormatter().format(record)
