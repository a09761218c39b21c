"""One resource that breaks the pipeline's own code never stops its page, and is not lost."""

from __future__ import annotations

import json
import logging
from typing import Any

import pytest
from sqlalchemy.orm import Session, sessionmaker

import sync.encounters
import sync.patients
from connectors import Page
from fhir_mapping import EncounterCore, SourcePatient, parse_encounter_core, parse_patient
from sync import ingest_page
from tests.sync.helpers import add_source, encounter, patient, records

LONE_SURROGATE_LINE = '{"resourceType":"Patient","id":"p-bad","name":[{"family":"Ok\\ud800afor"}]}'


def test_a_lone_surrogate_is_quarantined_and_the_page_goes_on(
    session_factory: sessionmaker[Session],
) -> None:
    source_id = add_source(session_factory)
    bad = json.loads(LONE_SURROGATE_LINE)  # what json (and httpx) make of a "\ud800" escape
    bad_encounter = {**encounter("e-bad", "p1"), "id": "e-bad\ud800"}
    with session_factory() as session:
        result = ingest_page(session, source_id, Page("Patient", [patient("p1"), bad], "c1"))
        enc = ingest_page(
            session, source_id, Page("Encounter", [encounter("e1", "p1"), bad_encounter], "e1")
        )
        session.commit()
    assert (result.stored, result.quarantined) == (1, 1)
    assert (enc.stored, enc.quarantined) == (1, 1)
    with session_factory() as session:
        (kept,) = records(session, source_id, resource_type="Patient", status="quarantined")
        assert kept.resource_id == "p-bad"
        assert kept.raw["name"][0]["family"] == "Ok\ufffdafor"
        assert "surrogate" in kept.error["issues"][0]["reason"]
        (kept_encounter,) = records(
            session, source_id, resource_type="Encounter", status="quarantined"
        )
        assert kept_encounter.resource_id == "e-bad\ufffd"
        assert [
            r.resource_id
            for r in records(session, source_id, resource_type="Patient", status="active")
        ] == ["p1"]


def test_a_mapping_defect_quarantines_one_resource_without_phi_and_is_retried(
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    source_id = add_source(session_factory)

    def broken_patient(raw: dict[str, Any], **options: Any) -> SourcePatient:
        if raw["id"] == "p2":
            raise AttributeError(f"'NoneType' has no {raw['name'][0]['family']}")
        return parse_patient(raw, **options)

    def broken_encounter(raw: dict[str, Any]) -> EncounterCore:
        if raw["id"] == "e2":
            raise KeyError(raw["subject"]["reference"])
        return parse_encounter_core(raw)

    monkeypatch.setattr(sync.patients, "parse_patient", broken_patient)
    monkeypatch.setattr(sync.encounters, "parse_encounter_core", broken_encounter)
    page = Page("Patient", [patient("p1"), patient("p2", "Zimmermann"), patient("p3")], "c1")
    encounters = Page("Encounter", [encounter("e1", "p1"), encounter("e2", "p2")], "e1")
    with caplog.at_level(logging.ERROR), session_factory() as session:
        result = ingest_page(session, source_id, page)
        enc = ingest_page(session, source_id, encounters)
        session.commit()
    assert (result.stored, result.quarantined) == (2, 1)
    assert (enc.stored, enc.quarantined) == (1, 1)
    logged = " ".join(f"{r.getMessage()} {r.__dict__}" for r in caplog.records)
    assert "Zimmermann" not in logged and "Patient/p2" not in logged
    with session_factory() as session:
        failed = {
            r.resource_id: r
            for r in records(session, source_id, resource_type="Patient", status="quarantined")
        }
        failed |= {
            r.resource_id: r
            for r in records(session, source_id, resource_type="Encounter", status="quarantined")
        }
        assert set(failed) == {"p2", "e2"}
        assert failed["p2"].error["error"] == "mapping-failed"
        assert "AttributeError" in failed["p2"].error["issues"][0]["reason"]
        assert "Zimmermann" not in json.dumps(failed["p2"].error)
        assert failed["p2"].raw["name"][0]["family"] == "Zimmermann"

    monkeypatch.undo()  # the defect is fixed: the same, unchanged resources are retried
    with session_factory() as session:
        again = ingest_page(session, source_id, page)
        ingest_page(session, source_id, encounters)
        session.commit()
    assert (again.stored, again.skipped, again.quarantined) == (1, 2, 0)
    with session_factory() as session:
        assert records(session, source_id, resource_type="Patient", status="quarantined") == []
        active = records(session, source_id, resource_type="Patient", status="active")
        assert sorted(r.resource_id for r in active) == ["p1", "p2", "p3"]
        stored_encounters = records(session, source_id, resource_type="Encounter")
        assert {r.resource_id: r.status for r in stored_encounters} == {
            "e1": "active",
            "e2": "active",
        }
