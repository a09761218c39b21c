"""Sources as the CLI and the demo manage them: parse, validate, register, count.

Plain functions (no typer, no printing), so the demo, the CLI and tests share them.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from askonce.runtime import Runtime
from store import SourceRepository
from store.models import GoldenPatient, ReviewItem, SourceRecord
from sync.reparse import parsed_with
from sync.runner import bound_patient_options
from sync.sources import checked_settings

#: Default trust rank of a new source (higher wins survivorship ties).
DEFAULT_TRUST_RANK = 50


def parse_auth(value: str | None) -> dict[str, Any]:
    """``--auth``: JSON, ``@file.json``, ``none``, ``bearer:TOKEN`` or ``basic:USER:PASS``."""
    if not value or value == "none":
        return {"kind": "none"}
    if value.startswith("@"):
        value = Path(value[1:]).read_text(encoding="utf-8")
    if value.lstrip().startswith("{"):
        auth = json.loads(value)
        if not isinstance(auth, dict) or "kind" not in auth:
            raise ValueError("--auth JSON must be an object with a 'kind'")
        return auth
    kind, _, rest = value.partition(":")
    if kind == "bearer" and rest:
        return {"kind": "bearer", "token": rest}
    if kind == "basic" and ":" in rest:
        username, _, password = rest.partition(":")
        return {"kind": "basic", "username": username, "password": password}
    raise ValueError("use none, bearer:TOKEN, basic:USER:PASS, a JSON object or @file.json")


def parse_option(item: str) -> tuple[str, Any]:
    key, sep, raw = item.partition("=")
    if not sep:
        raise ValueError(f"--option {item!r}: expected KEY=VALUE")
    try:
        value: Any = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip(), value


def add_source(
    runtime: Runtime,
    name: str,
    *,
    kind: str,
    url: str,
    auth: dict[str, Any] | None = None,
    schedule: str | None = None,
    resource_types: list[str] | None = None,
    config: dict[str, Any] | None = None,
    trust_rank: int = DEFAULT_TRUST_RANK,
) -> int:
    """Validate and store a source; returns its id. Raises
    :class:`sync.sources.SourceSettingsError` (a ValueError) on bad input."""
    settings = checked_settings(
        kind, url, auth=auth, schedule=schedule, resource_types=resource_types, config=config
    )
    with runtime.unit_of_work() as session:
        source = SourceRepository(session).add(
            name=name,
            kind=kind,
            base_url=settings.url,
            auth=settings.auth,
            resource_types=settings.resource_types,
            schedule=settings.schedule,
            trust_rank=trust_rank,
            config=settings.config,
        )
        # It has no records yet: none needs reading again (sync.reparse).
        source.parsed_with = parsed_with(
            bound_patient_options(source, runtime.settings.default_region)
        )
        return source.id


def record_counts(session: Session, source_id: int) -> dict[str, int]:
    rows = session.execute(
        select(SourceRecord.status, func.count())
        .where(SourceRecord.source_id == source_id)
        .group_by(SourceRecord.status)
    ).all()
    return {status: count for status, count in rows}


def summary_counts(runtime: Runtime) -> dict[str, int]:
    """Source records, golden records, review items: what the demo prints at the end."""
    with runtime.session_factory() as session:
        return {
            "source_records": session.scalar(select(func.count()).select_from(SourceRecord)) or 0,
            "quarantined": session.scalar(
                select(func.count())
                .select_from(SourceRecord)
                .where(SourceRecord.status == "quarantined")
            )
            or 0,
            "golden_records": session.scalar(
                select(func.count())
                .select_from(GoldenPatient)
                .where(GoldenPatient.status == "active")
            )
            or 0,
            "review_items": session.scalar(
                select(func.count()).select_from(ReviewItem).where(ReviewItem.status == "open")
            )
            or 0,
        }
