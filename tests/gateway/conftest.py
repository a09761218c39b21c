"""Gateway fixtures: an app on the migrated test database, tokens, golden records."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any

import httpx
import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session, sessionmaker

from fhir_mapping import parse_patient, search_tokens
from gateway import GatewayState, create_app
from gateway.auth import TokenService, register_consumer
from gateway.operations.export import run_export
from mpi import resolve_patients
from store import make_engine, make_session_factory
from store.golden import GoldenPatientRepository
from store.models import Encounter, GoldenPatientVersion, Source, SourceRecord
from tests.sekmet_server import free_port

SECRET = "gateway-test-secret-" + "y" * 32
READER_SCOPES = ["system/Patient.rs", "system/Encounter.rs"]
MRN = "urn:oid:1.2.36.146.595.217.0.1"


def fhir_get(
    client: TestClient, headers: dict[str, str], url: str, status: int = 200
) -> dict[str, Any]:
    """The JSON answer of ``GET url``, which must have ``status``."""
    reply = client.get(url, headers=headers)
    assert reply.status_code == status, reply.text
    body: dict[str, Any] = reply.json()
    return body


def set_recorded(factory: sessionmaker[Session], at: dict[tuple[str, int], str]) -> None:
    """Set the time of chosen versions: {(golden id, version): ISO instant, UTC}."""
    with factory() as session:
        for (golden_id, version), when in at.items():
            session.execute(
                update(GoldenPatientVersion)
                .where(GoldenPatientVersion.golden_id == golden_id)
                .where(GoldenPatientVersion.version == version)
                .values(recorded_at=datetime.fromisoformat(when).replace(tzinfo=UTC))
            )
        session.commit()


def patient_resource(
    family: str = "Nguyen",
    given: str = "Anh",
    birth_date: str = "1980-03-14",
    gender: str = "female",
    mrn: str | None = None,
    phone: str | None = "+1 415 555 0101",
    email: str | None = None,
    postal: str | None = "94110",
) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "active": True,
        "name": [{"family": family, "given": [given]}],
        "birthDate": birth_date,
        "gender": gender,
        "identifier": [{"system": MRN, "value": mrn or uuid.uuid4().hex[:10]}],
    }
    telecom = []
    if phone:
        telecom.append({"system": "phone", "value": phone})
    if email:
        telecom.append({"system": "email", "value": email})
    if telecom:
        resource["telecom"] = telecom
    if postal:
        resource["address"] = [{"postalCode": postal, "city": "San Francisco"}]
    return resource


@pytest.fixture
def state(session_factory: sessionmaker[Session]) -> GatewayState:
    return GatewayState(
        engine=session_factory.kw["bind"],
        session_factory=session_factory,
        secret_key=SECRET,
        max_body_bytes=64 * 1024,
        default_page_size=5,
        max_page_size=50,
    )


@pytest.fixture
def client(state: GatewayState) -> Iterator[TestClient]:
    with TestClient(create_app(state), base_url="http://testserver") as test_client:
        yield test_client


@pytest.fixture
def tokens() -> TokenService:
    return TokenService(SECRET)


@pytest.fixture
def headers(tokens: TokenService) -> dict[str, str]:
    return {"Authorization": f"Bearer {tokens.issue('reader', READER_SCOPES)}"}


@pytest.fixture
def auth_for(tokens: TokenService) -> Callable[..., dict[str, str]]:
    def make(*scopes: str, client_id: str = "tester") -> dict[str, str]:
        return {"Authorization": f"Bearer {tokens.issue(client_id, list(scopes))}"}

    return make


@pytest.fixture
def add_patient(session_factory: sessionmaker[Session]) -> Callable[..., str]:
    def add(resource: dict[str, Any] | None = None, **fields: Any) -> str:
        resource = resource or patient_resource(**fields)
        with session_factory() as session:
            golden = GoldenPatientRepository(session).create(resource, search_tokens(resource))
            session.commit()
            return golden.id

    return add


@pytest.fixture
def add_encounter(session_factory: sessionmaker[Session]) -> Callable[..., int]:
    counter = iter(range(1, 1_000_000))

    def add(
        golden_id: str,
        *,
        start: str | None = "2024-05-01T09:00:00+00:00",
        end: str | None = "2024-05-01T10:00:00+00:00",
        status: str = "finished",
        class_code: str = "AMB",
        source_name: str = "ehr-a",
        **elements: Any,
    ) -> int:
        """``elements``: more of the Encounter resource (identifier, type…)."""
        n = next(counter)
        with session_factory() as session:
            source = session.query(Source).filter_by(name=source_name).one_or_none()
            if source is None:
                source = Source(name=source_name, kind="fhir", base_url="http://ehr.invalid")
                session.add(source)
                session.flush()
            rid = f"enc-{uuid.uuid4().hex[:8]}-{n}"
            record = SourceRecord(
                source_id=source.id, resource_type="Encounter", resource_id=rid, status="active"
            )
            session.add(record)
            session.flush()
            resource = {
                "resourceType": "Encounter",
                "id": rid,
                "status": status,
                "class": {
                    "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                    "code": class_code,
                },
                "subject": {"reference": "Patient/source-patient-1"},
                **({"period": {"start": start, **({"end": end} if end else {})}} if start else {}),
                **elements,
            }
            row = Encounter(
                source_record_id=record.id,
                source_id=source.id,
                patient_resource_id="source-patient-1",
                golden_id=golden_id,
                status=status,
                class_code=class_code,
                period_start=datetime.fromisoformat(start) if start else None,
                period_end=datetime.fromisoformat(end) if end else None,
                resource=resource,
                last_updated=datetime.now(UTC),
            )
            session.add(row)
            session.commit()
            return row.id

    return add


@dataclass
class LiveGateway:
    """A gateway served by uvicorn on a loopback port, over a seeded database."""

    base: str
    token: str
    golden_ids: list[str]
    everything_id: str
    encounter_ids: list[int]


#: Seconds a live server may take to start or stop.
LIVE_TIMEOUT_S = 15.0
LIVE_PATIENTS = 23


@contextmanager
def serve_in_thread(app: Any, port: int) -> Iterator[None]:
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="live-gateway", daemon=True)
    thread.start()
    deadline = time.monotonic() + LIVE_TIMEOUT_S
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the gateway did not start")
        time.sleep(0.05)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(LIVE_TIMEOUT_S)


@pytest.fixture(scope="module")
def live_gateway(pg_url: str) -> Iterator[LiveGateway]:
    """On PostgreSQL: 23 golden Patients named Live, one with 3 encounters; a real token."""
    from tests.conftest import truncate_all

    engine = make_engine(pg_url)
    truncate_all(engine)
    factory = make_session_factory(engine)
    with factory() as session:
        source = Source(name="ehr-live", kind="fhir", base_url="http://ehr.invalid")
        session.add(source)
        session.flush()
        # Golden records made by the real mpi engine, as sync would make them.
        items = []
        for i in range(LIVE_PATIENTS):
            resource = live_person(i)
            patient = parse_patient(resource)
            record = SourceRecord(
                source_id=source.id,
                resource_type="Patient",
                resource_id=resource["id"],
                raw=resource,
                normalized=patient.to_dict(),
            )
            session.add(record)
            session.flush()
            items.append((record, patient))
        ids = [r.golden_id for r in resolve_patients(session, items)]
        assert len(set(ids)) == LIVE_PATIENTS
        encounter_ids = []
        for n in range(3):
            record = SourceRecord(
                source_id=source.id, resource_type="Encounter", resource_id=f"e{n}"
            )
            session.add(record)
            session.flush()
            row = Encounter(
                source_record_id=record.id,
                source_id=source.id,
                golden_id=ids[0],
                status="finished",
                class_code="AMB",
                period_start=datetime(2024, 1, 1 + n, tzinfo=UTC),
                resource={
                    "resourceType": "Encounter",
                    "id": f"e{n}",
                    "status": "finished",
                    "class": {"code": "AMB"},
                },
            )
            session.add(row)
            session.flush()
            encounter_ids.append(row.id)
        creds = register_consumer(session, "live-crm", "crm", [*READER_SCOPES])
        session.commit()
    state = GatewayState(
        engine=engine,
        session_factory=factory,
        secret_key=SECRET,
        export_trigger=partial(export_now, factory),
    )
    port = free_port()
    with serve_in_thread(create_app(state), port):
        base = f"http://127.0.0.1:{port}"
        reply = httpx.post(
            f"{base}/auth/token",
            data={"grant_type": "client_credentials"},
            auth=(creds.client_id, creds.client_secret),
        )
        reply.raise_for_status()
        yield LiveGateway(base, reply.json()["access_token"], ids, ids[0], encounter_ids)
    truncate_all(engine)
    engine.dispose()


def export_now(factory: sessionmaker[Session], job_id: str) -> None:
    """Write an export's files in this process (no task queue in these tests)."""
    run_export(factory, job_id)


def live_person(i: int) -> dict[str, Any]:
    """The i-th seeded person: family Live, everything else distinct from the others."""
    return {
        "resourceType": "Patient",
        "id": f"live-{i}",
        "name": [{"family": "Live", "given": [GIVEN_NAMES[i % len(GIVEN_NAMES)] + f"{i}"]}],
        "birthDate": f"{1940 + i * 2}-0{1 + i % 9}-1{i % 10}",
        "gender": "female" if i % 2 else "male",
        "identifier": [
            {"system": MRN, "value": f"LIVE-{i}"},
            {"system": "http://hl7.org/fhir/sid/us-ssn", "value": f"{400 + i}-{10 + i}-{2000 + i}"},
        ],
        "telecom": [{"system": "phone", "value": f"+1 415 555 {1000 + i * 37:04d}"}],
        "address": [
            {"line": [f"{i + 1} Oak St"], "postalCode": f"{94000 + i * 11}", "country": "US"}
        ],
    }


GIVEN_NAMES = ["Ada", "Bo", "Cyd", "Dov", "Eli", "Fay", "Gus", "Hal", "Ivo", "Jan", "Kai", "Lev"]
