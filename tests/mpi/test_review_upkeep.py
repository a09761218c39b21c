"""The review queue follows the golden records (mpi.review.settle_review_items): a merged
golden record's items name its survivor, an item whose question has gone is withdrawn,
and an item left behind is settled when a steward decides it instead of failing."""

from __future__ import annotations

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mpi import (
    WITHDRAWN,
    list_review_items,
    merge_golden,
    record_decision,
    resolve_patients,
)
from store.models import GoldenPatient, Link, MatchDecision, ReviewItem, Source, SourceRecord
from sync.pipeline import apply_deletions
from tests.mpi.helpers import add_record, add_source, fhir_patient

OTHER_PERSON = {
    "given": "Maria",
    "family": "Lopez",
    "birth": "1988-01-02",
    "gender": "female",
    "phone": "(212) 555-0101",
    "line": "1 Oak Ave",
    "postal": "10001",
    "city": "New York",
}


def _ingest(session: Session, source_name: str, *resources: dict) -> list[str]:
    source = session.scalar(select(Source).where(Source.name == source_name))
    if source is None:
        source = add_source(session, source_name)
    items = [add_record(session, source, r) for r in resources]
    return [r.golden_id for r in resolve_patients(session, items)]


def _twins(session: Session) -> tuple[str, str, ReviewItem]:
    """Jennifer (ehr-a) and Rebecca (ehr-b): apart, Rebecca's record queued against
    Jennifer's golden record."""
    [jen] = _ingest(session, "ehr-a", fhir_patient("a1", given="Jennifer", gender="female"))
    [becky] = _ingest(session, "ehr-b", fhir_patient("b1", given="Rebecca", gender="female"))
    assert jen != becky
    [row] = list_review_items(session)
    item = session.get(ReviewItem, row["id"])
    assert item is not None and item.golden_id == jen and item.other_golden_id == becky
    return jen, becky, item


def _record_id(session: Session, resource_id: str) -> int:
    record_id = session.scalar(
        select(SourceRecord.id).where(SourceRecord.resource_id == resource_id)
    )
    assert record_id is not None
    return record_id


def _source_id(session: Session, name: str) -> int:
    source_id = session.scalar(select(Source.id).where(Source.name == name))
    assert source_id is not None
    return source_id


def _queue(
    session: Session, kind: str, record_id: int, goldens: list[str], other: str
) -> list[ReviewItem]:
    """Open items of ``kind`` on ``record_id``, one per golden record of ``goldens``."""
    items = [
        ReviewItem(
            kind=kind,
            source_record_id=record_id,
            golden_id=golden,
            other_golden_id=other,
            reason="queued by the test",
            evidence={},
        )
        for golden in goldens
    ]
    session.add_all(items)
    session.flush()
    return items


def test_a_steward_merge_moves_the_item_to_the_survivor(session: Session) -> None:
    jen, becky, item = _twins(session)
    [maria] = _ingest(session, "ehr-c", fhir_patient("c1", **OTHER_PERSON))
    merge_golden(session, jen, maria, actor="steward")
    session.commit()
    session.refresh(item)
    assert (item.status, item.golden_id, item.other_golden_id) == ("open", maria, becky)
    assert item.evidence["merged"] == [{"field": "golden_id", "from": jen, "to": maria}]
    # Decided against the survivor: before, this failed ("golden record ... is merged").
    result = record_decision(session, "match", actor="steward", review_item_id=item.id)
    assert result == {"action": "linked", "golden_id": maria}
    link = session.scalar(select(Link).where(Link.source_record_id == _record_id(session, "b1")))
    assert link is not None and link.golden_id == maria


def test_a_deleted_golden_record_withdraws_its_items(session: Session) -> None:
    jen, _becky, item = _twins(session)
    assert apply_deletions(session, _source_id(session, "ehr-a"), "Patient", ["a1"]) == 1
    session.commit()
    session.refresh(item)
    golden = session.get(GoldenPatient, jen)
    assert golden is not None and golden.status == "deleted"
    assert (item.status, item.resolution, item.resolved_by) == ("resolved", WITHDRAWN, "mpi")
    assert "was deleted" in item.evidence[WITHDRAWN] and jen in item.evidence[WITHDRAWN]
    assert item.resolved_at is not None
    assert list_review_items(session) == []
    assert [i["resolution"] for i in list_review_items(session, status="resolved")] == [WITHDRAWN]


def test_a_deleted_source_record_withdraws_its_items(session: Session) -> None:
    _jen, _becky, item = _twins(session)
    assert apply_deletions(session, _source_id(session, "ehr-b"), "Patient", ["b1"]) == 1
    session.commit()
    session.refresh(item)
    assert (item.status, item.resolution) == ("resolved", WITHDRAWN)
    assert (
        item.evidence[WITHDRAWN]
        == f"source record {item.source_record_id} was deleted at its source"
    )


def test_an_item_left_behind_is_withdrawn_when_decided_not_refused(session: Session) -> None:
    jen, _becky, item = _twins(session)
    # A golden record deleted by a path that settled nothing (an older version's data).
    session.execute(update(GoldenPatient).where(GoldenPatient.id == jen).values(status="deleted"))
    session.commit()
    result = record_decision(session, "match", actor="steward", review_item_id=item.id)
    session.commit()
    assert result["action"] == WITHDRAWN and jen in result["reason"]
    session.refresh(item)
    assert (item.status, item.resolution) == ("resolved", WITHDRAWN)
    decisions = session.scalars(select(MatchDecision)).all()
    assert decisions == []  # nothing was decided on a golden record that is gone


def test_no_match_takes_out_a_record_a_merge_brought_in(session: Session) -> None:
    jen, becky, item = _twins(session)
    merge_golden(session, becky, jen, actor="steward")  # someone merged them meanwhile
    session.commit()
    session.refresh(item)
    # Still a question: the record is in the golden record it was queued against.
    assert (item.status, item.golden_id, item.other_golden_id) == ("open", jen, jen)
    result = record_decision(session, "no-match", actor="steward", review_item_id=item.id)
    session.commit()
    assert result["action"] == "unlinked" and result["golden_id"] not in (jen, becky)
    link = session.scalar(select(Link).where(Link.source_record_id == _record_id(session, "b1")))
    assert link is not None and link.golden_id == result["golden_id"]
    decisions = session.scalars(select(MatchDecision.decision)).all()
    assert decisions == ["no-match"]


def test_a_duplicate_pair_merged_by_a_steward_is_withdrawn(session: Session) -> None:
    [rob] = _ingest(session, "ehr-a", fhir_patient("a1"))
    [maria] = _ingest(session, "ehr-b", fhir_patient("b1", **OTHER_PERSON))
    [pair] = _queue(session, "duplicate-golden", _record_id(session, "a1"), [rob], maria)
    merge_golden(session, maria, rob, actor="steward")
    session.commit()
    session.refresh(pair)
    assert (pair.status, pair.resolution) == ("resolved", WITHDRAWN)
    assert pair.evidence[WITHDRAWN] == f"the two golden records are now one, {rob}"


def test_an_automatic_merge_moves_the_items_of_the_loser(session: Session) -> None:
    a, b = add_source(session, "a"), add_source(session, "b")
    phone_only = add_record(session, a, fhir_patient("a1", line=None, city=None, postal=None))
    email_only = add_record(
        session,
        b,
        fhir_patient("b1", phone=None, email="rob@example.com", line=None, city=None, postal=None),
    )
    first = [r.golden_id for r in resolve_patients(session, [phone_only, email_only])]
    assert first[0] != first[1]
    [maria] = _ingest(session, "c", fhir_patient("c1", **OTHER_PERSON))
    items = _queue(session, "possible-match", _record_id(session, "c1"), first, maria)
    # Rob with both his phone and his email bridges the two golden records.
    [survivor] = _ingest(session, "d", fhir_patient("d1", email="rob@example.com"))
    session.commit()
    assert survivor in first
    for item in items:
        session.refresh(item)
        assert (item.status, item.golden_id) == ("open", survivor)
    [loser] = set(first) - {survivor}
    moved = [i for i in items if i.evidence.get("merged")]
    assert [i.evidence["merged"] for i in moved] == [
        [{"field": "golden_id", "from": loser, "to": survivor}]
    ]
