"""Patient source records store the compact normalized form (``to_compact_dict``), and a
record stored in the full form before it (``to_dict``) is still matched and rendered."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page
from fhir_mapping import SourcePatient, parse_patient
from mpi.storage import clear_caches
from store.models import GoldenPatient, Link, SourceRecord
from sync import ingest_page
from tests.sync.helpers import add_source, patient, records

SSN = "http://hl7.org/fhir/sid/us-ssn"
ADDRESS = [{"line": ["12 Harbor Way"], "city": "Oakland", "postalCode": "94607"}]


def _person(rid: str, **extra: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "telecom": [{"system": "phone", "value": "(415) 555-0188"}],
        "identifier": [{"system": SSN, "value": "123-45-6789"}],
        **extra,
    }
    return patient(rid, "Whitfield", "Rosalind", "1961-07-19", **fields)


def test_new_and_changed_patients_store_the_compact_form(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    first = _person("p1", address=ADDRESS)
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [first], "c1"))
        session.commit()
    with session_factory() as session:
        [record] = records(session, source_id)
        assert record.normalized == parse_patient(first).to_compact_dict()
        assert record.normalized is not None and None not in record.normalized.values()
    changed = _person("p1", updated="2026-02-01T00:00:00Z")
    changed["name"] = [{"family": "Whitfield-Okafor", "given": ["Rosalind"]}]
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [changed], "c2"))
        session.commit()
    with session_factory() as session:
        [record] = records(session, source_id)
        assert record.normalized == parse_patient(changed).to_compact_dict()
        assert SourcePatient.from_dict(record.normalized) == parse_patient(changed)


@pytest.mark.parametrize("features", ["stored", "not stored"])
def test_a_record_stored_in_the_full_form_is_matched_and_rendered(
    session_factory: sessionmaker[Session], features: str
) -> None:
    a = add_source(session_factory, "a", trust_rank=10)
    b = add_source(session_factory, "b", trust_rank=90)
    first = _person("p1", address=ADDRESS)
    with session_factory() as session:
        ingest_page(session, a, Page("Patient", [first], "c1"))
        session.commit()
    values: dict[str, Any] = {"normalized": parse_patient(first).to_dict()}
    if features == "not stored":  # read from the full form
        values["match_features"] = None
    with session_factory() as session:
        session.execute(update(SourceRecord).values(**values))
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
        assert len(set(session.scalars(select(Link.golden_id)))) == 1
        golden = session.scalars(select(GoldenPatient)).one()
        resource = golden.resource
    assert [a["line"] for a in resource["address"]] == [["12 Harbor Way"]]  # p1's only
    assert {t["value"] for t in resource["telecom"]} == {
        "(415) 555-0188",
        "r.whitfield@example.org",
    }
