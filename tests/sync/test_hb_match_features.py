"""Stored match features: written with each Patient source record, compared by the MPI
instead of features extracted again from the normalized JSON (which it falls back to
when the stored ones are missing or stale)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from fhir_mapping import parse_patient
from mpi.features import decode_features, encode_features, extract_features
from mpi.storage import clear_caches
from store.models import GoldenPatient, Link, SourceRecord
from sync import ingest_page
from tests.sync.helpers import add_source, patient, records

SSN = "http://hl7.org/fhir/sid/us-ssn"


def _person(rid: str, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "telecom": [{"system": "phone", "value": "(415) 555-0188"}],
        "identifier": [{"system": SSN, "value": "123-45-6789"}],
        **extra,
    }
    return patient(rid, "Whitfield", "Rosalind", "1961-07-19", **fields)


def _stored(session: Session, source_id: int) -> SourceRecord:
    [record] = records(session, source_id)
    return record


def test_new_and_changed_patients_store_their_features(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    first = _person("p1")
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [first], "c1"))
        session.commit()
    with session_factory() as session:
        record = _stored(session, source_id)
        expected = extract_features(parse_patient(first))
        assert decode_features(record.match_features, record.content_hash) == expected
    changed = _person("p1", updated="2026-02-01T00:00:00Z")
    changed["name"] = [{"family": "Whitfield-Okafor", "given": ["Rosalind"]}]
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [changed], "c2"))
        session.commit()
    with session_factory() as session:
        record = _stored(session, source_id)
        expected = extract_features(parse_patient(changed))
        assert expected.names[0].family == "whitfield okafor"
        assert decode_features(record.match_features, record.content_hash) == expected


@pytest.mark.parametrize(
    ("stored", "linked"),
    [
        ("someone else's", False),  # the MPI compares what is stored...
        ("someone else's, of another content hash", True),  # ...unless it is stale,
        ("none", True),  # ...or missing (stored before migration 0003)
    ],
)
def test_the_mpi_compares_the_stored_features(
    session_factory: sessionmaker[Session], stored: str, linked: bool
) -> None:
    a = add_source(session_factory, "a")
    b = add_source(session_factory, "b")
    with session_factory() as session:
        ingest_page(session, a, Page("Patient", [_person("p1")], "c1"))
        session.commit()
    other = extract_features(parse_patient(patient("x", "Nakamura", "Kenji", "1990-01-02")))
    with session_factory() as session:
        record = _stored(session, a)
        content_hash = record.content_hash if stored == "someone else's" else "0" * 64
        text = None if stored == "none" else encode_features(other, content_hash)
        session.execute(
            update(SourceRecord).where(SourceRecord.id == record.id).values(match_features=text)
        )
        session.commit()
    clear_caches()  # nothing of this process's earlier work is reused
    with session_factory() as session:
        result = ingest_page(session, b, Page("Patient", [_person("q1")], "c1"))
        session.commit()
    assert result.golden_created == (0 if linked else 1)
    with session_factory() as session:
        assert len(set(session.scalars(select(Link.golden_id)))) == (1 if linked else 2)


@pytest.mark.parametrize("features", ["stored", "not stored"])
def test_a_golden_record_renders_the_same_from_stored_features(
    session_factory: sessionmaker[Session], features: str
) -> None:
    """A member read for its features only is parsed whole (its normalized JSON read in
    one query) when its golden record is rendered: nothing of it is missing."""
    a = add_source(session_factory, "a", trust_rank=10)
    b = add_source(session_factory, "b", trust_rank=90)
    address = [{"line": ["12 Harbor Way"], "city": "Oakland", "postalCode": "94607"}]
    with session_factory() as session:
        ingest_page(session, a, Page("Patient", [_person("p1", address=address)], "c1"))
        session.commit()
    if features == "not stored":
        with session_factory() as session:
            session.execute(update(SourceRecord).values(match_features=None))
            session.commit()
    clear_caches()
    telecom = [
        {"system": "phone", "value": "(415) 555-0188"},
        {"system": "email", "value": "r.whitfield@example.org"},
    ]
    with session_factory() as session:
        result = ingest_page(session, b, Page("Patient", [_person("q1", telecom=telecom)], "c1"))
        session.commit()
    assert result.golden_created == 0
    with session_factory() as session:
        golden = session.scalars(select(GoldenPatient)).one()
        resource = {k: v for k, v in golden.resource.items() if k not in ("id", "meta")}
    assert [a["line"] for a in resource["address"]] == [["12 Harbor Way"]]  # p1's only
    assert {t["value"] for t in resource["telecom"]} == {
        "(415) 555-0188",
        "r.whitfield@example.org",  # q1's only
    }
