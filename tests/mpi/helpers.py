"""Builders shared by the mpi tests: FHIR Patients, mapped through the real parser."""

from __future__ import annotations

import hashlib
import json
from typing import Any

from sqlalchemy.orm import Session

from fhir_mapping import SourcePatient, parse_patient
from mpi import MatchFeatures, extract_features
from store.models import Source, SourceRecord

SSN = "http://hl7.org/fhir/sid/us-ssn"
PASSPORT = "http://hl7.org/fhir/sid/passport-USA"


def fhir_patient(
    rid: str = "p1",
    *,
    given: str | list[str] | None = "Robert",
    family: str | None = "Oyelaran-Whitfield",
    birth: str | None = "1970-03-14",
    gender: str | None = "male",
    phone: str | None = "(415) 867-5309",
    email: str | None = None,
    line: str | None = "12 Main St",
    city: str | None = "Oakland",
    postal: str | None = "94612",
    ssn: str | None = None,
    passport: str | None = None,
    suffix: str | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Patient", "id": rid}
    name: dict[str, Any] = {}
    if family:
        name["family"] = family
    if given:
        name["given"] = [given] if isinstance(given, str) else given
    if suffix:
        name["suffix"] = [suffix]
    if text:
        name["text"] = text
    if name:
        resource["name"] = [name]
    if birth:
        resource["birthDate"] = birth
    if gender:
        resource["gender"] = gender
    telecom = []
    if phone:
        telecom.append({"system": "phone", "value": phone})
    if email:
        telecom.append({"system": "email", "value": email})
    if telecom:
        resource["telecom"] = telecom
    if line or postal or city:
        address: dict[str, Any] = {"country": "US"}
        if line:
            address["line"] = [line]
        if city:
            address["city"] = city
        if postal:
            address["postalCode"] = postal
        resource["address"] = [address]
    identifiers = []
    if ssn:
        identifiers.append({"system": SSN, "value": ssn})
    if passport:
        identifiers.append({"system": PASSPORT, "value": passport})
    if identifiers:
        resource["identifier"] = identifiers
    return resource


def features(**kwargs: Any) -> MatchFeatures:
    return extract_features(parse_patient(fhir_patient(**kwargs)))


def add_source(session: Session, name: str, trust_rank: int = 50) -> Source:
    source = Source(name=name, kind="ndjson", base_url=f"file:///{name}", trust_rank=trust_rank)
    session.add(source)
    session.flush()
    return source


def add_record(
    session: Session, source: Source, resource: dict[str, Any]
) -> tuple[SourceRecord, SourcePatient]:
    patient = parse_patient(resource)
    raw = json.dumps(resource, sort_keys=True)
    row = SourceRecord(
        source_id=source.id,
        resource_type="Patient",
        resource_id=resource["id"],
        raw=resource,
        normalized=patient.to_dict(),
        content_hash=hashlib.sha256(raw.encode()).hexdigest(),
        status="active",
    )
    session.add(row)
    session.flush()
    return row, patient
