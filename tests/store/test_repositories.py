from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from store import (
    AuditRepository,
    CursorRepository,
    NotFoundError,
    SourceRepository,
    SyncRunRepository,
    unit_of_work,
)
from store.models import Audit, GoldenPatient, SourceRecord


def _source(session: Session, name: str = "ehr-a") -> int:
    return SourceRepository(session).add(name=name, kind="fhir", base_url="http://x/fhir").id


def test_source_round_trip(session: Session) -> None:
    repo = SourceRepository(session)
    repo.add(name="ehr-b", kind="ndjson", base_url="/data", config={"default_region": "DE"})
    repo.add(name="ehr-a", kind="fhir", base_url="http://x/fhir")
    session.commit()
    assert [s.name for s in repo.list()] == ["ehr-a", "ehr-b"]
    assert repo.get_by_name("ehr-b").config == {"default_region": "DE"}
    assert repo.get_by_name("ehr-a").resource_types == ["Patient", "Encounter"]
    with pytest.raises(NotFoundError):
        repo.get_by_name("nope")


def test_source_record_is_unique_per_source_type_id(session: Session) -> None:
    sid = _source(session)
    session.add(SourceRecord(source_id=sid, resource_type="Patient", resource_id="1", raw={}))
    session.commit()
    session.add(SourceRecord(source_id=sid, resource_type="Patient", resource_id="1", raw={}))
    with pytest.raises(IntegrityError):
        session.commit()


def test_json_columns_round_trip_nested_unicode(session: Session) -> None:
    resource = {"resourceType": "Patient", "name": [{"family": "Nguyễn", "given": ["Thị"]}]}
    golden = GoldenPatient(resource=resource)
    session.add(golden)
    session.commit()
    session.expire_all()
    assert session.get(GoldenPatient, golden.id).resource == resource  # type: ignore[union-attr]
    assert golden.last_updated.tzinfo is not None


def test_cursor_commits_with_the_unit_of_work(session_factory: sessionmaker[Session]) -> None:
    with unit_of_work(session_factory) as s:
        sid = _source(s)
    with pytest.raises(RuntimeError), unit_of_work(session_factory) as s:
        CursorRepository(s).set(sid, "Patient", "2026-01-01T00:00:00Z")
        raise RuntimeError("page failed")
    with unit_of_work(session_factory) as s:
        assert CursorRepository(s).get(sid, "Patient") is None
        CursorRepository(s).set(sid, "Patient", "c1")
    with unit_of_work(session_factory) as s:
        CursorRepository(s).set(sid, "Patient", "c2")
    with unit_of_work(session_factory) as s:
        assert CursorRepository(s).get(sid, "Patient") == "c2"


def test_sync_run_and_audit(session: Session) -> None:
    sid = _source(session)
    runs = SyncRunRepository(session)
    runs.start(sid)
    second = runs.start(sid, full=True)
    AuditRepository(session).record("crm-1", "read", resource_type="Patient", resource_id="g1")
    session.commit()
    latest = runs.latest(sid)
    assert latest is not None and latest.id == second.id and latest.full
    audit = session.scalars(select(Audit)).one()
    assert (audit.principal, audit.action, audit.resource_id) == ("crm-1", "read", "g1")
