"""HL7 v2 ADT over MLLP: the mapping to FHIR, the pipeline, the acknowledgments, the listener."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

import pytest
from fhir.resources.R4B.encounter import Encounter as FhirEncounter
from fhir.resources.R4B.patient import Patient as FhirPatient
from hl7.mllp import open_hl7_connection
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker
from typer.testing import CliRunner

from askonce.cli import app
from fhir_mapping.hl7v2 import (
    SSN_SYSTEM,
    Hl7v2Error,
    MappingOptions,
    ack,
    fhir_id,
    map_adt,
    parse_hl7,
)
from gateway.admin.queries import list_sources
from gateway.metrics import registry_for
from store import CursorRepository, upgrade
from store.models import Encounter, GoldenPatient, Link, SourceRecord
from sync import SourceChange, feed, hl7intake, update_source
from sync.hl7intake import listen_address, receive_message
from sync.mllp_listener import Listener, MllpService, serve_until
from sync.repeats import Repeats
from tests.sekmet_server import free_port
from tests.sync.helpers import add_source, events, records

T = TypeVar("T")

MSH = "MSH|^~\\&|EPIC|GENHOSP|ASKONCE|HUB|{ts}||ADT^{event}^ADT_A01|{control}|P|2.5.1"


def segment(name: str, values: dict[int, str]) -> str:
    """A segment with the given fields (by their 1-based numbers), the rest empty."""
    fields = [name] + [""] * max(values)
    for number, value in values.items():
        fields[number] = value
    return "|".join(fields).rstrip("|")


def pid(
    mrn: str = "MRN001",
    *,
    name: str = "Okafor^Ada^Ngozi^^^^L",
    birth: str = "19800402",
    sex: str = "F",
    address: str = "12 Main St^Apt 4^Boston^MA^02115^USA^H",
    home: str = "(617)555-0100^PRN^PH~^NET^Internet^ada@example.org",
    ssn: str = "",
    language: str = "",
) -> str:
    ids = f"{mrn}^^^GENHOSP^MR"
    values = {1: "1", 3: ids, 5: name, 7: birth, 8: sex, 11: address, 13: home}
    return segment("PID", {**values, 15: language, 19: ssn})


def pv1(
    visit: str = "V100",
    patient_class: str = "I",
    admit: str = "20250301080000",
    discharge: str = "",
) -> str:
    number = f"{visit}^^^GENHOSP^VN" if visit else ""
    return segment("PV1", {1: "1", 2: patient_class, 19: number, 44: admit, 45: discharge})


def message(
    event: str, *segments: str, ts: str = "20250301080500", control: str = "C1", accept: str = ""
) -> str:
    head = MSH.format(ts=ts, event=event, control=control) + (f"|||{accept}" if accept else "")
    evn = f"EVN|{event}|{ts}"
    return "\r".join([head, evn, *segments]) + "\r"


def adt(text: str, **options: Any) -> Any:
    return map_adt(parse_hl7(text), MappingOptions(**options))


# -- mapping --------------------------------------------------------------------------------


def test_pid_maps_to_a_valid_patient() -> None:
    text = message(
        "A04",
        pid(
            ssn="123-45-6789",
            language="en^English",
            name="Okafor^Ada^Ngozi^Jr^Dr^^L~Oka^Adie^^^^^N",
        ),
        pv1(),
    )
    result = adt(text)
    patient = result.patient
    FhirPatient.model_validate(patient)
    assert patient["id"] == "MRN001"
    assert patient["meta"] == {"lastUpdated": "2025-03-01T08:05:00Z"}
    mrn, ssn = patient["identifier"]
    assert mrn["value"] == "MRN001" and mrn["type"]["coding"][0]["code"] == "MR"
    assert mrn["system"].endswith(":GENHOSP")
    assert ssn == {
        "value": "123-45-6789",
        "system": SSN_SYSTEM,
        "type": {
            "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "SS"}]
        },
    }
    official, nickname = patient["name"]
    assert official == {
        "family": "Okafor",
        "given": ["Ada", "Ngozi"],
        "suffix": ["Jr"],
        "prefix": ["Dr"],
        "use": "official",
    }
    assert nickname["use"] == "nickname" and nickname["given"] == ["Adie"]
    assert patient["gender"] == "female" and patient["birthDate"] == "1980-04-02"
    assert patient["address"] == [
        {
            "line": ["12 Main St", "Apt 4"],
            "city": "Boston",
            "state": "MA",
            "postalCode": "02115",
            "country": "USA",
            "use": "home",
        }
    ]
    assert patient["telecom"] == [
        {"system": "phone", "value": "(617)555-0100", "use": "home"},
        {"system": "email", "value": "ada@example.org"},
    ]
    assert patient["communication"][0]["language"]["coding"][0]["code"] == "en"
    encounter = result.encounter
    FhirEncounter.model_validate(encounter)
    assert encounter["id"] == "V100" and encounter["status"] == "in-progress"
    assert encounter["class"]["code"] == "IMP"
    assert encounter["subject"] == {"reference": "Patient/MRN001"}
    assert encounter["period"] == {"start": "2025-03-01T08:00:00Z"}


@pytest.mark.parametrize(
    ("fields", "marital", "multiple_birth"),
    [
        (
            {16: "M^Married^HL70002", 24: "Y", 25: "2"},
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                        "code": "M",
                        "display": "Married",
                    },
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0002", "code": "M"},
                ],
                "text": "Married",
            },
            ("multipleBirthInteger", 2),
        ),
        (
            {16: "e", 24: "Y"},
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-MaritalStatus",
                        "code": "L",
                        "display": "Legally Separated",
                    },
                    {"system": "http://terminology.hl7.org/CodeSystem/v2-0002", "code": "E"},
                ],
            },
            ("multipleBirthBoolean", True),
        ),
        (
            {16: "G", 24: "N", 25: "1"},
            {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0002", "code": "G"}]},
            ("multipleBirthBoolean", False),
        ),
        (
            {16: "7^Partnered^LOCAL", 25: "x"},
            {"coding": [{"code": "7"}], "text": "Partnered"},
            None,
        ),
        ({16: "^Separated"}, {"text": "Separated"}, None),
        ({}, None, None),
    ],
)
def test_marital_status_and_multiple_birth(
    fields: dict[int, str], marital: dict[str, Any] | None, multiple_birth: tuple[str, Any] | None
) -> None:
    """PID-16 as ``maritalStatus`` (a table 0002 code also as the FHIR value set's code of
    the same meaning), PID-24/25 as ``multipleBirth[x]``: the birth order a twins guard
    reads (https://build.fhir.org/ig/HL7/v2-to-fhir/, "PID to Patient")."""
    base = {1: "1", 3: "MRN001^^^GENHOSP^MR", 5: "Okafor^Ada", 7: "19800402", 8: "F"}
    patient = adt(message("A08", segment("PID", {**base, **fields}))).patient
    FhirPatient.model_validate(patient)
    assert patient.get("maritalStatus") == marital
    births = {k: v for k, v in patient.items() if k.startswith("multipleBirth")}
    assert births == (dict([multiple_birth]) if multiple_birth else {})


def test_escapes_line_endings_and_identifier_systems() -> None:
    text = message("A08", pid(name="O\\S\\Brien\\T\\Co^Se\\F\\n")).replace("\r", "\n")
    result = adt(text, identifier_systems={"GENHOSP": "urn:oid:1.2.3.4"})
    assert result.patient["name"][0] == {"family": "O^Brien&Co", "given": ["Se|n"]}
    assert result.patient["identifier"][0]["system"] == "urn:oid:1.2.3.4"
    universal = message("A08", pid(mrn="M7^^^GENHOSP&2.16.840.1.113883.3.7&ISO^MR~X"))
    assert adt(universal).patient["identifier"][0]["system"] == "urn:oid:2.16.840.1.113883.3.7"
    by_uri = message("A08", pid(mrn="M7^^^&https://ehr.example/mrn&URI^MR~X"))
    assert adt(by_uri).patient["identifier"][0]["system"] == "https://ehr.example/mrn"
    sub = message("A08", pid(address="12 Main St&Main St&12^^Boston^MA^02115"))
    assert adt(sub).patient["address"][0]["line"] == ["12 Main St"]
    assert result.encounter is None  # no PV1


def test_times_without_offset_are_read_in_the_source_zone() -> None:
    text = message("A03", pid(), pv1(admit="20250301080000", discharge="202503021530-0500"))
    result = adt(text, zone=ZoneInfo("America/Chicago"))
    assert result.encounter["status"] == "finished"
    assert result.encounter["period"] == {
        "start": "2025-03-01T08:00:00-06:00",
        "end": "2025-03-02T15:30:00-05:00",
    }
    assert result.patient["meta"]["lastUpdated"] == "2025-03-01T08:05:00-06:00"


@pytest.mark.parametrize(
    ("event", "patient_class", "discharge", "status", "code"),
    [
        ("A01", "I", "", "in-progress", "IMP"),
        ("A04", "O", "", "in-progress", "AMB"),
        ("A04", "E", "", "in-progress", "EMER"),
        ("A05", "P", "", "planned", "PRENC"),
        ("A03", "I", "20250302", "finished", "IMP"),
        ("A08", "I", "20250302", "finished", "IMP"),
        ("A11", "I", "", "cancelled", "IMP"),
        ("A13", "I", "", "in-progress", "IMP"),
        ("A01", "Z", "", "in-progress", "UNK"),
    ],
)
def test_visit_status_and_class(
    event: str, patient_class: str, discharge: str, status: str, code: str
) -> None:
    result = adt(message(event, pid(), pv1(patient_class=patient_class, discharge=discharge)))
    assert result.encounter["status"] == status
    assert result.encounter["class"]["code"] == code
    FhirEncounter.model_validate(result.encounter)


def test_person_updates_deletes_and_merges() -> None:
    assert adt(message("A28", pid(), pv1(patient_class="N"))).encounter is None
    assert adt(message("A31", pid(), pv1(visit=""))).encounter is None
    deleted = adt(message("A29", pid()))
    assert deleted.patient is None and deleted.deleted_patient_ids == ["MRN001"]
    visit = adt(message("A23", pid(), pv1()))
    assert visit.deleted_encounter_ids == ["V100"] and visit.encounter is None
    merged = adt(message("A40", pid("MRN002"), "MRG|MRN001^^^GENHOSP^MR"))
    assert merged.patient["id"] == "MRN002" and merged.merged_patient_ids == ["MRN001"]


@pytest.mark.parametrize(
    ("text", "location", "code"),
    [
        ("PID|1||X", "MSH", "100"),
        ("MSH|^~\\&|A|B|C|D|20250101||ORU^R01|1|P|2.5.1\rPID|1||X^^^A^MR", "MSH-9", "200"),
        (message("A04", "PV1|1|I"), "PID", "101"),
        (message("A04", pid(mrn="")), "PID-3", "101"),
        (message("A04", pid(birth="19801345")), "PID-7", "102"),
        (message("A04", pid(birth="1980-04-02")), "PID-7", "102"),
        (message("A40", pid()), "MRG", "101"),
        (message("A23", pid()), "PV1-19", "101"),
    ],
)
def test_unmappable_messages_name_the_field(text: str, location: str, code: str) -> None:
    with pytest.raises(Hl7v2Error) as raised:
        adt(text)
    assert raised.value.location == location and raised.value.code == code
    assert "1980" not in raised.value.reason and "X^" not in raised.value.reason


def test_ids_that_are_not_fhir_ids_are_hashed_stably() -> None:
    assert fhir_id("MRN-001.a") == "MRN-001.a"
    hashed = fhir_id("000 123/45")
    assert hashed == fhir_id("000 123/45") and hashed != fhir_id("000 123/46")
    assert hashed.startswith("h") and len(hashed) == 41
    assert adt(message("A04", pid(mrn="A B"))).patient["id"] == fhir_id("A B")


def test_acknowledgment_swaps_sender_and_receiver() -> None:
    parsed = parse_hl7(message("A04", pid(), control="MSG-77"))
    accepted = ack(parsed, "AA", control_id="ACK1").split("\r")
    assert accepted[0].startswith("MSH|^~\\&|ASKONCE|HUB|EPIC|GENHOSP|")
    assert accepted[0].split("|")[8:12] == ["ACK^A04^ACK", "ACK1", "P", "2.5.1"]
    assert accepted[1] == "MSA|AA|MSG-77" and accepted[2] == ""
    error = ack(parsed, "AE", Hl7v2Error("PID-7", "bad | date", code="102"), control_id="A2")
    assert error.split("\r")[2] == "ERR||PID^1^7|102^^HL70357|E||||bad \\F\\ date"


# -- the pipeline ----------------------------------------------------------------------------


@pytest.fixture
def source_id(session_factory: sessionmaker[Session]) -> int:
    return add_source(session_factory, "adt", kind="hl7v2", base_url="mllp://127.0.0.1:2575")


def receive(session_factory: sessionmaker[Session], source: int, text: str) -> hl7intake.AdtResult:
    return receive_message(session_factory, source, text)


def golden_of(session: Session, source: int, resource_id: str) -> str | None:
    return session.scalar(
        select(Link.golden_id)
        .join(SourceRecord, SourceRecord.id == Link.source_record_id)
        .where(SourceRecord.source_id == source, SourceRecord.resource_id == resource_id)
    )


def test_admission_update_discharge(session_factory: sessionmaker[Session], source_id: int) -> None:
    first = receive(session_factory, source_id, message("A01", pid(), pv1(), control="M1"))
    assert first.code == "AA", first.ack
    assert "MSA|AA|M1" in first.ack and first.ingest.stored == 2
    with session_factory() as session:
        golden = golden_of(session, source_id, "MRN001")
        assert golden is not None
        encounter = session.scalar(select(Encounter))
        assert encounter.golden_id == golden and encounter.status == "in-progress"
        assert events(session, "patient.created") == 1
    # A later update reaches the golden record and emits an event.
    update = message(
        "A08", pid(address="9 Elm Rd^^Cambridge^MA^02139^USA^H"), pv1(), ts="20250301090000"
    )
    assert receive(session_factory, source_id, update).code == "AA"
    # The same message again changes nothing; an older one does not overwrite.
    assert receive(session_factory, source_id, update).ingest.skipped == 2
    old = message("A08", pid(address="1 Old St^^Boston^MA^02115^USA^H"), ts="20240101000000")
    assert receive(session_factory, source_id, old).code == "AA"
    with session_factory() as session:
        stored = session.get(GoldenPatient, golden)
        assert stored.resource["address"][0]["city"] == "Cambridge"
        assert events(session, "patient.updated") >= 1
    discharge = message("A03", pid(), pv1(discharge="20250302120000"), ts="20250302120500")
    assert receive(session_factory, source_id, discharge).code == "AA"
    with session_factory() as session:
        encounter = session.scalar(select(Encounter))
        assert encounter.status == "finished" and encounter.period_end is not None
        assert events(session, "encounter.updated") >= 1


def test_visit_delete_person_delete_and_merge(
    session_factory: sessionmaker[Session], source_id: int
) -> None:
    receive(session_factory, source_id, message("A04", pid("MRN001"), pv1("V1")))
    receive(session_factory, source_id, message("A04", pid("MRN001"), pv1("V2")))
    receive(
        session_factory,
        source_id,
        message("A04", pid("MRN002", name="Okafor^Ada^N^^^^L", home=""), pv1("V3")),
    )
    assert (
        receive(session_factory, source_id, message("A23", pid("MRN001"), pv1("V2"))).code == "AA"
    )
    with session_factory() as session:
        prior_golden = golden_of(session, source_id, "MRN001")
        assert prior_golden is not None and prior_golden != golden_of(session, source_id, "MRN002")
    merged = receive(
        session_factory,
        source_id,
        message("A40", pid("MRN002"), "MRG|MRN001^^^GENHOSP^MR", ts="20250301090000"),
    )
    assert merged.code == "AA" and merged.ingest.deleted == 1
    with session_factory() as session:
        by_id = {r.resource_id: r.status for r in records(session, source_id)}
        assert by_id == {
            "MRN001": "deleted",
            "MRN002": "active",
            "V1": "active",
            "V2": "deleted",
            "V3": "active",
        }
        survivor = golden_of(session, source_id, "MRN002")
        moved = {e.patient_resource_id: e.golden_id for e in session.scalars(select(Encounter))}
        assert moved == {"MRN002": survivor}  # V1 moved to the survivor, V2 gone
        assert events(session, "encounter.deleted") == 1
        # The prior patient's golden record held only it: merged into the survivor's, so
        # its id still finds the person (as for a FHIR replaced-by Patient).
        prior = session.get(GoldenPatient, prior_golden)
        assert prior is not None and (prior.status, prior.merged_into) == ("merged", survivor)
    assert receive(session_factory, source_id, message("A29", pid("MRN002"))).code == "AA"
    with session_factory() as session:
        assert records(session, source_id, resource_id="MRN002")[0].status == "deleted"


def test_a_late_message_about_a_merged_away_patient_goes_to_the_survivor(
    session_factory: sessionmaker[Session], source_id: int
) -> None:
    """After an A40, a message that still names the prior patient (a discharge queued
    before the merge) does not bring the retired record back into the golden record:
    its visit is the survivor's. A prior the feed never sent is remembered as retired."""
    receive(session_factory, source_id, message("A04", pid("MRN001"), pv1("V1")))
    receive(
        session_factory,
        source_id,
        message("A04", pid("MRN002", name="Okafor^Ada^N^^^^L", home=""), pv1("V3")),
    )
    for prior in ("MRN001", "MRN077"):
        merged = message("A40", pid("MRN002"), f"MRG|{prior}^^^GENHOSP^MR", ts="20250301090000")
        assert receive(session_factory, source_id, merged).code == "AA"
    late = message("A03", pid("MRN001"), pv1("V1", discharge="20250301100000"), ts="20250301100500")
    result = receive(session_factory, source_id, late)
    assert result.code == "AA" and result.ingest.skipped == 1
    never_sent = message("A04", pid("MRN077"), pv1("V9"), ts="20250301110000")
    assert receive(session_factory, source_id, never_sent).code == "AA"
    with session_factory() as session:
        by_id = {r.resource_id: r.status for r in records(session, source_id)}
        assert by_id == {
            "MRN001": "deleted",
            "MRN002": "active",
            "MRN077": "deleted",
            "V1": "active",
            "V3": "active",
            "V9": "active",
        }
        survivor = golden_of(session, source_id, "MRN002")
        visits = {
            e.patient_resource_id: (e.golden_id, e.status)
            for e in session.scalars(select(Encounter).order_by(Encounter.id))
        }
        assert set(visits) == {"MRN002"}
        assert {golden for golden, _ in visits.values()} == {survivor}
        finished = session.scalars(
            select(Encounter.status)
            .join(SourceRecord, SourceRecord.id == Encounter.source_record_id)
            .where(SourceRecord.resource_id == "V1")
        ).one()
        assert finished == "finished"
        golden = session.get(GoldenPatient, survivor)
        assert golden is not None
        identifiers = {i.get("value") for i in golden.resource.get("identifier", [])}
        assert "MRN001" not in identifiers and "MRN077" not in identifiers


def test_bad_messages_are_kept_and_answered(
    session_factory: sessionmaker[Session], source_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level("INFO")
    no_id = message("A04", pid(mrn="", name="Secretname^Ada"), control="BAD1")
    result = receive(session_factory, source_id, no_id)
    assert result.code == "AE" and "MSA|AE|BAD1" in result.ack and "ERR||PID^1^3|101" in result.ack
    invalid = message("A04", pid(mrn="MRN9", language="en  US"), control="BAD2")
    flagged = receive(session_factory, source_id, invalid)
    assert flagged.code == "AE" and "communication" in flagged.ack
    not_hl7 = receive(session_factory, source_id, "hello")
    assert not_hl7.code == "AE" and "MSA|AE|\r" in not_hl7.ack
    wrong_type = "MSH|^~\\&|A|B|C|D|20250101||ORU^R01|OR1|P|2.5.1\rPID|1||X^^^A^MR\r"
    rejected = receive(session_factory, source_id, wrong_type)
    assert rejected.code == "AR" and "MSA|AR|OR1" in rejected.ack
    # An empty block (a keep-alive) holds nothing to keep: rejected, not quarantined.
    for empty in ("", "\r\n", "  \r"):
        nothing = receive(session_factory, source_id, empty)
        assert nothing.code == "AR" and "MSA|AR|\r" in nothing.ack and "is empty" in nothing.ack
    with session_factory() as session:
        kept = records(session, source_id, status="quarantined")
        assert len(kept) == 3
        texts = [r.raw.get("hl7v2") for r in kept if r.resource_id.startswith("unreadable-")]
        assert any(t and "Secretname" in t for t in texts) and "hello" in texts
        assert {r.resource_id for r in kept if not r.resource_id.startswith("unreadable-")} == {
            "MRN9"
        }
    assert "Secretname" not in caplog.text and "MRN9" not in caplog.text


def test_a_database_failure_rejects_and_keeps_nothing(
    session_factory: sessionmaker[Session], source_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database went away")

    monkeypatch.setattr(hl7intake, "handle_adt", broken)
    result = receive(session_factory, source_id, message("A04", pid(), control="R1"))
    assert result.code == "AR" and "MSA|AR|R1" in result.ack and "send it again" in result.ack
    with session_factory() as session:
        assert records(session, source_id) == []


def test_a_disabled_source_rejects_without_a_traceback_and_takes_the_resend(
    session_factory: sessionmaker[Session], source_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    with session_factory() as session:
        update_source(session, source_id, SourceChange(enabled=False))
        session.commit()
    text = message("A04", pid(), control="D1")
    with caplog.at_level(logging.WARNING, logger=hl7intake.__name__):
        refused = receive(session_factory, source_id, text)
    assert refused.code == "AR" and "MSA|AR|D1" in refused.ack and "disabled" in refused.ack
    [entry] = [r for r in caplog.records if r.name == hl7intake.__name__]
    assert entry.levelno == logging.WARNING and entry.exc_info is None
    with session_factory() as session:
        assert records(session, source_id) == []
        update_source(session, source_id, SourceChange(enabled=True))
        session.commit()
    assert receive(session_factory, source_id, text).code == "AA"  # the sender's resend
    with session_factory() as session:
        assert len(records(session, source_id)) == 1


@pytest.mark.parametrize(
    ("mode", "committed", "failed"),
    [("AL", "CA", "CR"), ("NE", None, None), ("ER", None, "CR"), ("SU", "CA", None)],
)
def test_enhanced_mode_commit_acknowledgments(
    session_factory: sessionmaker[Session],
    source_id: int,
    monkeypatch: pytest.MonkeyPatch,
    mode: str,
    committed: str | None,
    failed: str | None,
) -> None:
    def msa(result: hl7intake.AdtResult) -> str | None:
        return result.ack.split("\rMSA|", 1)[1][:2] if result.ack else None

    stored = receive(session_factory, source_id, message("A04", pid(), accept=mode))
    assert stored.code == "AA" and msa(stored) == committed
    with session_factory() as session:
        assert len(records(session, source_id)) == 1  # committed whatever the answer
    kept = receive(session_factory, source_id, message("A04", pid(mrn=""), accept=mode))
    assert kept.code == "AE" and msa(kept) == committed  # kept, quarantined: committed

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("database went away")

    monkeypatch.setattr(hl7intake, "handle_adt", broken)
    lost = receive(session_factory, source_id, message("A08", pid(), accept=mode))
    assert lost.code == "AR" and msa(lost) == failed
    if failed:
        assert "ERR||MSH|207^^HL70357" in lost.ack


# -- MLLP ----------------------------------------------------------------------------------


async def serving(
    session_factory: Callable[[], Session], *targets: Listener
) -> tuple[MllpService, int]:
    """A service listening on ``targets``; the port the first one was bound to."""
    service = MllpService(session_factory)
    await service.open(targets)
    return service, service.address(targets[0].source_id)[1]


def test_mllp_listener_acknowledges_each_message(
    session_factory: sessionmaker[Session], source_id: int
) -> None:
    async def scenario() -> list[str]:
        service, port = await serving(session_factory, Listener(source_id, "adt", "127.0.0.1", 0))
        replies = []
        try:
            reader, writer = await open_hl7_connection("127.0.0.1", port)
            # An enhanced-mode message that asks for no acknowledgment gets none; the next does.
            writer.writeblock(message("A31", pid(), accept="NE").encode("utf-8"))
            for text in (message("A04", pid(), pv1(), control="T1"), "garbage"):
                writer.writeblock(text.encode("utf-8"))
                await writer.drain()
                replies.append((await asyncio.wait_for(reader.readblock(), 30)).decode())
            writer.close()
            # A connection that breaks the framing is closed; one too large is rejected.
            raw_reader, raw_writer = await asyncio.open_connection("127.0.0.1", port)
            raw_writer.write(b"MSH|no start block\x1c\r")
            await raw_writer.drain()
            assert await asyncio.wait_for(raw_reader.read(), 30) == b""
            raw_writer.close()
            big_reader, big_writer = await open_hl7_connection("127.0.0.1", port)
            big_writer.writeblock(b"x" * (hl7intake.MAX_MESSAGE_BYTES + 10))
            await big_writer.drain()
            replies.append((await asyncio.wait_for(big_reader.readblock(), 30)).decode())
            big_writer.close()
        finally:
            await service.close()
        return replies

    accepted, quarantined, too_big = asyncio.run(scenario())
    assert "MSA|AA|T1" in accepted
    assert "MSA|AE|" in quarantined
    assert "MSA|AR|" in too_big and "exceeds" in too_big
    with session_factory() as session:
        assert golden_of(session, source_id, "MRN001") is not None


def test_a_sender_breaking_the_protocol_again_and_again_is_logged_once_a_minute(
    session_factory: sessionmaker[Session], source_id: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Broken framing and messages too large close the connection every time; each is
    logged with the source and the sender's address, once a minute per sender, the line
    counting the times it stands for. A disabled source's ``AR`` is logged the same way."""
    caplog.set_level(logging.WARNING)
    now = [50.0]
    framing = "mllp framing error: no start block; closing the connection"
    too_large = "mllp message too large; closing the connection"

    async def broken_framing(port: int) -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(b"MSH|no start block\x1c\r")
        await writer.drain()
        closed = await asyncio.wait_for(reader.read(), 30)
        writer.close()
        return closed

    async def oversized(port: int) -> str:
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        writer.writeblock(b"x" * (hl7intake.MAX_MESSAGE_BYTES + 10))
        await writer.drain()
        reply = (await asyncio.wait_for(reader.readblock(), 30)).decode()
        writer.close()
        return reply

    async def scenario() -> list[Any]:
        service, port = await serving(session_factory, Listener(source_id, "adt", "127.0.0.1", 0))
        service.repeats = Repeats(clock=lambda: now[0])
        try:
            answers = [await broken_framing(port) for _ in range(4)]
            answers += [await oversized(port) for _ in range(2)]
            now[0] += 60
            answers += [await broken_framing(port), await oversized(port)]
        finally:
            await service.close()
        return answers

    answers = asyncio.run(scenario())
    assert answers[:4] + answers[6:7] == [b""] * 5  # each connection closed unanswered
    assert all("MSA|AR|" in reply for reply in answers[4:6] + answers[7:])
    lines = [(r.getMessage(), getattr(r, "count", None)) for r in caplog.records]
    assert lines == [(framing, 1), (too_large, 1), (framing, 4), (too_large, 2)]
    assert {getattr(r, "source_id", None) for r in caplog.records} == {source_id}
    assert {getattr(r, "peer", None) for r in caplog.records} == {"127.0.0.1"}

    # A disabled source: the engine's every resend is answered AR, logged once a minute.
    caplog.clear()
    with session_factory() as session:
        update_source(session, source_id, SourceChange(enabled=False))
        session.commit()
    repeats, text = Repeats(clock=lambda: now[0]), message("A04", pid(), control="D2")
    for _ in range(3):
        answer = receive_message(session_factory, source_id, text, repeats=repeats)
        assert answer.code == "AR"
    now[0] += 60
    assert receive_message(session_factory, source_id, text, repeats=repeats).code == "AR"
    disabled = [r for r in caplog.records if r.name == hl7intake.__name__]
    assert [getattr(r, "count", None) for r in disabled] == [1, 3]


def test_a_feed_says_when_its_last_message_came_and_how_each_was_answered(
    db_url: str,
    session_factory: sessionmaker[Session],
    source_id: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An ADT feed has no runs: what shows that it is alive is its last message, counted
    with each message's answer in the transaction that takes it in. ``sources list``,
    ``sources status``, the admin API and ``/metrics`` say it."""
    quiet_id = add_source(session_factory, "quiet", kind="hl7v2", base_url="mllp://127.0.0.1:2")
    before = datetime.now(UTC)
    wrong_type = "MSH|^~\\&|A|B|C|D|20250101||ORU^R01|OR9|P|2.5.1\rPID|1||X^^^A^MR\r"
    answers = [
        receive(session_factory, source_id, text).code
        for text in (
            message("A04", pid("MRN7"), control="F1"),
            message("A08", pid("MRN7"), control="F2"),  # the same again: accepted, unchanged
            message("A04", pid(mrn="MRN8", language="en  US"), control="F3"),  # quarantined
            "hello",  # quarantined whole
            wrong_type,  # not ADT: rejected, nothing kept
            "",  # a keep-alive: not a message
        )
    ]
    assert answers == ["AA", "AA", "AE", "AE", "AR", "AR"]
    with session_factory() as session:
        update_source(session, source_id, SourceChange(enabled=False))
        session.commit()
    assert receive(session_factory, source_id, message("A04", pid("MRN9"))).code == "AR"
    with session_factory() as session:  # what was not taken in while disabled is not counted
        update_source(session, source_id, SourceChange(enabled=True))
        session.commit()
        assert set(feed.feeds(session)) == {source_id}
        fed = feed.feeds(session, source_id)[source_id]
        listed = {s["id"]: s["hl7v2_feed"] for s in list_sources(session)}
    assert (fed.accepted, fed.quarantined, fed.rejected, fed.messages) == (2, 2, 1, 5)
    assert fed.last_message_at is not None
    assert before <= fed.last_message_at <= datetime.now(UTC)
    assert listed[source_id] == fed.as_dict() and listed[source_id]["messages"] == 5
    assert listed[quiet_id] == feed.Feed(quiet_id, None).as_dict()

    monkeypatch.setenv("ASKONCE_DATABASE_URL", db_url)
    monkeypatch.setenv("ASKONCE_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("COLUMNS", "200")
    runner = CliRunner()
    status = runner.invoke(app, ["sources", "status"])
    assert status.exit_code == 0, status.output
    at = fed.last_message_at.isoformat(timespec="seconds")
    said = f"feed: last message {at}, 5 messages (accepted 2, quarantined 2, rejected 1)"
    assert said in status.output and "feed: no message received yet" in status.output
    assert "last run" not in status.output  # a feed has no runs to speak of
    listing = runner.invoke(app, ["sources", "list"]).output
    assert f"message {at}" in listing and "no message" in listing

    scrape = generate_latest(registry_for(session_factory)).decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(scrape)
        for sample in family.samples
    }
    last = samples[("askonce_hl7v2_last_message_timestamp_seconds", (("source", "adt"),))]
    assert last == pytest.approx(fed.last_message_at.timestamp())
    for answer, count in (("accepted", 2), ("quarantined", 2), ("rejected", 1)):
        key = ("askonce_hl7v2_messages_total", (("answer", answer), ("source", "adt")))
        assert samples[key] == count


def test_a_feed_row_that_cannot_be_read_counts_again_from_zero(
    session_factory: sessionmaker[Session], source_id: int
) -> None:
    """A damaged ``$feed`` row never stops a message from being taken in."""
    with session_factory() as session:
        CursorRepository(session).set(source_id, feed.FEED_STATE_KEY, '["not", "a", "feed"]')
        session.commit()
        assert feed.feeds(session)[source_id] == feed.Feed(source_id, None)
    assert receive(session_factory, source_id, message("A04", pid("MRN5"))).code == "AA"
    with session_factory() as session:
        assert feed.feeds(session)[source_id].accepted == 1
        with pytest.raises(ValueError, match="acknowledgment code"):
            feed.note_message(session, source_id, "CA")  # enhanced mode's codes are not kept


def test_repeats_admits_once_a_window_per_key_and_forgets_the_oldest_keys() -> None:
    now = [0.0]
    repeats = Repeats(window_s=10.0, keys=2, clock=lambda: now[0])
    assert [repeats.admit("a") for _ in range(3)] == [1, 0, 0]
    assert repeats.admit("b") == 1  # another key has a line of its own
    now[0] = 9.9
    assert repeats.admit("a") == 0
    now[0] = 10.0  # the window is counted from the last line, not the last occurrence
    assert repeats.admit("a") == 4 and repeats.admit("a") == 0
    assert repeats.admit("c") == 1  # three keys: "b", seen least recently, is forgotten
    assert repeats.admit("b") == 1 and repeats.admit("a") == 1
    # Many threads at once: each occurrence is counted once, in one line or another.
    many = Repeats(window_s=10.0, clock=lambda: now[0])
    counts: list[int] = []

    def hammer() -> None:
        counts.extend(many.admit("k") for _ in range(5000))

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    now[0] += 10.0
    assert counts.count(1) == 1 and sum(counts) == 1
    assert many.admit("k") == 20_000  # the 19,999 left out, and this one


def _held_receive(monkeypatch: pytest.MonkeyPatch) -> tuple[threading.Event, threading.Event]:
    """``receive_message`` made to wait, once it has started, until ``release`` is set."""
    started, release = threading.Event(), threading.Event()
    real = hl7intake.receive_message

    def held(*args: Any, **kwargs: Any) -> hl7intake.AdtResult:
        started.set()
        assert release.wait(30), "the held message was never released"
        return real(*args, **kwargs)

    monkeypatch.setattr(hl7intake, "receive_message", held)
    return started, release


async def peer_closed(reader: asyncio.StreamReader) -> bool:
    """Whether the peer closed the connection (within 30 s)."""
    try:
        return await asyncio.wait_for(reader.read(), 30) == b""
    except ConnectionError:
        return True


def test_a_stopping_listener_acknowledges_the_message_in_flight(
    session_factory: sessionmaker[Session], source_id: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stop: the port closes, an idle connection is closed, and the message being taken
    in is committed and acknowledged before its connection closes."""
    started, release = _held_receive(monkeypatch)

    async def scenario() -> tuple[int, str]:
        stop = asyncio.Event()
        service, port = await serving(session_factory, Listener(source_id, "adt", "127.0.0.1", 0))
        served = asyncio.create_task(serve_until(service, stop))
        idle_reader, idle_writer = await asyncio.open_connection("127.0.0.1", port)
        busy_reader, busy_writer = await open_hl7_connection("127.0.0.1", port)
        busy_writer.writeblock(message("A04", pid(), control="S1").encode("utf-8"))
        await busy_writer.drain()
        assert await asyncio.to_thread(started.wait, 30)
        stop.set()
        assert await peer_closed(idle_reader)
        with pytest.raises(OSError):
            await asyncio.open_connection("127.0.0.1", port)
        assert not served.done()  # waiting for the message in flight
        release.set()
        reply = (await asyncio.wait_for(busy_reader.readblock(), 30)).decode()
        assert await peer_closed(busy_reader)
        cut = await asyncio.wait_for(served, 30)
        idle_writer.close()
        busy_writer.close()
        return cut, reply

    try:
        cut, reply = asyncio.run(scenario())
    finally:
        release.set()
    assert cut == 0
    assert "MSA|AA|S1" in reply
    with session_factory() as session:
        assert golden_of(session, source_id, "MRN001") is not None


@pytest.mark.parametrize("how", ["grace", "hurry"])
def test_a_stopping_listener_waits_for_a_message_only_so_long(
    session_factory: sessionmaker[Session],
    source_id: int,
    monkeypatch: pytest.MonkeyPatch,
    how: str,
) -> None:
    """Past the grace period, or at a second signal, a connection still busy is closed
    without its acknowledgment; its transaction still commits whole (the sender will
    send the message again, and the copy is skipped as unchanged)."""
    started, release = _held_receive(monkeypatch)

    async def scenario() -> tuple[int, bool]:
        stop, hurry = asyncio.Event(), asyncio.Event()
        service, port = await serving(session_factory, Listener(source_id, "adt", "127.0.0.1", 0))
        grace = 0.2 if how == "grace" else 60.0
        served = asyncio.create_task(serve_until(service, stop, hurry=hurry, grace_s=grace))
        reader, writer = await open_hl7_connection("127.0.0.1", port)
        writer.writeblock(message("A04", pid(), control="S2").encode("utf-8"))
        await writer.drain()
        assert await asyncio.to_thread(started.wait, 30)
        stop.set()
        if how == "hurry":
            await asyncio.sleep(0.2)
            assert not served.done()
            hurry.set()
        cut = await asyncio.wait_for(served, 30)
        closed = await peer_closed(reader)
        writer.close()
        release.set()  # the transaction goes on in its thread, and commits
        return cut, closed

    try:
        cut, closed = asyncio.run(scenario())
    finally:
        release.set()
    assert (cut, closed) == (1, True)
    with session_factory() as session:
        assert golden_of(session, source_id, "MRN001") is not None


# -- configuration and CLI -------------------------------------------------------------------


def test_listen_address() -> None:
    assert listen_address("mllp://0.0.0.0:2576") == ("0.0.0.0", 2576)
    assert listen_address("mllp://adt.local") == ("adt.local", 2575)
    for bad in ("http://x:1", "mllp://:2575", "mllp://h:99999"):
        with pytest.raises(hl7intake.Hl7v2ConfigError):
            listen_address(bad)


def test_cli_hl7v2_source(cli_db: str) -> None:
    runner = CliRunner()
    base = ["sources", "add", "adt", "--kind", "hl7v2"]
    scheduled = runner.invoke(app, [*base, "--url", "mllp://127.0.0.1:2575", "--schedule", "15m"])
    assert scheduled.exit_code == 2 and "push-only" in scheduled.output
    assert runner.invoke(app, [*base, "--url", "http://127.0.0.1:2575"]).exit_code == 2
    zone = runner.invoke(
        app, [*base, "--url", "mllp://127.0.0.1:2575", "--option", "timezone=Mars/Base"]
    )
    assert zone.exit_code == 2 and "time zone" in zone.output
    added = runner.invoke(
        app, [*base, "--url", "mllp://127.0.0.1:2575", "--option", "timezone=America/Chicago"]
    )
    assert added.exit_code == 0, added.output
    synced = runner.invoke(app, ["sync", "adt"])
    assert synced.exit_code == 2 and "askonce mllp" in synced.output
    assert runner.invoke(app, ["mllp", "--source", "nope"]).exit_code == 2


def askonce_env(tmp_path: Path, **settings: str) -> dict[str, str]:
    """The environment of a real ``askonce`` process on the SQLite database of
    :func:`start_askonce_mllp` (``settings``: more variables)."""
    return {
        **os.environ,
        "ASKONCE_DATABASE_URL": f"sqlite:///{tmp_path / 'mllp.db'}",
        "ASKONCE_LOG_LEVEL": "WARNING",
        "PYTHONFAULTHANDLER": "1",
        **settings,
    }


def start_askonce_mllp(
    tmp_path: Path, *options: str, **settings: str
) -> tuple[subprocess.Popen[bytes], int]:
    """A real ``askonce mllp`` process on a new SQLite database, for one hl7v2 source
    ``adt`` (added with ``options``, ``--option`` arguments) on a free loopback port; its
    output in ``stdout``. ``settings``: more environment variables. PYTHONFAULTHANDLER:
    one that does not stop dumps its threads on SIGABRT."""
    env = askonce_env(tmp_path, **settings)
    upgrade(env["ASKONCE_DATABASE_URL"])
    port = free_port()
    add = [sys.executable, "-m", "askonce", "sources", "add", "adt", "--kind", "hl7v2"]
    subprocess.run([*add, "--url", f"mllp://127.0.0.1:{port}", *options], env=env, check=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "askonce", "mllp"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    return process, port


def exchange(connection: socket.socket, text: str) -> bytes:
    """``text`` sent as one MLLP block on a blocking socket; the block that answers it,
    framing included."""
    connection.sendall(b"\x0b" + text.encode() + b"\x1c\r")
    reply = b""
    while not reply.endswith(b"\x1c\r"):
        chunk = connection.recv(4096)
        assert chunk, "connection closed before the ACK"
        reply += chunk
    return reply


def until_listening(process: subprocess.Popen[bytes], attempt: Callable[[], T]) -> T:
    """``attempt()``, tried again while ``process`` is not listening yet (up to 60 s)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            return attempt()
        except OSError:  # refused (ssl.SSLError is an OSError too)
            assert process.poll() is None, process.stdout.read() if process.stdout else ""
            assert time.monotonic() < deadline, "askonce mllp did not start listening"
            time.sleep(0.2)


def _signal_another_thread(pid: int, number: int) -> None:
    """Send signal ``number`` to a thread of process ``pid`` other than its main one
    (tgkill(2)), as the kernel may deliver a signal sent to the process."""
    others = sorted(int(t) for t in os.listdir(f"/proc/{pid}/task") if int(t) != pid)
    assert others, "the listener runs no other thread"
    libc = ctypes.CDLL(None, use_errno=True)
    assert libc.tgkill(pid, others[0], number) == 0, os.strerror(ctypes.get_errno())


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="tgkill(2) and /proc")
@pytest.mark.parametrize("how", ["SIGINT", "SIGTERM", "SIGINT to another thread"])
def test_askonce_mllp_process(tmp_path: Path, how: str) -> None:
    """The real command: a separate process listens, takes a message, ACKs it, and stops
    on SIGINT (Ctrl+C) or SIGTERM (``docker stop``), whichever of its threads the signal
    reaches (the interpreter's own SIGINT handler left the loop asleep when another
    thread took it: a rare hang of this test)."""
    process, port = start_askonce_mllp(tmp_path)
    try:
        address = ("127.0.0.1", port)
        with until_listening(process, lambda: socket.create_connection(address, timeout=30)) as (
            connection
        ):
            reply = exchange(connection, message("A04", pid(), control="P1"))
        assert reply.startswith(b"\x0bMSH|") and b"\rMSA|AA|P1\r" in reply
    finally:
        if how == "SIGINT to another thread":
            _signal_another_thread(process.pid, signal.SIGINT)
        else:
            process.send_signal(getattr(signal, how))
        try:
            output = process.communicate(timeout=30)[0].decode()
        except subprocess.TimeoutExpired:
            process.send_signal(signal.SIGABRT)
            dump = process.communicate(timeout=30)[0].decode()
            pytest.fail(f"askonce mllp did not stop on {how}; its threads:\n{dump}")
    assert process.returncode == 0, output
    assert f"adt: listening on mllp://127.0.0.1:{port}" in output
    assert output.rstrip().endswith("stopped")
