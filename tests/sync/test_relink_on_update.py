"""A new version of a linked Patient is checked against the rest of its golden record.

An EHR corrects a registration (the clerk picked the wrong person, a chart was
overwritten): the record now describes someone else. Kept in its golden record, it would
merge two people's data and serve it to every consumer. The engine scores the new
version against the golden record's other records; where it would keep the record out
if it came new (``certainly-not``, or a guard), the record leaves and is decided like a
new one. A record of the same person (a move, a new phone) stays, and so does a link a
steward made, or the only record of a golden record.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from mpi import link_record, record_decision, stored_features
from store.models import Encounter, GoldenPatient, Link, LinkHistory, Outbox, ReviewItem
from sync import ingest_page
from sync.encounters import golden_ids_of_patients
from tests.sync.helpers import add_source, encounter, patient, records

LATER = "2026-02-01T09:00:00Z"
ADA = {
    "telecom": [{"system": "phone", "value": "+1 415 555 0101"}],
    "address": [{"line": ["12 Main St"], "city": "Oakland", "postalCode": "94612"}],
}
SVEN = {
    "telecom": [{"system": "phone", "value": "+1 212 555 0199"}],
    "address": [{"line": ["4 Elm Ave"], "city": "Fresno", "postalCode": "93701"}],
}


def ada(rid: str, **changes: Any) -> dict[str, Any]:
    return {**patient(rid, **ADA), **changes}


def sven(rid: str, *, updated: str = LATER) -> dict[str, Any]:
    resource = patient(rid, "Lindqvist", "Sven", "1955-11-30", updated=updated, **SVEN)
    resource["gender"] = "male"
    return resource


def ingest(session_factory: sessionmaker[Session], source_id: int, *pages: Page) -> None:
    with session_factory() as session:
        for page in pages:
            ingest_page(session, source_id, page)
        session.commit()


def golden_of(session: Session, source_id: int, rid: str) -> str:
    return golden_ids_of_patients(session, source_id, [rid])[rid]


def family_names(session: Session, golden_id: str) -> set[str]:
    golden = session.get(GoldenPatient, golden_id)
    assert golden is not None
    return {name.get("family") for name in golden.resource.get("name", [])}


def two_records_of_ada(session_factory: sessionmaker[Session]) -> tuple[int, int, str]:
    """Sources a and b, each with a record of Ada (p1, q1), and their one golden record."""
    a, b = add_source(session_factory, "a"), add_source(session_factory, "b")
    ingest(session_factory, a, Page("Patient", [ada("p1")], "1"))
    ingest(session_factory, b, Page("Patient", [ada("q1")], "1"))
    with session_factory() as session:
        shared = golden_of(session, a, "p1")
        assert golden_of(session, b, "q1") == shared
    return a, b, shared


def open_items(session: Session) -> list[ReviewItem]:
    return list(
        session.scalars(
            select(ReviewItem).where(ReviewItem.status == "open").order_by(ReviewItem.id)
        )
    )


def encounter_events(session: Session) -> list[dict[str, Any]]:
    return list(
        session.scalars(
            select(Outbox.payload)
            .where(Outbox.event_type == "encounter.updated")
            .order_by(Outbox.id)
        )
    )


def test_an_update_that_makes_a_record_someone_else_takes_it_out_of_its_golden_record(
    session_factory: sessionmaker[Session],
) -> None:
    a, b, c = (add_source(session_factory, name) for name in ("a", "b", "c"))
    ingest(session_factory, a, Page("Patient", [ada("p1")], "1"))
    ingest(session_factory, b, Page("Patient", [ada("q1")], "1"))
    ingest(session_factory, c, Page("Patient", [sven("r1", updated="2026-01-10T10:00:00Z")], "1"))
    ingest(session_factory, a, Page("Encounter", [encounter("e1", "p1")], "1"))
    with session_factory() as session:
        shared, svens = golden_of(session, a, "p1"), golden_of(session, c, "r1")
        assert golden_of(session, b, "q1") == shared != svens

    # EHR a overwrites chart p1 with Sven's registration.
    ingest(session_factory, a, Page("Patient", [sven("p1")], "2"))
    with session_factory() as session:
        # p1 left Ada's golden record and, decided like a new record, joined Sven's.
        assert golden_of(session, a, "p1") == svens
        assert golden_of(session, b, "q1") == shared
        assert family_names(session, shared) == {"Okafor"}  # Sven's values left it
        assert family_names(session, svens) == {"Lindqvist"}
        assert session.scalar(select(func.count()).select_from(Link)) == 3  # one per record
        (unlink,) = session.scalars(select(LinkHistory).where(LinkHistory.action == "unlink"))
        (p1,) = records(session, a, resource_id="p1")
        assert (unlink.source_record_id, unlink.golden_id, unlink.actor) == (p1.id, shared, "mpi")
        assert unlink.explanation["reason"] == "update-no-longer-matches"
        assert unlink.explanation["grade"] == "certainly-not"
        # Its visit follows it, and its subscribers hear of the new subject once.
        assert session.scalars(select(Encounter.golden_id)).one() == svens
        assert [event["golden_id"] for event in encounter_events(session)] == [svens]

    # The block keys were replaced: a new Ada finds Ada's golden record, a new Sven Sven's.
    d = add_source(session_factory, "d")
    ingest(session_factory, d, Page("Patient", [ada("s1"), sven("s2")], "1"))
    with session_factory() as session:
        assert golden_of(session, d, "s1") == shared
        assert golden_of(session, d, "s2") == svens


def test_an_update_that_leaves_no_match_gets_a_golden_record_of_its_own(
    session_factory: sessionmaker[Session],
) -> None:
    a, b, shared = two_records_of_ada(session_factory)
    ingest(session_factory, a, Page("Patient", [sven("p1")], "2"))
    with session_factory() as session:
        own = golden_of(session, a, "p1")
        assert own != shared and golden_of(session, b, "q1") == shared
        assert family_names(session, own) == {"Lindqvist"}
        assert family_names(session, shared) == {"Okafor"}


def test_an_update_of_the_same_person_keeps_the_link(
    session_factory: sessionmaker[Session],
) -> None:
    a, b, shared = two_records_of_ada(session_factory)
    moved = ada("p1", meta={"versionId": "2", "lastUpdated": LATER}, **SVEN)  # moved house
    corrected = ada("q1", meta={"versionId": "2", "lastUpdated": LATER}, birthDate="1980-04-20")
    ingest(session_factory, b, Page("Patient", [corrected], "2"))
    ingest(session_factory, a, Page("Patient", [moved], "2"))
    with session_factory() as session:
        assert golden_of(session, a, "p1") == golden_of(session, b, "q1") == shared
        assert not session.scalars(select(LinkHistory).where(LinkHistory.action == "unlink")).all()
        # A move is what charts do, even if it leaves only name and birth date to compare:
        # nothing for a steward.
        assert not open_items(session)


def test_a_new_identity_that_is_only_a_possible_match_stays_and_asks_a_steward(
    session_factory: sessionmaker[Session],
) -> None:
    a, b, shared = two_records_of_ada(session_factory)
    # A new family name, phone and address: the same person married and moved, or
    # another Ada born the same day. Not clear enough to split; a steward is asked.
    married = ada("p1", meta={"versionId": "2", "lastUpdated": LATER}, **SVEN)
    married["name"] = [{"family": "Smith", "given": ["Ada"]}]
    ingest(session_factory, a, Page("Patient", [married], "2"))
    with session_factory() as session:
        assert golden_of(session, a, "p1") == golden_of(session, b, "q1") == shared
        (p1,) = records(session, a, resource_id="p1")
        (item,) = open_items(session)
        assert (item.kind, item.source_record_id, item.golden_id) == (
            "possible-match",
            p1.id,
            shared,
        )
        assert (item.reason, item.grade) == ("update-less-sure", "possible")
        assert item.evidence["comparisons"]["family"]["level"] != "exact"
    # A record that keeps changing is asked about once.
    again = {**married, "meta": {"versionId": "3", "lastUpdated": "2026-03-01T09:00:00Z"}}
    again["name"] = [{"family": "Smyth", "given": ["Ada"]}]
    ingest(session_factory, a, Page("Patient", [again], "3"))
    with session_factory() as session:
        assert [i.id for i in open_items(session)] == [item.id]
        # The steward says they are not the same person: the record leaves.
        result = record_decision(session, "no-match", actor="steward", review_item_id=item.id)
        session.commit()
        assert result["action"] == "unlinked"
        assert golden_of(session, a, "p1") == result["golden_id"] != shared
        assert golden_of(session, b, "q1") == shared


def test_a_steward_who_confirms_a_doubted_link_is_not_asked_again(
    session_factory: sessionmaker[Session],
) -> None:
    a, _b, shared = two_records_of_ada(session_factory)
    corrected = ada("p1", meta={"versionId": "2", "lastUpdated": LATER}, **SVEN)
    corrected["birthDate"] = "1980-04-20"  # moved, and a corrected birth date
    ingest(session_factory, a, Page("Patient", [corrected], "2"))
    with session_factory() as session:
        (item,) = open_items(session)
        assert item.reason == "update-less-sure"
        result = record_decision(session, "match", actor="steward", review_item_id=item.id)
        session.commit()
        assert result == {"action": "linked", "golden_id": shared}
        # The link is the steward's now, and its history says who confirmed it.
        link = session.scalars(
            select(Link).where(Link.source_record_id == item.source_record_id)
        ).one()
        assert (link.method, link.grade) == ("MANUAL", "certain")
        confirmed = session.scalars(
            select(LinkHistory).where(
                LinkHistory.source_record_id == item.source_record_id,
                LinkHistory.actor == "steward",
            )
        ).all()
        assert [(h.action, h.golden_id, h.method) for h in confirmed] == [
            ("link", shared, "MANUAL")
        ]
    renamed = {**corrected, "meta": {"versionId": "3", "lastUpdated": "2026-03-01T09:00:00Z"}}
    renamed["name"] = [{"family": "Smith", "given": ["Ada"]}]
    ingest(session_factory, a, Page("Patient", [renamed], "3"))
    with session_factory() as session:
        assert golden_of(session, a, "p1") == shared
        assert not open_items(session)


def test_a_record_that_becomes_someone_else_withdraws_its_open_review_items(
    session_factory: sessionmaker[Session],
) -> None:
    a, b, c = (add_source(session_factory, name) for name in ("a", "b", "c"))
    ingest(session_factory, b, Page("Patient", [ada("q1")], "1"))
    # Ada with other contact details in a, then in c: p1 founds a golden record of its
    # own, a possible match for q1's (a review item), and r1 joins it.
    elsewhere = {
        "telecom": [{"system": "phone", "value": "+1 510 555 0142"}],
        "address": [{"line": ["9 Oak Rd"], "city": "Berkeley", "postalCode": "94704"}],
    }
    ingest(session_factory, a, Page("Patient", [patient("p1", **elsewhere)], "1"))
    ingest(session_factory, c, Page("Patient", [patient("r1", **elsewhere)], "1"))
    with session_factory() as session:
        adas, others = golden_of(session, b, "q1"), golden_of(session, a, "p1")
        assert golden_of(session, c, "r1") == others != adas
        (p1,) = records(session, a, resource_id="p1")
        (item,) = open_items(session)
        assert (item.source_record_id, item.golden_id) == (p1.id, adas)
    # Chart p1 is overwritten with Sven's registration: whether Ada's p1 is q1's person
    # is no longer a question.
    ingest(session_factory, a, Page("Patient", [sven("p1")], "2"))
    with session_factory() as session:
        assert golden_of(session, a, "p1") not in (adas, others)
        assert not open_items(session)
        withdrawn = session.get(ReviewItem, item.id)
        assert withdrawn is not None
        assert (withdrawn.status, withdrawn.resolution, withdrawn.resolved_by) == (
            "resolved",
            "withdrawn",
            "mpi",
        )
        assert "changed into another person" in withdrawn.evidence["withdrawn"]


def test_a_link_a_steward_made_and_the_only_record_of_a_golden_record_stay(
    session_factory: sessionmaker[Session],
) -> None:
    a, b, c = (add_source(session_factory, name) for name in ("a", "b", "c"))
    ingest(session_factory, a, Page("Patient", [ada("p1")], "1"))
    ingest(session_factory, b, Page("Patient", [sven("q1", updated="2026-01-10T10:00:00Z")], "1"))
    ingest(session_factory, c, Page("Patient", [ada("r1")], "1"))
    with session_factory() as session:
        adas = golden_of(session, a, "p1")
        (q1,) = records(session, b, resource_id="q1")
        link_record(session, q1.id, adas, actor="steward")  # the steward knows better
        session.commit()
    # A new version of the steward's record (and of an alone record) changes nothing.
    new_phone = {**sven("q1"), "telecom": [{"system": "phone", "value": "+1 212 555 0123"}]}
    ingest(session_factory, b, Page("Patient", [new_phone], "2"))
    alone = add_source(session_factory, "alone")
    hiro = patient("x1", "Nakamura", "Hiro", "1990-07-07", gender="male")
    ingest(session_factory, alone, Page("Patient", [hiro], "1"))
    with session_factory() as session:
        own = golden_of(session, alone, "x1")
    ingest(session_factory, alone, Page("Patient", [sven("x1")], "2"))
    with session_factory() as session:
        assert golden_of(session, b, "q1") == adas
        assert golden_of(session, alone, "x1") == own
        assert not session.scalars(select(LinkHistory).where(LinkHistory.action == "unlink")).all()


def test_a_deleted_record_that_comes_back_as_someone_else_leaves(
    session_factory: sessionmaker[Session],
) -> None:
    a, b, shared = two_records_of_ada(session_factory)
    ingest(session_factory, a, Page("Patient", [], "2", deleted=["p1"]))
    # The EHR reuses the chart id for another person.
    ingest(session_factory, a, Page("Patient", [sven("p1", updated="2026-03-01T09:00:00Z")], "3"))
    with session_factory() as session:
        assert golden_of(session, a, "p1") != shared
        assert golden_of(session, b, "q1") == shared
        assert family_names(session, shared) == {"Okafor"}


def test_the_version_before_is_read_from_its_json_when_its_stored_features_are_stale(
    session_factory: sessionmaker[Session],
) -> None:
    a, _b, _shared = two_records_of_ada(session_factory)
    with session_factory() as session:
        (p1,) = records(session, a, resource_id="p1")
        stored = stored_features(session, [(p1.id, p1.content_hash)])
        # Features written for another content hash (or version) are not trusted.
        from_json = stored_features(session, [(p1.id, "another-hash")])
    assert stored == from_json
    assert stored[p1.id].birth_date == "19800402"
    assert [name.family for name in stored[p1.id].names] == ["okafor"]
