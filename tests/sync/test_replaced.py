"""A source that merges two of its Patients says so on the one merged away: a ``link`` of
type ``replaced-by`` to the survivor ("the patient resource containing this link must no
longer be used"). The pipeline retires that record: its values leave the golden records,
its Encounters follow the survivor, and a golden record it alone made is merged into the
survivor's, so that its id still finds the person.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from mpi import golden_block_keys, holds_block_locks, uses_block_locks
from mpi.resolve import lock_slots
from store.models import Encounter, GoldenPatient, LinkHistory, SourceRecord
from sync import TaskContext, run_source
from sync.encounters import golden_ids_of_patients
from sync.pipeline import ingest_page
from tests.sekmet_server import SekmetFactory
from tests.sync.helpers import add_source, encounter, events, held_block_slots, patient, records

#: Ada as her EHR first registered her, and again at another desk: another phone and
#: address, so the engine keeps the two apart (name and birth date alone do not link).
FIRST = patient(
    "p1",
    telecom=[{"system": "phone", "value": "+1 415 555 0101"}],
    address=[{"line": ["12 Main St"], "city": "Oakland", "postalCode": "94612"}],
)
SECOND = patient(
    "p2",
    telecom=[{"system": "phone", "value": "+1 628 555 0144"}],
    address=[{"line": ["9 Bay St"], "city": "Alameda", "postalCode": "94501"}],
)


def merged_away(resource: dict[str, Any], survivor: str, **changes: Any) -> dict[str, Any]:
    """``resource`` as its EHR serves it after merging it into ``survivor``."""
    return {
        **resource,
        "meta": {"versionId": "2", "lastUpdated": "2026-02-01T09:00:00Z"},
        "active": False,
        "link": [{"other": {"reference": survivor}, "type": "replaced-by"}],
        **changes,
    }


def ingest(session_factory: sessionmaker[Session], source_id: int, page: Page) -> Any:
    with session_factory() as session:
        result = ingest_page(session, source_id, page)
        session.commit()
    return result


def goldens(session: Session, source_id: int, *ids: str) -> dict[str, str]:
    return golden_ids_of_patients(session, source_id, list(ids))


def test_a_patient_merged_in_its_ehr_leaves_and_its_golden_record_follows(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    ingest(session_factory, source_id, Page("Patient", [FIRST, SECOND], "1"))
    ingest(session_factory, source_id, Page("Encounter", [encounter("e2", "p2")], "1"))
    with session_factory() as session:
        before = goldens(session, source_id, "p1", "p2")
    assert before["p1"] != before["p2"]  # kept apart by the engine

    result = ingest(
        session_factory, source_id, Page("Patient", [merged_away(SECOND, "Patient/p1")], "2")
    )
    assert (result.stored, result.deleted) == (1, 1)
    with session_factory() as session:
        (kept,) = records(session, source_id, resource_id="p2")
        assert kept.status == "deleted" and kept.raw["active"] is False  # kept, not used
        survivor = session.get(GoldenPatient, before["p1"])
        gone = session.get(GoldenPatient, before["p2"])
        assert survivor is not None and gone is not None
        assert (gone.status, gone.merged_into) == ("merged", survivor.id)
        # The merged-away record's values left: one phone, one address.
        assert [t["value"] for t in survivor.resource["telecom"]] == ["+1 415 555 0101"]
        assert {"other": {"reference": f"Patient/{gone.id}"}, "type": "replaces"} in (
            survivor.resource["link"]
        )
        moved = session.scalars(select(Encounter)).one()
        assert (moved.patient_resource_id, moved.golden_id) == ("p1", survivor.id)
        assert events(session, "patient.merged") == 1
        # Its subscribers hear of the visit's new subject.
        assert events(session, "encounter.updated") == 1
        history = session.scalars(select(LinkHistory).where(LinkHistory.action == "merge")).one()
        assert (history.actor, history.method) == ("mpi", "AUTO")
        assert history.explanation == {"source_id": source_id, "reason": "replaced-by"}
    # The EHR did not repoint the visit: a new version of it, and a new visit, still name
    # the merged-away Patient. Both are the survivor's.
    later = [encounter("e2", "p2", status="cancelled"), encounter("e3", "p2")]
    visits = ingest(session_factory, source_id, Page("Encounter", later, "2"))
    assert (visits.stored, visits.waiting) == (2, 0)
    with session_factory() as session:
        joined = select(SourceRecord.resource_id, Encounter).join(
            Encounter, Encounter.source_record_id == SourceRecord.id
        )
        rows = {resource_id: row for resource_id, row in session.execute(joined)}
        assert set(rows) == {"e2", "e3"}
        assert {(e.patient_resource_id, e.golden_id) for e in rows.values()} == {
            ("p1", before["p1"])
        }
        assert rows["e2"].status == "cancelled"
    # Read again unchanged: nothing happens twice.
    again = ingest(
        session_factory, source_id, Page("Patient", [merged_away(SECOND, "Patient/p1")], "3")
    )
    assert (again.skipped, again.deleted) == (1, 0)
    # The EHR undoes its merge: the Patient is active again, and matched like any other.
    undone = {**SECOND, "meta": {"versionId": "3", "lastUpdated": "2026-03-01T09:00:00Z"}}
    back = ingest(session_factory, source_id, Page("Patient", [undone], "4"))
    assert back.stored == 1
    with session_factory() as session:
        (record,) = records(session, source_id, resource_id="p2")
        assert record.status == "active" and goldens(session, source_id, "p2")


def test_a_golden_record_with_another_sources_record_is_not_merged_on_this_word(
    session_factory: sessionmaker[Session],
) -> None:
    """ehr-b's record of the merged-away Patient stays where the engine linked it: the EHR
    vouches for its own two Patients, not for another source's record."""
    ehr_a = add_source(session_factory, "ehr-a")
    ehr_b = add_source(session_factory, "ehr-b")
    ingest(session_factory, ehr_a, Page("Patient", [FIRST, SECOND], "1"))
    ingest(session_factory, ehr_b, Page("Patient", [{**SECOND, "id": "b2"}], "1"))
    with session_factory() as session:
        before = goldens(session, ehr_a, "p1", "p2")
        assert goldens(session, ehr_b, "b2")["b2"] == before["p2"]
    ingest(session_factory, ehr_a, Page("Patient", [merged_away(SECOND, "Patient/p1")], "2"))
    with session_factory() as session:
        stays = session.get(GoldenPatient, before["p2"])
        assert stays is not None and stays.status == "active"
        assert goldens(session, ehr_b, "b2")["b2"] == before["p2"]
        assert records(session, ehr_a, resource_id="p2")[0].status == "deleted"
        assert events(session, "patient.merged") == 0


def test_a_patient_replaced_by_one_not_seen_yet_waits_with_its_encounters(
    session_factory: sessionmaker[Session],
) -> None:
    """The survivor comes in a later page: the merged-away Patient is retired at once (its
    golden record, which held only it, is deleted), and its Encounters wait for the
    survivor, then attach to it."""
    source_id = add_source(session_factory)
    ingest(session_factory, source_id, Page("Patient", [SECOND], "1"))
    ingest(session_factory, source_id, Page("Encounter", [encounter("e2", "p2")], "1"))
    with session_factory() as session:
        (lone,) = goldens(session, source_id, "p2").values()
    ingest(session_factory, source_id, Page("Patient", [merged_away(SECOND, "Patient/p9")], "2"))
    with session_factory() as session:
        gone = session.get(GoldenPatient, lone)
        assert gone is not None and gone.status == "deleted"
        waiting = session.scalars(select(Encounter)).one()
        assert (waiting.patient_resource_id, waiting.golden_id) == ("p9", lone)
    ingest(session_factory, source_id, Page("Patient", [{**FIRST, "id": "p9"}], "3"))
    with session_factory() as session:
        attached = session.scalars(select(Encounter)).one()
        assert attached.golden_id == goldens(session, source_id, "p9")["p9"]


def test_links_a_source_cannot_vouch_for_are_not_followed(
    session_factory: sessionmaker[Session],
) -> None:
    """Another server's Patient (an absolute or logical reference), the Patient itself, or
    another kind of link: the record is matched like any other. An invalid one is
    quarantined, whatever it says."""
    source_id = add_source(session_factory)
    ingest(session_factory, source_id, Page("Patient", [FIRST], "1"))
    others = [
        merged_away(SECOND, "https://elsewhere.example/fhir/Patient/p1", id="x1"),
        merged_away(SECOND, "Patient/x2", id="x2"),
        {
            **merged_away(SECOND, "Patient/p1", id="x3"),
            "link": [{"other": {"reference": "Patient/p1"}, "type": "seealso"}],
        },
        {
            **merged_away(SECOND, "Patient/p1", id="x4"),
            "link": [{"other": {"identifier": {"value": "p1"}}, "type": "replaced-by"}],
        },
    ]
    invalid = merged_away(SECOND, "Patient/p1", id="x5", birthDate="not a date")
    result = ingest(session_factory, source_id, Page("Patient", [*others, invalid], "2"))
    assert (result.stored, result.quarantined, result.deleted) == (4, 1, 0)
    with session_factory() as session:
        statuses = {r.resource_id: r.status for r in records(session, source_id)}
        assert statuses == {
            "p1": "active",
            "x1": "active",
            "x2": "active",
            "x3": "active",
            "x4": "active",
            "x5": "quarantined",
        }
        assert set(goldens(session, source_id, "x1", "x2", "x3", "x4")) == {"x1", "x2", "x3", "x4"}


def test_the_page_locks_both_golden_records_in_its_one_lock_call(
    session_factory: sessionmaker[Session],
) -> None:
    """On PostgreSQL the golden records a replacement merges are locked by the page's one
    lock call, with its records (a second call could deadlock with another worker)."""
    source_id = add_source(session_factory)
    ingest(session_factory, source_id, Page("Patient", [FIRST, SECOND], "1"))
    with session_factory() as session:
        both = goldens(session, source_id, "p1", "p2")
        wanted = lock_slots(golden_block_keys(session, both.values()))
        result = ingest_page(
            session, source_id, Page("Patient", [merged_away(SECOND, "Patient/p1")], "2")
        )
        assert result.deleted == 1
        if uses_block_locks(session):
            assert holds_block_locks(session)
            assert wanted and set(wanted) <= held_block_slots(session)
        session.commit()


@pytest.mark.sekmet
def test_a_merge_in_a_real_fhir_server_reaches_the_golden_records(
    engine: Engine, session_factory: sessionmaker[Session], sekmet_factory: SekmetFactory
) -> None:
    """sekmet-fhir (a server we did not write) serves the merged-away Patient with its
    replaced-by link; the next incremental sync retires it."""
    server = sekmet_factory()
    first = server.create({k: v for k, v in FIRST.items() if k not in ("id", "meta")})
    second = server.create({k: v for k, v in SECOND.items() if k not in ("id", "meta")})
    visit = {k: v for k, v in encounter("x", "x").items() if k not in ("id", "meta")}
    server.create({**visit, "subject": {"reference": f"Patient/{second['id']}"}})
    source_id = add_source(session_factory, kind="fhir", base_url=server.base_url)
    context = TaskContext(engine=engine, session_factory=session_factory)
    assert run_source(context, source_id, max_pages=None).status == "ok"
    with session_factory() as session:
        before = goldens(session, source_id, first["id"], second["id"])
    assert len(set(before.values())) == 2
    server.update(
        {
            **second,
            "active": False,
            "link": [{"other": {"reference": f"Patient/{first['id']}"}, "type": "replaced-by"}],
        }
    )
    again = run_source(context, source_id, max_pages=None)
    assert again.status == "ok" and again.result.deleted == 1
    with session_factory() as session:
        gone = session.get(GoldenPatient, before[second["id"]])
        assert gone is not None and (gone.status, gone.merged_into) == (
            "merged",
            before[first["id"]],
        )
        moved = session.scalars(select(Encounter)).one()
        assert (moved.patient_resource_id, moved.golden_id) == (first["id"], before[first["id"]])
