"""Real-time resolution and link operations on SQLite and PostgreSQL."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from fhir_mapping import parse_patient
from mpi import (
    InvalidOperation,
    Resolution,
    crosswalk_rows,
    link_record,
    list_review_items,
    match_patient,
    merge_golden,
    recompute_golden,
    record_decision,
    resolve_patients,
    unlink_record,
    unmerge_golden,
)
from store.models import (
    FieldProvenance,
    GoldenPatient,
    Link,
    LinkHistory,
    Outbox,
    Source,
    SourceRecord,
)
from tests.mpi.helpers import add_record, add_source, fhir_patient


def _ingest(session: Session, source_name: str, *resources: dict) -> list[Resolution]:
    source = session.scalar(select(Source).where(Source.name == source_name))
    if source is None:
        source = add_source(session, source_name)
    items = [add_record(session, source, r) for r in resources]
    return resolve_patients(session, items)


def _events(session: Session, kind: str) -> int:
    return (
        session.scalar(select(func.count()).select_from(Outbox).where(Outbox.event_type == kind))
        or 0
    )


def test_same_person_from_two_sources_gets_one_golden_record(session: Session) -> None:
    [first] = _ingest(session, "ehr-a", fhir_patient("a1", ssn="512-34-6789"))
    [second] = _ingest(
        session, "ehr-b", fhir_patient("b1", given="Bob", ssn="512-34-6789", phone="415-867-5309")
    )
    session.commit()
    assert first.created and not second.created
    assert second.golden_id == first.golden_id
    assert second.grade == "certain"
    golden = session.get(GoldenPatient, first.golden_id)
    assert golden is not None and golden.version == 2
    names = [n["given"] for n in golden.resource["name"]]
    assert ["Robert"] in names and ["Bob"] in names
    link = session.scalar(select(Link).where(Link.source_record_id == second.source_record_id))
    assert link is not None and "given" in link.explanation["comparisons"]
    assert _events(session, "patient.created") == 1
    assert _events(session, "patient.updated") == 1
    provenance = session.scalars(
        select(FieldProvenance.rule).where(FieldProvenance.golden_id == first.golden_id)
    ).all()
    assert provenance


def test_twin_is_not_linked_but_goes_to_review(session: Session) -> None:
    [jen] = _ingest(session, "ehr-a", fhir_patient("a1", given="Jennifer", gender="female"))
    [becky] = _ingest(session, "ehr-b", fhir_patient("b1", given="Rebecca", gender="female"))
    session.commit()
    assert becky.created and becky.golden_id != jen.golden_id
    items = list_review_items(session)
    assert items and items[0]["source_record_id"] == becky.source_record_id
    assert items[0]["golden_id"] == jen.golden_id


def test_unrelated_people_get_their_own_golden_records(session: Session) -> None:
    results = _ingest(
        session,
        "ehr-a",
        fhir_patient("a1"),
        fhir_patient(
            "a2",
            given="Maria",
            family="Lopez",
            birth="1988-01-02",
            gender="female",
            phone="(212) 555-0101",
            line="1 Oak Ave",
            postal="10001",
            city="New York",
        ),
    )
    assert len({r.golden_id for r in results}) == 2
    assert list_review_items(session) == []


def test_unlink_recomputes_and_is_never_undone(session: Session) -> None:
    [a] = _ingest(session, "ehr-a", fhir_patient("a1", email="rob@example.com"))
    [b] = _ingest(session, "ehr-b", fhir_patient("b1", email="rob@example.com"))
    assert a.golden_id == b.golden_id
    new_id = unlink_record(session, b.source_record_id, actor="steward@example.org")
    session.commit()
    assert new_id != a.golden_id
    link = session.scalar(select(Link).where(Link.source_record_id == b.source_record_id))
    assert link is not None and link.golden_id == new_id and link.method == "MANUAL"
    # A new version of the same record arrives: it stays where the steward put it.
    row = session.get(SourceRecord, b.source_record_id)
    assert row is not None
    [again] = resolve_patients(session, [(row, parse_patient(fhir_patient("b1")))])
    assert again.golden_id == new_id
    # A third record of the same person: it may join either, but never both.
    [c] = _ingest(session, "ehr-c", fhir_patient("c1", email="rob@example.com"))
    assert c.golden_id in (a.golden_id, new_id)
    actions = session.scalars(select(LinkHistory.action)).all()
    assert "unlink" in actions


def test_merge_and_unmerge_restore_both_records(session: Session) -> None:
    [a] = _ingest(session, "ehr-a", fhir_patient("a1"))
    [b] = _ingest(
        session,
        "ehr-b",
        fhir_patient(
            "b1",
            given="Maria",
            family="Lopez",
            birth="1988-01-02",
            gender="female",
            phone="(212) 555-0101",
            line="1 Oak Ave",
            postal="10001",
            city="New York",
        ),
    )
    assert a.golden_id != b.golden_id
    merge_golden(session, b.golden_id, a.golden_id, actor="steward")
    session.commit()
    loser = session.get(GoldenPatient, b.golden_id)
    assert loser is not None and loser.status == "merged" and loser.merged_into == a.golden_id
    assert loser.resource["link"][0]["type"] == "replaced-by"
    survivor = session.get(GoldenPatient, a.golden_id)
    assert survivor is not None
    assert {
        "type": "replaces",
        "other": {"reference": f"Patient/{b.golden_id}"},
    } in survivor.resource["link"]
    assert {r["golden_id"] for r in crosswalk_rows(session)} == {a.golden_id}
    assert _events(session, "patient.merged") == 1

    unmerge_golden(session, b.golden_id, actor="steward")
    session.commit()
    restored = session.get(GoldenPatient, b.golden_id)
    assert restored is not None and restored.status == "active" and restored.merged_into is None
    assert restored.resource["name"][0]["family"] == "Lopez"
    assert {r["golden_id"] for r in crosswalk_rows(session)} == {a.golden_id, b.golden_id}
    with pytest.raises(InvalidOperation):
        unmerge_golden(session, b.golden_id, actor="steward")


def test_steward_link_and_decisions_on_review_items(session: Session) -> None:
    [jen] = _ingest(session, "ehr-a", fhir_patient("a1", given="Jennifer", gender="female"))
    [becky] = _ingest(session, "ehr-b", fhir_patient("b1", given="Rebecca", gender="female"))
    [item] = list_review_items(session)
    result = record_decision(session, "no-match", actor="steward", review_item_id=item["id"])
    assert result["action"] == "recorded"
    assert list_review_items(session) == []
    # Retraining cannot change it: the pair is blocked for good; a manual link still works.
    link_record(session, becky.source_record_id, jen.golden_id, actor="steward")
    session.commit()
    rows = {r["resource_id"]: r for r in crosswalk_rows(session)}
    assert rows["a1"]["golden_id"] == rows["b1"]["golden_id"] == jen.golden_id
    old = session.get(GoldenPatient, becky.golden_id)
    assert old is not None and old.status == "merged"


def test_recompute_after_the_only_record_is_deleted(session: Session) -> None:
    [a] = _ingest(session, "ehr-a", fhir_patient("a1"))
    row = session.get(SourceRecord, a.source_record_id)
    assert row is not None
    row.status = "deleted"
    recompute_golden(session, a.golden_id)
    golden = session.get(GoldenPatient, a.golden_id)
    assert golden is not None and golden.status == "deleted"


def test_match_patient_scores_without_writing(session: Session) -> None:
    [a] = _ingest(session, "ehr-a", fhir_patient("a1", ssn="512-34-6789"))
    before = session.scalar(select(func.count()).select_from(Link))
    candidates = match_patient(session, parse_patient(fhir_patient("q", given="Bob")))
    assert candidates and candidates[0].golden_id == a.golden_id
    assert candidates[0].grade in ("certain", "probable")
    assert "comparisons" in candidates[0].explanation
    assert session.scalar(select(func.count()).select_from(Link)) == before
