"""A steward's merge, or a source's deletion, and an ingest at the same moment (PostgreSQL).

An ingest links a third registration of Ada to her golden record A while a steward merges
A into B. Without a lock in common, the merge moves A's links as it sees them (the new
link is not committed yet), and the ingest then commits a link to A, which is merged by
then: the record is lost to every consumer, whose reads follow A to B. The merge takes the
advisory locks of the block keys of both golden records' records, the ones the ingest
holds: it waits for the ingest and moves its record too. A deletion that empties a golden
record does the same, so the golden record stays active with the ingest's record instead
of becoming ``deleted`` with it linked.
"""

from __future__ import annotations

import threading

import pytest
from sqlalchemy import select

from connectors import Page
from mpi import merge_patients, resolve_patients
from store import make_engine, make_session_factory
from store.models import GoldenPatient, Link, Source
from sync.pipeline import ingest_page
from tests.conftest import truncate_all
from tests.gateway.test_merge import ADA_B
from tests.gateway.test_mpi_wiring import ADA, ingest
from tests.mpi.helpers import add_record

#: Seconds the merge is given to show it waits (it must still be waiting), and to finish.
WAIT_S = 1.0
JOIN_TIMEOUT_S = 60


@pytest.mark.postgres
def test_a_merge_waits_for_an_ingest_linking_to_the_record_it_merges(pg_url: str) -> None:
    engine = make_engine(pg_url)
    truncate_all(engine)
    factory = make_session_factory(engine)
    try:
        with factory() as session:
            (ada,) = ingest(session, "ehr-a", [ADA])
            (ada_b,) = ingest(session, "ehr-b", [ADA_B])
            third = Source(name="ehr-c", kind="fhir", base_url="http://ehr-c.invalid")
            session.add(third)
            session.commit()
            third_id = third.id
        assert ada.golden_id != ada_b.golden_id

        ingesting = factory()
        source = ingesting.get(Source, third_id)
        assert source is not None
        row, patient = add_record(ingesting, source, {**ADA, "id": "c3"})
        (linked,) = resolve_patients(ingesting, [(row, patient)])
        assert linked.golden_id == ada.golden_id  # not committed yet

        errors: list[BaseException] = []

        def merge() -> None:
            try:
                with factory() as session:
                    merge_patients(session, ada.golden_id, ada_b.golden_id, actor="steward")
                    session.commit()
            except BaseException as exc:  # reported below
                errors.append(exc)

        merging = threading.Thread(target=merge)
        merging.start()
        merging.join(WAIT_S)
        assert merging.is_alive(), "the merge did not wait for the ingest's locks"
        ingesting.commit()
        ingesting.close()
        merging.join(JOIN_TIMEOUT_S)
        assert not merging.is_alive() and not errors, errors

        with factory() as session:
            golden_of = dict(session.execute(select(Link.source_record_id, Link.golden_id)).all())
            assert golden_of[row.id] == ada_b.golden_id
            assert golden_of[ada.source_record_id] == ada_b.golden_id
            merged = session.get(GoldenPatient, ada.golden_id)
            assert merged is not None and merged.status == "merged"
    finally:
        truncate_all(engine)
        engine.dispose()


@pytest.mark.postgres
def test_a_deletion_waits_for_an_ingest_linking_to_the_record_it_empties(pg_url: str) -> None:
    """A source deletes Ada's only record while another source's ingest links a new record
    of Ada to her golden record: the golden record must stay active with the new record,
    not become ``deleted`` with it linked (a 410 for every consumer)."""
    engine = make_engine(pg_url)
    truncate_all(engine)
    factory = make_session_factory(engine)
    try:
        with factory() as session:
            (ada,) = ingest(session, "ehr-a", [ADA])
            other = Source(name="ehr-c", kind="fhir", base_url="http://ehr-c.invalid")
            session.add(other)
            session.commit()
            other_id, ehr_a = (
                other.id,
                session.scalar(select(Source.id).where(Source.name == "ehr-a")),
            )
        assert ehr_a is not None

        ingesting = factory()
        source = ingesting.get(Source, other_id)
        assert source is not None
        row, patient = add_record(ingesting, source, {**ADA, "id": "c3"})
        (linked,) = resolve_patients(ingesting, [(row, patient)])
        assert linked.golden_id == ada.golden_id  # not committed yet

        errors: list[BaseException] = []

        def delete() -> None:
            try:
                with factory() as session:
                    ingest_page(session, ehr_a, Page("Patient", [], None, deleted=[ADA["id"]]))
                    session.commit()
            except BaseException as exc:  # reported below
                errors.append(exc)

        deleting = threading.Thread(target=delete)
        deleting.start()
        deleting.join(WAIT_S)
        assert deleting.is_alive(), "the deletion did not wait for the ingest's locks"
        ingesting.commit()
        ingesting.close()
        deleting.join(JOIN_TIMEOUT_S)
        assert not deleting.is_alive() and not errors, errors

        with factory() as session:
            golden = session.get(GoldenPatient, ada.golden_id)
            assert golden is not None and golden.status == "active"
            assert golden.resource["identifier"][0]["value"] == ADA["identifier"][0]["value"]
            assert (
                session.scalar(select(Link.golden_id).where(Link.source_record_id == row.id))
                == ada.golden_id
            )
    finally:
        truncate_all(engine)
        engine.dispose()
