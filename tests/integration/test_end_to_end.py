"""Three EHRs (sekmet-fhir servers) with overlapping people, synced by a real Celery worker
on real Redis and PostgreSQL, into golden records with their encounters."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from askonce.runtime import Runtime
from store import SourceRepository
from store.models import Encounter, GoldenPatient, Link, Outbox, SourceRecord
from sync.tasks import run_source
from tests.integration.conftest import Worker, latest_run, wait_for

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.sekmet, pytest.mark.slow]

RUN_TIMEOUT_S = 180
SSN = "http://hl7.org/fhir/sid/us-ssn"

#: person -> demographics; each EHR writes them its own way (see ``_patient``).
PEOPLE: dict[str, dict[str, Any]] = {
    "okafor": {
        "family": "Okafor",
        "given": "Ngozi",
        "birth": "1975-06-01",
        "gender": "female",
        "phone": "+1 415 555 0101",
        "ssn": "523-45-6789",
        "line": "12 Mission St",
        "postal": "94105",
        "city": "San Francisco",
    },
    "kazlauskas": {
        "family": "Kazlauskas",
        "given": "Tomas",
        "birth": "1988-11-23",
        "gender": "male",
        "phone": "+1 617 555 0142",
        "ssn": "531-22-9087",
        "line": "400 Boylston St",
        "postal": "02116",
        "city": "Boston",
    },
    "tran": {
        "family": "Tran",
        "given": "Linh",
        "birth": "1992-02-14",
        "gender": "female",
        "phone": "+1 206 555 0177",
        "ssn": "540-19-3321",
        "line": "9 Pike St",
        "postal": "98101",
        "city": "Seattle",
    },
    "miller": {
        "family": "Miller",
        "given": "Robert",
        "birth": "1960-01-30",
        "gender": "male",
        "phone": "+1 312 555 0199",
        "ssn": "555-88-1234",
        "line": "77 Wacker Dr",
        "postal": "60601",
        "city": "Chicago",
    },
}
#: Which EHR knows whom: Okafor is in all three, Kazlauskas in two.
HOLDINGS = {
    "ehr-1": ["okafor", "kazlauskas", "miller"],
    "ehr-2": ["okafor", "kazlauskas"],
    "ehr-3": ["okafor", "tran"],
}


def _patient(ehr: str, person: str, full_url: str) -> dict[str, Any]:
    p = PEOPLE[person]
    phone = p["phone"] if ehr != "ehr-2" else "(" + p["phone"][3:6] + ") " + p["phone"][7:]
    resource: dict[str, Any] = {
        "resourceType": "Patient",
        "fullUrl": full_url,
        "identifier": [
            {"system": f"http://{ehr}.example.org/mrn", "value": f"{ehr}-{person}"},
            {"system": SSN, "value": p["ssn"]},
        ],
        "name": [{"family": p["family"], "given": [p["given"]]}],
        "gender": p["gender"],
        "birthDate": p["birth"],
        "telecom": [{"system": "phone", "value": phone, "use": "home"}],
        "address": [
            {"line": [p["line"]], "city": p["city"], "postalCode": p["postal"], "country": "US"}
        ],
    }
    return resource


def _encounter(full_url: str, day: int) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": full_url},
        "period": {"start": f"2025-05-{day:02d}T09:00:00Z", "end": f"2025-05-{day:02d}T10:00:00Z"},
    }


def _sync_all(
    services: Runtime, sessions: sessionmaker[Session], ids: list[int], worker: Worker
) -> None:
    before = {
        sid: (latest_run(sessions, sid).id if latest_run(sessions, sid) else 0) for sid in ids
    }
    for source_id in ids:
        run_source.apply_async(kwargs={"source_id": source_id}, queue=services.settings.task_queue)

    def done() -> bool:
        for sid in ids:
            run = latest_run(sessions, sid)
            if run is None or run.id == before[sid] or run.status == "running":
                return False
        return True

    wait_for(done, timeout_s=RUN_TIMEOUT_S, what="three source runs", log=worker.log_path)
    for sid in ids:
        run = latest_run(sessions, sid)
        assert run is not None and run.status == "ok", (run.status, run.detail) if run else None


def test_three_ehrs_become_golden_people_with_encounters_and_updates_flow_through(
    services: Runtime,
    worker: Worker,
    pg_sessions: sessionmaker[Session],
    sekmet_factory: Any,
) -> None:
    servers = {name: sekmet_factory() for name in HOLDINGS}
    stored: dict[str, dict[str, dict[str, Any]]] = {}
    for ehr, people in HOLDINGS.items():
        resources: list[dict[str, Any]] = []
        for day, person in enumerate(people, start=1):
            full_url = f"urn:uuid:{uuid.uuid4()}"
            resources += [_patient(ehr, person, full_url), _encounter(full_url, day)]
        created = servers[ehr].seed(resources)
        stored[ehr] = {
            person: next(
                r
                for r in created
                if r["resourceType"] == "Patient"
                and r["identifier"][0]["value"] == f"{ehr}-{person}"
            )
            for person in people
        }
    ids: list[int] = []
    with pg_sessions() as session:
        for ehr, server in servers.items():
            ids.append(
                SourceRepository(session)
                .add(
                    name=ehr, kind="fhir", base_url=server.base_url, config={"requests_per_s": None}
                )
                .id
            )
        session.commit()
    _sync_all(services, pg_sessions, ids, worker)

    with pg_sessions() as session:
        golden_of: dict[tuple[str, str], str] = {}
        for ehr, people in stored.items():
            for person, resource in people.items():
                golden_of[(ehr, person)] = session.scalar(
                    select(Link.golden_id)
                    .join(SourceRecord, SourceRecord.id == Link.source_record_id)
                    .where(
                        SourceRecord.resource_id == resource["id"],
                        SourceRecord.resource_type == "Patient",
                    )
                    .where(SourceRecord.source_id == ids[list(servers).index(ehr)])
                )
        by_person: dict[str, set[str]] = {}
        for (_, person), golden in golden_of.items():
            by_person.setdefault(person, set()).add(golden)
        # One golden record per real person, and different people never share one.
        assert all(len(goldens) == 1 for goldens in by_person.values()), by_person
        assert len({next(iter(g)) for g in by_person.values()}) == len(PEOPLE)
        active = session.scalar(
            select(func.count()).select_from(GoldenPatient).where(GoldenPatient.status == "active")
        )
        assert active == len(PEOPLE)
        # Every encounter is attached to its person's golden record.
        encounters = session.scalars(select(Encounter)).all()
        assert len(encounters) == sum(len(p) for p in HOLDINGS.values())
        assert all(e.golden_id is not None for e in encounters)
        for enc in encounters:
            ehr = list(servers)[ids.index(enc.source_id)]
            person = next(p for p, r in stored[ehr].items() if r["id"] == enc.patient_resource_id)
            assert enc.golden_id == golden_of[(ehr, person)]
        last_event = session.scalar(select(func.max(Outbox.id))) or 0

    # Kazlauskas gets a new mobile number in EHR 2; the next sync carries it to his golden record.
    changed = dict(stored["ehr-2"]["kazlauskas"])
    changed["telecom"] = [
        *changed["telecom"],
        {"system": "phone", "value": "+1 617 555 0999", "use": "mobile"},
    ]
    servers["ehr-2"].update(changed)
    _sync_all(services, pg_sessions, ids, worker)
    golden_id = golden_of[("ehr-2", "kazlauskas")]
    with pg_sessions() as session:
        golden = session.get(GoldenPatient, golden_id)
        assert golden is not None
        phones = [t.get("value", "") for t in golden.resource.get("telecom", [])]
        assert any("555" in p and "0999" in p.replace(" ", "").replace("-", "") for p in phones), (
            phones
        )
        events = session.scalars(
            select(Outbox.event_type).where(
                Outbox.id > last_event, Outbox.aggregate_id == golden_id
            )
        ).all()
        assert "patient.updated" in events
