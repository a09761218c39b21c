from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

from askonce.logging import ALLOWED_EXTRA_KEYS, JsonFormatter, PlainFormatter


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


def test_every_extra_key_our_log_calls_pass_reaches_the_log() -> None:
    """A key a log call passes and the allow-list lacks is dropped without a word (the
    delivery's counts were): every ``extra={...}`` key in our code must be allow-listed,
    and adding one to the list is the moment to check that it carries no patient data."""
    root = Path(__file__).resolve().parent.parent
    levels = {"debug", "info", "warning", "error", "exception", "critical", "log"}
    dropped: dict[str, list[str]] = {}
    folders = [
        d for d in root.iterdir() if d.is_dir() and d.name not in {"tests"} and d.name[0] != "."
    ]
    for path in sorted(p for folder in folders for p in folder.rglob("*.py")):
        relative = path.relative_to(root)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in levels
            ):
                continue
            for keyword in node.keywords:
                if keyword.arg != "extra":
                    continue
                assert isinstance(keyword.value, ast.Dict), f"{relative}: extra= not a literal"
                for key in keyword.value.keys:
                    assert isinstance(key, ast.Constant), f"{relative}: a computed extra key"
                    if key.value not in ALLOWED_EXTRA_KEYS:
                        dropped.setdefault(str(key.value), []).append(f"{relative}:{key.lineno}")
    assert dropped == {}
