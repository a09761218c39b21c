"""A pass's block keys are written by a thread of their own while its records are decided
(:func:`mpi.resolve._send_block_keys`): every record keeps exactly its current keys, and a
failing write fails the page, of which nothing stays."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from fhir_mapping import parse_patient
from mpi.blocking import block_keys
from mpi.features import extract_features
from mpi.resolve import resolve_patients
from store.models import BlockKey, GoldenPatient, Link, SourceRecord
from sync import ingest_page
from tests.mpi import helpers as mpi_helpers
from tests.sync.helpers import add_source, patient, records

SSN = "http://hl7.org/fhir/sid/us-ssn"


def _person(
    rid: str, family: str, given: str, birth: str, ssn: str, **extra: Any
) -> dict[str, Any]:
    return patient(
        rid,
        family,
        given,
        birth,
        identifier=[{"system": SSN, "value": ssn}],
        telecom=[{"system": "phone", "value": f"(415) 555-{ssn[-4:]}"}],
        **extra,
    )


def _stored_keys(session: Session) -> list[tuple[str, int]]:
    rows = session.execute(select(BlockKey.key, BlockKey.source_record_id))
    return sorted((key, record) for key, record in rows)


def _expected_keys(session: Session, resources: dict[str, dict[str, Any]]) -> list[tuple[str, int]]:
    ids = {r.resource_id: r.id for r in session.scalars(select(SourceRecord))}
    return sorted(
        (key, ids[rid])
        for rid, resource in resources.items()
        for key in block_keys(extract_features(parse_patient(resource)))
    )


def test_each_record_keeps_exactly_its_current_keys(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    people = {
        "p1": _person("p1", "Whitfield", "Rosalind", "1961-07-19", "123-45-6789"),
        "p2": _person("p2", "Whitfield", "Rosalind", "1961-07-19", "123-45-6789"),
        "p3": _person("p3", "Nakamura", "Kenji", "1990-01-02", "987-65-4321"),
    }
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", list(people.values()), "c1"))
        session.commit()
    with session_factory() as session:
        assert _stored_keys(session) == _expected_keys(session, people)
    # p3 changes (its keys are replaced), p4 is new, in one page
    people["p3"] = _person(
        "p3", "Nakamura-Ito", "Kenji", "1990-02-01", "987-65-4321", updated="2026-02-01T00:00:00Z"
    )
    people["p4"] = _person("p4", "Abernathy", "Colm", "1975-11-30", "555-44-3333")
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [people["p3"], people["p4"]], "c2"))
        session.commit()
    with session_factory() as session:
        assert _stored_keys(session) == _expected_keys(session, people)


def test_passes_of_one_batch_see_the_keys_of_the_passes_before(
    session_factory: sessionmaker[Session],
) -> None:
    """Each pass of one call reads the block keys the pass before wrote in the background:
    the same person in four passes of one record ends up in one golden record."""
    resources = [
        _person(f"p{i}", "Whitfield", "Rosalind", "1961-07-19", "123-45-6789") for i in range(4)
    ]
    with session_factory() as session:
        source = mpi_helpers.add_source(session, "ehr")
        items = [mpi_helpers.add_record(session, source, r) for r in resources]
        out = resolve_patients(session, items, chunk_size=1)
        session.commit()
    assert len({r.golden_id for r in out}) == 1
    with session_factory() as session:
        assert _stored_keys(session) == _expected_keys(session, {r["id"]: r for r in resources})


def _refuse_block_keys(session: Session) -> None:
    if session.get_bind().dialect.name == "postgresql":
        session.execute(
            text(
                "CREATE FUNCTION hb_refuse() RETURNS trigger AS $$ BEGIN "
                "RAISE EXCEPTION 'block keys refused'; END $$ LANGUAGE plpgsql"
            )
        )
        session.execute(
            text(
                "CREATE TRIGGER hb_refuse BEFORE INSERT ON block_key "
                "FOR EACH ROW EXECUTE FUNCTION hb_refuse()"
            )
        )
    else:
        session.execute(
            text(
                "CREATE TRIGGER hb_refuse BEFORE INSERT ON block_key "
                "BEGIN SELECT RAISE(ABORT, 'block keys refused'); END"
            )
        )


def _allow_block_keys(session: Session) -> None:
    session.execute(text("DROP TRIGGER hb_refuse" + (" ON block_key" if _pg(session) else "")))
    if _pg(session):
        session.execute(text("DROP FUNCTION hb_refuse()"))


def _pg(session: Session) -> bool:
    return session.get_bind().dialect.name == "postgresql"


def test_a_failing_key_write_fails_the_page_and_nothing_of_it_stays(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    first = _person("p1", "Whitfield", "Rosalind", "1961-07-19", "123-45-6789")
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [first], "c1"))
        session.commit()
    with session_factory() as session:
        _refuse_block_keys(session)
        session.commit()
    second = _person("p2", "Whitfield", "Rosalind", "1961-07-19", "123-45-6789")
    try:
        with session_factory() as session:
            with pytest.raises(Exception, match="block keys refused"):
                ingest_page(session, source_id, Page("Patient", [second], "c2"))
            session.rollback()
        with session_factory() as session:
            assert [r.resource_id for r in records(session, source_id)] == ["p1"]
            assert session.scalar(select(func.count()).select_from(Link)) == 1
            assert session.scalar(select(func.count()).select_from(GoldenPatient)) == 1
    finally:
        with session_factory() as session:
            _allow_block_keys(session)
            session.commit()
    with session_factory() as session:  # the same page goes through once keys are allowed
        ingest_page(session, source_id, Page("Patient", [second], "c2"))
        session.commit()
    with session_factory() as session:
        assert _stored_keys(session) == _expected_keys(session, {"p1": first, "p2": second})
        assert session.scalar(select(func.count(func.distinct(Link.golden_id)))) == 1
