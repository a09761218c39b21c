"""Small FHIR resources, a scripted source, and the delivery tests' clock and endpoint for
the sync tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from connectors import Capabilities, Page, Source, SourceConfig, SourceOptions
from store import SourceRepository
from store.models import Outbox, SourceRecord
from store.types import utcnow

if TYPE_CHECKING:
    from askonce.runtime import Runtime

LAST_UPDATED = "2026-01-10T10:00:00Z"


def patient(
    rid: str,
    family: str = "Okafor",
    given: str = "Ada",
    birth: str = "1980-04-02",
    *,
    updated: str = LAST_UPDATED,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": updated},
        "name": [{"family": family, "given": [given]}],
        "gender": "female",
        "birthDate": birth,
        **extra,
    }


def encounter(rid: str, patient_id: str, *, status: str = "finished") -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": rid,
        "meta": {"versionId": "1", "lastUpdated": LAST_UPDATED},
        "status": status,
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": "2025-03-01T08:00:00Z", "end": "2025-03-01T09:00:00Z"},
    }


def add_source(session_factory: sessionmaker[Session], name: str = "ehr", **fields: Any) -> int:
    with session_factory() as session:
        fields.setdefault("kind", "ndjson")
        fields.setdefault("base_url", "/nonexistent")
        source = SourceRepository(session).add(name=name, **fields)
        session.commit()
        return source.id


def write_ndjson(folder: Path, resource_type: str, resources: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    with (folder / f"{resource_type}.ndjson").open("w", encoding="utf-8") as handle:
        for resource in resources:
            handle.write(json.dumps(resource) + "\n")


def records(session: Session, source_id: int, **where: Any) -> list[SourceRecord]:
    stmt = select(SourceRecord).where(SourceRecord.source_id == source_id)
    for key, value in where.items():
        stmt = stmt.where(getattr(SourceRecord, key) == value)
    return list(session.scalars(stmt.order_by(SourceRecord.resource_id)))


def held_block_slots(session: Session) -> set[int]:
    """The block-key advisory lock slots the session's PostgreSQL backend holds now."""
    from mpi.resolve import LOCK_CLASS

    held = session.scalars(
        text(
            "SELECT objid FROM pg_locks WHERE locktype = 'advisory' "
            "AND pid = pg_backend_pid() AND classid = :cls"
        ),
        {"cls": LOCK_CLASS},
    )
    return {int(slot) for slot in held}


def events(session: Session, event_type: str) -> int:
    return (
        session.scalar(
            select(func.count()).select_from(Outbox).where(Outbox.event_type == event_type)
        )
        or 0
    )


class ScriptedSource(Source):
    """A source that serves fixed pages per type, resuming at an integer cursor.

    ``fail_after`` raises the given exception once that many pages were served in
    one stream, to stand in for a crash or an outage in the middle of a run.
    """

    def __init__(
        self,
        pages: dict[str, list[list[dict[str, Any]]]],
        *,
        fail_after: int | None = None,
        error: BaseException | None = None,
        deleted: dict[tuple[str, int], list[str]] | None = None,
    ) -> None:
        super().__init__(SourceConfig(kind="fhir", base_url="scripted"), SourceOptions())
        self.pages = pages
        self.fail_after = fail_after
        self.error = error
        self.deleted = deleted or {}
        self.opened: list[tuple[str, str | None]] = []

    def check(self) -> Capabilities:
        return Capabilities(None, None, {}, frozenset(), frozenset())

    def stream(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        self.opened.append((resource_type, cursor))
        start = int(cursor or 0)
        pages = self.pages.get(resource_type, [])
        for served, index in enumerate(range(start, len(pages))):
            if self.fail_after is not None and served >= self.fail_after:
                assert self.error is not None
                raise self.error
            yield Page(
                resource_type,
                pages[index],
                str(index + 1),
                deleted=self.deleted.get((resource_type, index), []),
            )

    def close(self) -> None:
        self.closed = True

    def fetch(self, resource_type: str, resource_id: str) -> dict[str, Any] | None:
        for page in self.pages.get(resource_type, []):
            for resource in page:
                if resource.get("id") == resource_id:
                    return resource
        return None


class Clock:
    """A clock the test moves; starts now."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class Endpoint:
    """A MockTransport endpoint: records every request, answers from a queue (then 200)."""

    def __init__(self) -> None:
        self.requests: list[httpx.Request] = []
        self.answers: list[int | Exception] = []

    def handler(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        answer = self.answers.pop(0) if self.answers else 200
        if isinstance(answer, Exception):
            raise answer
        return httpx.Response(answer)

    def client(self) -> httpx.Client:
        return httpx.Client(transport=httpx.MockTransport(self.handler))

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for r in self.requests]


def embedded(tmp_path: Path, **settings: Any) -> tuple[Runtime, Path]:
    """An embedded runtime (SQLite ``embedded.db``, tasks in-process) and an NDJSON folder
    of five Patients and no Encounter."""
    from askonce.runtime import build_runtime
    from askonce.settings import Settings
    from store import upgrade

    url = f"sqlite:///{tmp_path / 'embedded.db'}"
    upgrade(url)
    runtime = build_runtime(Settings(database_url=url, **settings))
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient(f"p{n}", f"Fam{n}") for n in range(5)])
    write_ndjson(folder, "Encounter", [])
    return runtime, folder
