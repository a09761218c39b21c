"""The Patient write path at the driver level: what a page stores, read back through the ORM."""

from __future__ import annotations

import gc
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from fhir_mapping import SourcePatient
from store.models import (
    FieldProvenance,
    GoldenPatient,
    GoldenPatientVersion,
    Link,
    LinkHistory,
    Outbox,
)
from sync import ingest_page
from sync.runner import INGEST_GC_THRESHOLD, INGEST_GC_THRESHOLD_1, ingest_gc
from tests.sync.helpers import add_source, patient, records

PHONE = [{"system": "phone", "value": "(415) 555-0123"}]


def test_new_patients_rows_read_back_as_written(session_factory: sessionmaker[Session]) -> None:
    source_id = add_source(session_factory)
    first = patient("p1", telecom=PHONE)
    with session_factory() as session:
        result = ingest_page(
            session, source_id, Page("Patient", [first, patient("p2", "Nguyen", "Van")], "c1")
        )
        session.commit()
    assert (result.stored, result.golden_created) == (2, 2)
    with session_factory() as session:
        p1, p2 = records(session, source_id)
        assert p1.raw == first
        assert p1.status == "active" and p1.error is None and p1.content_hash
        assert p1.version_id == "1"
        assert p1.last_updated == datetime(2026, 1, 10, 10, 0, tzinfo=UTC)
        assert p1.received_at.tzinfo is not None and p1.updated_at.tzinfo is not None
        assert SourcePatient.from_dict(p1.normalized or {}).resource_id == "p1"
        link = session.scalars(select(Link).where(Link.source_record_id == p1.id)).one()
        assert (link.grade, link.method, link.flagged) == ("certain", "AUTO", False)
        assert link.explanation["reason"] == "no-candidate-linked"
        assert link.created_at.tzinfo is not None
        history = session.scalars(
            select(LinkHistory).where(LinkHistory.source_record_id == p1.id)
        ).one()
        assert (history.action, history.golden_id, history.actor) == (
            "create",
            link.golden_id,
            "mpi",
        )
        assert history.snapshot is None and history.explanation == link.explanation
        golden = session.get(GoldenPatient, link.golden_id)
        assert golden is not None and golden.version == 1
        assert golden.resource["name"][0]["family"] == "Okafor"
        version = session.get(GoldenPatientVersion, (golden.id, 1))
        assert version is not None and version.resource == golden.resource
        provenance = session.scalars(
            select(FieldProvenance).where(FieldProvenance.golden_id == golden.id)
        ).all()
        fields = sorted(p.field for p in provenance)
        assert fields == ["birthDate", "gender", "name", "telecom"]
        assert {p.source_record_id for p in provenance} == {p1.id}
        by_field = {p.field: p for p in provenance}
        assert by_field["birthDate"].value == "1980-04-02"
        assert by_field["name"].value == {"family": "Okafor", "given": ["Ada"]}
        assert by_field["name"].observed_at == datetime(2026, 1, 10, 10, 0, tzinfo=UTC)
        created = session.scalars(
            select(Outbox).where(
                Outbox.event_type == "patient.created", Outbox.aggregate_id == golden.id
            )
        ).one()
        assert created.payload["source_record_id"] == p1.id
        assert created.attempts == 0 and created.delivered_at is None
        assert created.next_attempt_at.tzinfo is not None
        assert p2.id != p1.id


def test_a_changed_patient_updates_its_record_golden_and_provenance(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1")], "c1"))
        session.commit()
    with session_factory() as session:
        [before] = records(session, source_id)  # in the session's identity map
        golden_id = session.scalars(select(Link.golden_id)).one()
        changed = patient("p1", "Okafor-Smith", updated="2026-02-01T00:00:00Z", telecom=PHONE)
        changed["meta"]["versionId"] = "2"
        result = ingest_page(session, source_id, Page("Patient", [changed], "c2"))
        assert (result.stored, result.golden_created) == (1, 0)
        # The object loaded before the page was written behind the ORM's back: expired.
        assert before.raw == changed and before.version_id == "2"
        session.commit()
    with session_factory() as session:
        [record] = records(session, source_id)
        assert record.id == before.id
        assert record.raw == changed and record.error is None
        assert (record.normalized or {})["names"][0]["family"] == "Okafor-Smith"
        golden = session.get(GoldenPatient, golden_id)
        assert golden is not None and golden.version == 2
        assert golden.resource["name"][0]["family"] == "Okafor-Smith"
        assert session.scalars(
            select(GoldenPatientVersion.version).where(GoldenPatientVersion.golden_id == golden_id)
        ).all() == [1, 2]
        fields = session.scalars(
            select(FieldProvenance.field).where(FieldProvenance.golden_id == golden_id)
        ).all()
        assert sorted(fields) == ["birthDate", "gender", "name", "telecom"]  # replaced, not added
        updated = session.scalars(
            select(Outbox.payload).where(Outbox.event_type == "patient.updated")
        ).all()
        assert updated == [
            {**updated[0], "golden_id": golden_id, "source_record_id": record.id, "version": 2}
        ]


def test_a_stored_patient_that_turns_invalid_is_quarantined_in_place(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [patient("p1"), patient("p2")], "c1"))
        session.commit()
    bad = patient("p1", birth="1980-13-45", updated="2026-02-01T00:00:00Z")
    with session_factory() as session:
        result = ingest_page(session, source_id, Page("Patient", [bad, patient("p3")], "c2"))
        session.commit()
    assert (result.stored, result.quarantined) == (1, 1)
    with session_factory() as session:
        by_id = {r.resource_id: r for r in records(session, source_id)}
        assert sorted(by_id) == ["p1", "p2", "p3"]
        assert by_id["p1"].status == "quarantined" and by_id["p1"].raw == bad
        assert by_id["p1"].error
        assert by_id["p3"].status == "active"
        linked = set(session.scalars(select(Link.source_record_id)))
        assert by_id["p3"].id in linked


def test_a_page_naming_a_resource_twice_stores_it_once(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    older = patient("p1", updated="2026-01-01T00:00:00Z")
    newer = patient("p1", "Nguyen", updated="2026-01-02T00:00:00Z")
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [newer, older], "c1"))
        session.commit()
    with session_factory() as session:
        [record] = records(session, source_id)
        assert record.raw == newer
        assert len(session.scalars(select(Link)).all()) == 1


def test_ingest_gc_restores_the_collector() -> None:
    gc.unfreeze()  # a process that froze nothing itself (an app started by another test may)
    thresholds = gc.get_threshold()
    frozen = gc.get_freeze_count()
    with ingest_gc():
        assert gc.get_threshold()[0] >= INGEST_GC_THRESHOLD
        assert gc.get_threshold()[1] >= INGEST_GC_THRESHOLD_1
        assert gc.get_threshold()[2] == thresholds[2]
        assert gc.get_freeze_count() > frozen
    assert gc.get_threshold() == thresholds
    assert gc.get_freeze_count() == frozen


def test_ingest_gc_leaves_objects_frozen_by_someone_else_frozen() -> None:
    gc.freeze()
    try:
        frozen = gc.get_freeze_count()
        with ingest_gc():
            pass
        # Still frozen (the count only drops by frozen objects freed meanwhile).
        assert gc.get_freeze_count() > frozen // 2 > 0
    finally:
        gc.unfreeze()


def test_a_golden_record_keeps_what_any_of_its_sources_knows(
    session_factory: sessionmaker[Session],
) -> None:
    """Marital status, a twin's birth order, next of kin and languages reach the golden
    record, and a newer source record that lacks them does not take them away."""
    details: dict[str, Any] = {
        "maritalStatus": {
            "coding": [
                {"system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus", "code": "M"}
            ]
        },
        "multipleBirthInteger": 2,
        "contact": [{"name": {"family": "Okafor", "given": ["Chidi"]}}],
        "communication": [{"language": {"coding": [{"system": "urn:ietf:bcp:47", "code": "yo"}]}}],
    }
    first, second = add_source(session_factory, "ehr-a"), add_source(session_factory, "ehr-b")
    with session_factory() as session:
        ingest_page(session, first, Page("Patient", [patient("a1", telecom=PHONE, **details)], "c"))
        session.commit()
        alone = session.scalars(select(GoldenPatient)).one().resource
    assert {key: alone.get(key) for key in details} == details
    newer = patient("b1", telecom=PHONE, updated="2026-03-01T00:00:00Z")
    with session_factory() as session:
        ingest_page(session, second, Page("Patient", [newer], "c"))
        session.commit()
        [golden_id] = set(session.scalars(select(Link.golden_id)))  # one person
        golden = session.get(GoldenPatient, golden_id)
        assert golden is not None and golden.version == 2
    assert {key: golden.resource.get(key) for key in details} == details
