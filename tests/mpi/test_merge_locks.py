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
from collections.abc import Callable, Iterator

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from mpi import merge_patients, resolve_patients
from store import make_engine, make_session_factory
from store.models import GoldenPatient, Link, Source
from sync.pipeline import ingest_page
from tests.conftest import truncate_all
from tests.gateway.test_merge import ADA_B
from tests.gateway.test_mpi_wiring import ADA, ingest
from tests.mpi.helpers import add_record

#: Seconds the locker is given to show it waits (it must still be waiting), and to finish.
WAIT_S = 1.0
JOIN_TIMEOUT_S = 60


@pytest.fixture
def factory(pg_url: str) -> Iterator[sessionmaker[Session]]:
    engine = make_engine(pg_url)
    truncate_all(engine)
    try:
        yield make_session_factory(engine)
    finally:
        truncate_all(engine)
        engine.dispose()


def _third_source(session: Session) -> int:
    third = Source(name="ehr-c", kind="fhir", base_url="http://ehr-c.invalid")
    session.add(third)
    session.commit()
    return third.id


def _held_ingest(
    factory: sessionmaker[Session], source_id: int, golden_id: str
) -> tuple[Session, int]:
    """An ingest of Ada's third record, linked to ``golden_id`` and not committed: its
    transaction holds the block-key locks. Returns its session and the record's id."""
    ingesting = factory()
    source = ingesting.get(Source, source_id)
    assert source is not None
    row, patient = add_record(ingesting, source, {**ADA, "id": "c3"})
    (linked,) = resolve_patients(ingesting, [(row, patient)])
    assert linked.golden_id == golden_id
    return ingesting, row.id


def _waits_for(
    ingesting: Session, factory: sessionmaker[Session], work: Callable[[Session], object]
) -> None:
    """Run ``work`` in its own transaction on a thread: it must wait while the ingest holds
    its locks, and finish, without error, once the ingest commits."""
    errors: list[BaseException] = []

    def run() -> None:
        try:
            with factory() as session:
                work(session)
                session.commit()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(WAIT_S)
    assert thread.is_alive(), "it did not wait for the ingest's locks"
    ingesting.commit()
    ingesting.close()
    thread.join(JOIN_TIMEOUT_S)
    assert not thread.is_alive() and not errors, errors


@pytest.mark.postgres
def test_a_merge_waits_for_an_ingest_linking_to_the_record_it_merges(
    factory: sessionmaker[Session],
) -> None:
    with factory() as session:
        (ada,) = ingest(session, "ehr-a", [ADA])
        (ada_b,) = ingest(session, "ehr-b", [ADA_B])
        third_id = _third_source(session)
    assert ada.golden_id != ada_b.golden_id
    ingesting, record_id = _held_ingest(factory, third_id, ada.golden_id)

    _waits_for(
        ingesting,
        factory,
        lambda session: merge_patients(session, ada.golden_id, ada_b.golden_id, actor="steward"),
    )

    with factory() as session:
        golden_of = dict(session.execute(select(Link.source_record_id, Link.golden_id)).all())
        assert golden_of[record_id] == ada_b.golden_id
        assert golden_of[ada.source_record_id] == ada_b.golden_id
        merged = session.get(GoldenPatient, ada.golden_id)
        assert merged is not None and merged.status == "merged"


@pytest.mark.postgres
def test_a_deletion_waits_for_an_ingest_linking_to_the_record_it_empties(
    factory: sessionmaker[Session],
) -> None:
    """A source deletes Ada's only record while another source's ingest links a new record
    of Ada to her golden record: the golden record must stay active with the new record,
    not become ``deleted`` with it linked (a 410 for every consumer)."""
    with factory() as session:
        (ada,) = ingest(session, "ehr-a", [ADA])
        ehr_a = session.scalar(select(Source.id).where(Source.name == "ehr-a"))
        third_id = _third_source(session)
    assert ehr_a is not None
    ingesting, record_id = _held_ingest(factory, third_id, ada.golden_id)

    _waits_for(
        ingesting,
        factory,
        lambda session: ingest_page(session, ehr_a, Page("Patient", [], None, deleted=[ADA["id"]])),
    )

    with factory() as session:
        golden = session.get(GoldenPatient, ada.golden_id)
        assert golden is not None and golden.status == "active"
        assert golden.resource["identifier"][0]["value"] == ADA["identifier"][0]["value"]
        linked = session.scalar(select(Link.golden_id).where(Link.source_record_id == record_id))
        assert linked == ada.golden_id
