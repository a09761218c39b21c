"""What an automatic merge writes: the loser's links and Encounters follow the survivor
(chained merges included), and a steward's "no-match" between the two groups stops it."""

from __future__ import annotations

from datetime import UTC, datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from mpi import record_decision, resolve_patients, unlink_record
from store.models import Encounter, GoldenPatient, Link, Outbox, Source, SourceRecord
from store.types import as_utc
from tests.mpi.helpers import add_record, add_source, fhir_patient

EMAIL = "rob@example.com"
OTHER_EMAIL = "robert.o@example.org"
LONG_AGO = datetime(2020, 1, 1, tzinfo=UTC)


def _phone_only(rid: str) -> dict:
    return fhir_patient(rid, line=None, city=None, postal=None)


def _email_only(rid: str, email: str = EMAIL) -> dict:
    return fhir_patient(rid, phone=None, email=email, line=None, city=None, postal=None)


def _encounter(session: Session, source: Source, patient: str, golden: str) -> Encounter:
    record = SourceRecord(
        source_id=source.id,
        resource_type="Encounter",
        resource_id=f"enc-{patient}",
        raw={},
        normalized={},
        content_hash=f"hash-enc-{patient}",
        status="active",
    )
    session.add(record)
    session.flush()
    encounter = Encounter(
        source_record_id=record.id,
        source_id=source.id,
        patient_resource_id=patient,
        golden_id=golden,
    )
    session.add(encounter)
    session.flush()
    return encounter


def _golden_of_encounters(session: Session) -> dict[str, str | None]:
    return {
        e.patient_resource_id or "": e.golden_id
        for e in session.scalars(select(Encounter).execution_options(populate_existing=True))
    }


def _encounter_events(session: Session) -> list[tuple[str, dict]]:
    """(event type, payload) of the Encounter events, in order."""
    return [
        (event, payload)
        for event, payload in session.execute(
            select(Outbox.event_type, Outbox.payload)
            .where(Outbox.aggregate_type == "Encounter")
            .order_by(Outbox.id)
        )
    ]


def _links(session: Session) -> dict[int, str]:
    return dict(session.execute(select(Link.source_record_id, Link.golden_id)).all())


def test_a_merge_moves_the_losers_links_and_encounters(session: Session) -> None:
    a, b = add_source(session, "a"), add_source(session, "b")
    phone = add_record(session, a, _phone_only("a1"))
    email = add_record(session, b, _email_only("b1"))
    first = resolve_patients(session, [phone, email])
    assert first[0].golden_id != first[1].golden_id  # nothing corroborates: apart
    encounters = {
        "a1": _encounter(session, a, "a1", first[0].golden_id).id,
        "b1": _encounter(session, b, "b1", first[1].golden_id).id,
    }
    session.execute(update(Encounter).values(last_updated=LONG_AGO))
    both = add_record(session, add_source(session, "c"), fhir_patient("c1", email=EMAIL))
    [merged] = resolve_patients(session, [both])
    survivor = merged.golden_id
    losers = {first[0].golden_id, first[1].golden_id} - {survivor}
    [loser] = losers
    assert session.get(GoldenPatient, loser).status == "merged"  # type: ignore[union-attr]
    assert set(_links(session).values()) == {survivor}
    assert _golden_of_encounters(session) == {"a1": survivor, "b1": survivor}
    # The encounter that moved changed (a new subject); the survivor's own did not.
    moved = "a1" if first[0].golden_id == loser else "b1"
    assert {
        e.patient_resource_id: as_utc(e.last_updated) > LONG_AGO  # type: ignore[operator]
        for e in session.scalars(select(Encounter))
    } == {"a1": moved == "a1", "b1": moved == "b1"}
    # Its subscribers hear of the new subject, once; the survivor's own is not an event.
    source = a.id if moved == "a1" else b.id
    assert _encounter_events(session) == [
        (
            "encounter.updated",
            {
                "encounter_id": encounters[moved],
                "golden_id": survivor,
                "source_id": source,
                "resource_id": f"enc-{moved}",
            },
        )
    ]


def test_a_stewards_unlink_moves_the_records_encounters_and_changes_them(
    session: Session,
) -> None:
    a, b = add_source(session, "a"), add_source(session, "b")
    records = [
        add_record(session, a, fhir_patient("a1")),
        add_record(session, b, fhir_patient("b1")),
    ]
    resolved = resolve_patients(session, records)
    golden = resolved[0].golden_id
    assert resolved[1].golden_id == golden
    _encounter(session, a, "a1", golden)
    moved = _encounter(session, b, "b1", golden).id
    session.execute(update(Encounter).values(last_updated=LONG_AGO))
    new_id = unlink_record(session, records[1][0].id, actor="steward")
    assert _golden_of_encounters(session) == {"a1": golden, "b1": new_id}
    assert {
        e.patient_resource_id: as_utc(e.last_updated) > LONG_AGO  # type: ignore[operator]
        for e in session.scalars(select(Encounter))
    } == {"a1": False, "b1": True}
    assert _encounter_events(session) == [
        (
            "encounter.updated",
            {
                "encounter_id": moved,
                "golden_id": new_id,
                "source_id": b.id,
                "resource_id": "enc-b1",
            },
        )
    ]


def test_chained_merges_in_one_batch_end_at_the_last_survivor(session: Session) -> None:
    a, b, c = add_source(session, "a"), add_source(session, "b"), add_source(session, "c")
    records = [
        add_record(session, a, _phone_only("a1")),
        add_record(session, b, _email_only("b1")),
        add_record(session, c, _email_only("c1", OTHER_EMAIL)),
    ]
    first = resolve_patients(session, records)
    goldens = [r.golden_id for r in first]
    assert len(set(goldens)) == 3
    for source, record, golden in zip((a, b, c), ("a1", "b1", "c1"), goldens, strict=True):
        _encounter(session, source, record, golden)
    d = add_source(session, "d")
    # d1 joins a1's and b1's golden records, d2 the result and c1's: two merges in a batch.
    batch = [
        add_record(session, d, fhir_patient("d1", email=EMAIL)),
        add_record(session, d, fhir_patient("d2", email=OTHER_EMAIL)),
    ]
    resolutions = resolve_patients(session, batch)
    final = resolutions[-1].golden_id
    assert resolutions[0].golden_id == final
    assert set(_links(session).values()) == {final}
    assert set(_golden_of_encounters(session).values()) == {final}
    # One event per Encounter that moved, naming where it ended up (not a loser between).
    events = _encounter_events(session)
    assert sorted(payload["resource_id"] for _, payload in events) == sorted(
        f"enc-{record}"
        for record, golden in zip(("a1", "b1", "c1"), goldens, strict=True)
        if golden != final
    )
    assert {payload["golden_id"] for _, payload in events} == {final}
    statuses = {g: session.get(GoldenPatient, g).status for g in goldens}  # type: ignore[union-attr]
    assert sorted(statuses.values()).count("merged") == (2 if final in goldens else 3)


def test_a_stewards_no_match_between_the_groups_stops_the_merge(session: Session) -> None:
    a, b = add_source(session, "a"), add_source(session, "b")
    phone = add_record(session, a, _phone_only("a1"))
    email = add_record(session, b, _email_only("b1"))
    first = resolve_patients(session, [phone, email])
    record_decision(session, "no-match", actor="steward", record_ids=(phone[0].id, email[0].id))
    both = add_record(session, add_source(session, "c"), fhir_patient("c1", email=EMAIL))
    [resolution] = resolve_patients(session, [both])
    assert resolution.golden_id in {first[0].golden_id, first[1].golden_id}
    assert len(set(_links(session).values())) == 2
    statuses = {
        session.get(GoldenPatient, r.golden_id).status  # type: ignore[union-attr]
        for r in first
    }
    assert statuses == {"active"}
