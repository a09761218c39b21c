"""Bulk Data ``$export`` for consumers: kick-off, status, NDJSON files, deletion, resume."""

from __future__ import annotations

import email.utils
import json
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.encounter import Encounter as FhirEncounter
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient as FhirPatient
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page, SourceConfig, build_source
from connectors.source import decode_cursor
from fhir_mapping import search_tokens
from gateway import GatewayState
from gateway.auth import TokenService
from gateway.operations import export as export_ops
from gateway.operations.bundle import SUBSETTED
from gateway.operations.export import (
    EXPORT_DEFINITION,
    PATIENT_EXPORT_DEFINITION,
    ExportSettings,
    run_export,
)
from store import make_engine, make_session_factory
from store.golden import GoldenPatientRepository
from store.models import Audit, ExportFile, ExportJob, SourceRecord
from store.types import utcnow
from sync.pipeline import apply_deletions, ingest_page
from sync.retention import prune_exports
from tests.gateway.conftest import READER_SCOPES, SECRET, LiveGateway
from tests.sync.helpers import add_source
from tests.sync.helpers import encounter as source_encounter
from tests.sync.helpers import patient as source_patient

Headers = dict[str, str]
ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
VALIDATORS = {
    "Patient": FhirPatient,
    "Encounter": FhirEncounter,
    "OperationOutcome": OperationOutcome,
}


class Jobs:
    """How the app hands jobs to a worker in these tests: run at once (small files, so a
    few records make several files), or held until the test runs them."""

    def __init__(self, session_factory: sessionmaker[Session]) -> None:
        self.session_factory = session_factory
        self.settings = ExportSettings(file_resources=2, outbox_retention_days=30)
        self.hold = False
        self.held: list[str] = []

    def __call__(self, job_id: str) -> None:
        if self.hold:
            self.held.append(job_id)
        else:
            self.run(job_id)

    def run(self, job_id: str) -> export_ops.ExportReport:
        return run_export(self.session_factory, job_id, self.settings)


@pytest.fixture
def jobs(state: GatewayState, session_factory: sessionmaker[Session]) -> Jobs:
    runner = Jobs(session_factory)
    state.export_trigger = runner
    state.export = ExportSettings(file_resources=2, max_active=2, outbox_retention_days=30)
    return runner


def kick_off(
    client: TestClient, headers: Headers, path: str = "/fhir/$export", **params: str
) -> str:
    response = client.get(path, params=params, headers={**headers, **ASYNC})
    assert response.status_code == 202, response.text
    OperationOutcome.model_validate(response.json())
    location = response.headers["content-location"]
    assert location.startswith("http://testserver/fhir/bulk-export/")
    return location


def manifest_of(client: TestClient, headers: Headers, location: str) -> dict[str, Any]:
    response = client.get(location, headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/json")
    return dict(response.json())


def lines_of(client: TestClient, headers: Headers, url: str) -> list[dict[str, Any]]:
    response = client.get(url, headers={**headers, "Accept": "application/fhir+ndjson"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/fhir+ndjson"
    assert response.text.endswith("\n")
    return [json.loads(line) for line in response.text.splitlines()]


def exported(
    client: TestClient, headers: Headers, manifest: dict[str, Any], key: str = "output"
) -> dict[str, list[dict[str, Any]]]:
    """Every resource of one manifest list by type, each checked with fhir.resources."""
    out: dict[str, list[dict[str, Any]]] = {}
    for item in manifest[key]:
        resources = lines_of(client, headers, item["url"])
        assert len(resources) == item["count"]
        for resource in resources:
            if key == "deleted":
                Bundle.model_validate(resource)
            else:
                assert resource["resourceType"] == item["type"]
                VALIDATORS[item["type"]].model_validate(resource)
        out.setdefault(item["type"], []).extend(resources)
    return out


def rows(session_factory: sessionmaker[Session], model: Any) -> int:
    """How many rows ``model``'s table holds."""
    with session_factory() as session:
        return int(session.scalar(select(func.count()).select_from(model)) or 0)


@pytest.fixture
def population(
    add_patient: Callable[..., str], add_encounter: Callable[..., int]
) -> dict[str, Any]:
    ids = [add_patient(family=f"Fam{n}", given=f"Giv{n}", mrn=f"MRN-{n}") for n in range(5)]
    encounters = [add_encounter(ids[0]), add_encounter(ids[0]), add_encounter(ids[3])]
    return {"patients": ids, "encounters": encounters}


def test_a_system_export_writes_every_golden_patient_and_encounter(
    client: TestClient,
    headers: Headers,
    jobs: Jobs,
    population: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    location = kick_off(client, headers)
    manifest = manifest_of(client, headers, location)
    assert manifest["request"] == "http://testserver/fhir/$export"
    assert manifest["requiresAccessToken"] is True
    assert manifest["error"] == [] and manifest["deleted"] == []
    assert manifest["transactionTime"].endswith("Z")
    # Files of at most 2 resources, each one type, Patients first.
    assert [f["type"] for f in manifest["output"]] == ["Patient"] * 3 + ["Encounter"] * 2
    assert all(f["count"] <= 2 for f in manifest["output"])
    resources = exported(client, headers, manifest)
    assert sorted(p["id"] for p in resources["Patient"]) == sorted(population["patients"])
    assert sorted(int(e["id"]) for e in resources["Encounter"]) == sorted(population["encounters"])
    subjects = {e["subject"]["reference"] for e in resources["Encounter"]}
    assert subjects == {
        f"Patient/{population['patients'][0]}",
        f"Patient/{population['patients'][3]}",
    }
    # What a read returns is what the export holds.
    first = client.get(f"/fhir/Patient/{population['patients'][1]}", headers=headers).json()
    assert first in resources["Patient"]
    expires = client.get(location, headers=headers).headers["expires"]
    assert email.utils.parsedate_to_datetime(expires) > utcnow()


def test_the_status_is_202_with_progress_until_a_worker_has_written_the_files(
    client: TestClient, headers: Headers, jobs: Jobs, population: dict[str, Any]
) -> None:
    jobs.hold = True
    location = kick_off(client, headers, _type="Patient")
    pending = client.get(location, headers=headers)
    assert pending.status_code == 202
    assert pending.headers["retry-after"] == "2"
    assert pending.headers["x-progress"].startswith("0 resources written")
    assert len(pending.headers["x-progress"]) < 100
    report = jobs.run(jobs.held.pop())
    assert report.claimed and report.status == "completed" and report.resources == 5
    assert len(manifest_of(client, headers, location)["output"]) == 3
    # A second worker handed the same job finds nothing to do.
    assert not jobs.run(location.rsplit("/", 1)[1]).claimed


def test_a_patient_level_post_exports_the_patients_named(
    client: TestClient, headers: Headers, jobs: Jobs, population: dict[str, Any]
) -> None:
    wanted = population["patients"][0]
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "_type", "valueString": "Patient,Encounter"},
            {"name": "_outputFormat", "valueString": "ndjson"},
            {"name": "patient", "valueReference": {"reference": f"Patient/{wanted}"}},
        ],
    }
    response = client.post(
        "/fhir/Patient/$export",
        json=body,
        headers={**headers, **ASYNC, "Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 202, response.text
    manifest = manifest_of(client, headers, response.headers["content-location"])
    assert manifest["request"] == "http://testserver/fhir/Patient/$export"
    resources = exported(client, headers, manifest)
    assert [p["id"] for p in resources["Patient"]] == [wanted]
    assert len(resources["Encounter"]) == 2


def test_a_get_patient_export_exports_the_compartment(
    client: TestClient, headers: Headers, jobs: Jobs, population: dict[str, Any]
) -> None:
    location = kick_off(client, headers, "/fhir/Patient/$export", _type="Encounter")
    resources = exported(client, headers, manifest_of(client, headers, location))
    assert list(resources) == ["Encounter"] and len(resources["Encounter"]) == 3


def test_elements_keep_what_was_asked_and_mark_the_subset(
    client: TestClient, headers: Headers, jobs: Jobs, population: dict[str, Any]
) -> None:
    location = kick_off(client, headers, _elements="Patient.birthDate,period")
    resources = exported(client, headers, manifest_of(client, headers, location))
    for patient in resources["Patient"]:
        assert set(patient) == {"resourceType", "id", "meta", "birthDate"}
        assert SUBSETTED in patient["meta"]["tag"]
    for encounter in resources["Encounter"]:
        # status and class are mandatory: kept whatever _elements says.
        assert set(encounter) == {"resourceType", "id", "meta", "status", "class", "period"}


def test_since_exports_what_changed_and_lists_what_was_deleted(
    client: TestClient,
    headers: Headers,
    jobs: Jobs,
    population: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    # _since is written to the millisecond: the population's own writes must fall in an
    # earlier millisecond than the changes below, or they count as changed too.
    time.sleep(0.002)
    before = utcnow()
    ids = population["patients"]
    with session_factory() as session:
        repo = GoldenPatientRepository(session)
        changed = repo.read(ids[1])
        resource = {**changed.resource, "gender": "other"}
        repo.save(changed, resource, search_tokens(resource))
        gone = repo.read(ids[2])
        repo.save(gone, gone.resource, [], status="deleted")
        merged = repo.read(ids[4])
        repo.save(
            merged,
            merged.resource,
            search_tokens(merged.resource),
            status="merged",
            merged_into=ids[3],
        )
        record = session.scalar(
            select(SourceRecord).where(SourceRecord.resource_type == "Encounter").limit(1)
        )
        assert record is not None
        session.commit()
    with session_factory() as session:
        assert apply_deletions(session, record.source_id, "Encounter", [record.resource_id]) == 1
        session.commit()
    since = before.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    location = kick_off(client, headers, _since=since)
    manifest = manifest_of(client, headers, location)
    resources = exported(client, headers, manifest)
    assert sorted(p["id"] for p in resources["Patient"]) == sorted([ids[1], ids[4]])
    merged_out = next(p for p in resources["Patient"] if p["id"] == ids[4])
    assert merged_out["active"] is False
    assert merged_out["link"][0] == {
        "other": {"reference": f"Patient/{ids[3]}"},
        "type": "replaced-by",
    }
    assert "Encounter" not in resources  # none changed since
    deleted = exported(client, headers, manifest, "deleted")
    urls = sorted(
        entry["request"]["url"]
        for bundles in deleted.values()
        for b in bundles
        for entry in b["entry"]
    )
    encounter_id = urls[0].split("/")[1]
    assert urls == sorted([f"Patient/{ids[2]}", f"Encounter/{encounter_id}"])
    assert all(
        entry["request"]["method"] == "DELETE"
        for bundles in deleted.values()
        for b in bundles
        for entry in b["entry"]
    )
    assert int(encounter_id) in population["encounters"]
    # A _since older than the outbox retention says the Encounter deletions may be incomplete.
    old = kick_off(client, headers, _since="2001-01-01T00:00:00+00:00")
    errors = exported(client, headers, manifest_of(client, headers, old), "error")
    issue = errors["OperationOutcome"][0]["issue"][0]
    assert issue["code"] == "incomplete" and issue["severity"] == "warning"


def test_a_record_changed_during_the_export_is_written_as_it_was_at_the_transaction_time(
    client: TestClient,
    headers: Headers,
    jobs: Jobs,
    population: dict[str, Any],
    session_factory: sessionmaker[Session],
    add_patient: Callable[..., str],
) -> None:
    jobs.hold = True
    location = kick_off(client, headers, _type="Patient")
    target = population["patients"][2]
    with session_factory() as session:
        repo = GoldenPatientRepository(session)
        golden = repo.read(target)
        resource = {**golden.resource, "name": [{"family": "Changed", "given": ["Later"]}]}
        repo.save(golden, resource, search_tokens(resource))
        session.commit()
    late = add_patient(family="Late", given="Comer")
    jobs.run(jobs.held.pop())
    resources = exported(client, headers, manifest_of(client, headers, location))
    by_id = {p["id"]: p for p in resources["Patient"]}
    assert late not in by_id
    assert by_id[target]["name"][0]["family"] == "Fam2"
    assert by_id[target]["meta"]["versionId"] == "1"


def test_an_encounter_attached_after_an_export_is_in_the_next_one_since_then(
    client: TestClient,
    headers: Headers,
    jobs: Jobs,
    population: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    # The Encounter arrives before its Patient: it waits, out of every export.
    source_id = add_source(session_factory)
    with session_factory() as session:
        ingest_page(
            session, source_id, Page("Encounter", [source_encounter("late", "p-late")], "e")
        )
        session.commit()
    first = manifest_of(client, headers, kick_off(client, headers, _type="Encounter"))
    known = {int(e["id"]) for e in exported(client, headers, first).get("Encounter", [])}
    assert known == set(population["encounters"])
    # Its Patient arrives: the Encounter now has a subject, a change since the export.
    with session_factory() as session:
        ingest_page(session, source_id, Page("Patient", [source_patient("p-late")], "p"))
        session.commit()
    since = first["transactionTime"]
    then = manifest_of(client, headers, kick_off(client, headers, _type="Encounter", _since=since))
    [attached] = exported(client, headers, then)["Encounter"]
    assert attached["identifier"][-1]["value"] == "late"
    assert attached["subject"]["reference"].startswith("Patient/")
    assert attached["meta"]["lastUpdated"] > since


def test_a_change_committed_after_the_kick_off_is_in_that_export_or_the_next_one(
    client: TestClient,
    headers: Headers,
    jobs: Jobs,
    population: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    """A sync transaction stamps its changes when it writes them and commits later; an
    export kicked off in between must not place its transactionTime after the stamps of
    changes it cannot see (the next export, _since that time, would skip them too)."""
    target = population["patients"][2]
    writer = session_factory()
    repo = GoldenPatientRepository(writer)
    golden = repo.read(target)
    resource = {**golden.resource, "gender": "other"}
    repo.save(golden, resource, search_tokens(resource))
    writer.flush()  # written and stamped, not committed
    # It commits a moment later (on SQLite the kick-off waits for it: one writer at a time).
    committer = threading.Timer(0.5, writer.commit)
    committer.start()
    try:
        first = manifest_of(client, headers, kick_off(client, headers, _type="Patient"))
    finally:
        committer.join()
        writer.close()
    since = first["transactionTime"]
    then = manifest_of(client, headers, kick_off(client, headers, _type="Patient", _since=since))
    seen = [
        p
        for manifest in (first, then)
        for p in exported(client, headers, manifest).get("Patient", [])
        if p["id"] == target
    ]
    assert seen and seen[-1]["gender"] == "other"


def test_an_interrupted_export_resumes_from_its_last_file_without_loss_or_doubles(
    client: TestClient,
    headers: Headers,
    jobs: Jobs,
    population: dict[str, Any],
    session_factory: sessionmaker[Session],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    jobs.hold = True
    location = kick_off(client, headers)
    job_id = jobs.held.pop()
    real_next = export_ops.next_file
    calls = {"n": 0}

    def dies_on_the_third_file(*args: Any, **kwargs: Any) -> Any:
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt  # not an Exception: like a kill, nothing is cleaned up
        return real_next(*args, **kwargs)

    monkeypatch.setattr(export_ops, "next_file", dies_on_the_third_file)
    with pytest.raises(KeyboardInterrupt):
        jobs.run(job_id)
    monkeypatch.setattr(export_ops, "next_file", real_next)
    assert rows(session_factory, ExportFile) == 2
    # The dead worker's lease still holds: the poll waits, and nothing else takes the job.
    assert client.get(location, headers=headers).status_code == 202
    assert not jobs.run(job_id).claimed
    with session_factory() as session:
        session.execute(update(ExportJob).values(lease_until=utcnow() - timedelta(seconds=1)))
        session.commit()
    jobs.hold = False  # the poll hands the job out again, and it runs to the end
    assert client.get(location, headers=headers).status_code == 202
    resources = exported(client, headers, manifest_of(client, headers, location))
    assert sorted(p["id"] for p in resources["Patient"]) == sorted(population["patients"])
    assert sorted(int(e["id"]) for e in resources["Encounter"]) == sorted(population["encounters"])


def test_a_deleted_job_answers_404_and_its_worker_stops(
    client: TestClient,
    headers: Headers,
    jobs: Jobs,
    population: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    location = kick_off(client, headers)
    file_url = manifest_of(client, headers, location)["output"][0]["url"]
    response = client.delete(location, headers=headers)
    assert response.status_code == 202
    OperationOutcome.model_validate(response.json())
    assert client.get(location, headers=headers).status_code == 404
    assert client.get(file_url, headers=headers).status_code == 404
    assert client.delete(location, headers=headers).status_code == 404
    assert rows(session_factory, ExportFile) == 0
    # Deleted while a worker holds it: the worker's next file finds it gone.
    jobs.hold = True
    running = kick_off(client, headers)
    job_id = jobs.held.pop()
    real_next = export_ops.next_file

    def delete_midway(session: Session, job: ExportJob, settings: ExportSettings) -> Any:
        client.delete(running, headers=headers)
        return real_next(session, job, settings)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_ops, "next_file", delete_midway)
        report = jobs.run(job_id)
    assert report.claimed and report.status == "lost"
    assert rows(session_factory, ExportJob) == rows(session_factory, ExportFile) == 0


def test_only_the_client_that_kicked_off_sees_the_job(
    client: TestClient,
    headers: Headers,
    jobs: Jobs,
    population: dict[str, Any],
    auth_for: Callable[..., Headers],
) -> None:
    location = kick_off(client, headers)
    file_url = manifest_of(client, headers, location)["output"][0]["url"]
    other = auth_for("system/Patient.rs", "system/Encounter.rs", client_id="someone-else")
    for response in (
        client.get(location, headers=other),
        client.get(file_url, headers=other),
        client.delete(location, headers=other),
    ):
        assert response.status_code == 404
        OperationOutcome.model_validate(response.json())
    assert client.get(location).status_code == 401
    assert client.get(file_url).status_code == 401
    assert client.get(location, headers=headers).status_code == 200


def test_scopes_decide_what_is_exported(
    client: TestClient,
    jobs: Jobs,
    population: dict[str, Any],
    auth_for: Callable[..., Headers],
) -> None:
    patients_only = auth_for("system/Patient.rs", client_id="reader")
    location = kick_off(client, patients_only)
    manifest = manifest_of(client, patients_only, location)
    assert {f["type"] for f in manifest["output"]} == {"Patient"}
    refused = client.get(
        "/fhir/$export", params={"_type": "Encounter"}, headers={**patients_only, **ASYNC}
    )
    assert refused.status_code == 403
    read_only = auth_for("system/Patient.r", "system/Encounter.r")
    assert client.get("/fhir/$export", headers={**read_only, **ASYNC}).status_code == 403
    assert client.get("/fhir/$export", headers=ASYNC).status_code == 401
    # The token a status or file request comes with needs the same scopes.
    narrower = auth_for("system/Encounter.rs", client_id="reader")
    assert client.get(location, headers=narrower).status_code == 403


@pytest.mark.parametrize(
    ("params", "extra_headers", "status", "code"),
    [
        ({}, {"Prefer": ""}, 400, "invalid"),
        ({"_outputFormat": "text/csv"}, {}, 400, "not-supported"),
        ({"_since": "2024-01-01"}, {}, 400, "invalid"),
        ({"_since": "yesterday"}, {}, 400, "invalid"),
        ({"_type": "Observation"}, {}, 400, "not-supported"),
        ({"_typeFilter": "Observation?code=1234-5"}, {}, 400, "not-supported"),
        ({"_typeFilter": "Patient"}, {}, 400, "invalid"),
        ({"_typeFilter": "Patient?colour=blue"}, {}, 400, "invalid"),
        ({"_typeFilter": "Patient?_count=5"}, {}, 400, "invalid"),
        ({"_typeFilter": "Encounter?date=yesterday"}, {}, 400, "invalid"),
        ({"includeAssociatedData": "LatestProvenanceResources"}, {}, 400, "not-supported"),
        ({"unknown": "1"}, {}, 400, "not-supported"),
        ({"patient": "Patient/abc"}, {}, 400, "not-supported"),
        ({"_elements": "name.given"}, {}, 400, "invalid"),
        ({}, {"Accept": "application/xml"}, 406, "not-supported"),
    ],
)
def test_a_bad_kick_off_is_an_operation_outcome(
    client: TestClient,
    headers: Headers,
    jobs: Jobs,
    params: dict[str, str],
    extra_headers: Headers,
    status: int,
    code: str,
    session_factory: sessionmaker[Session],
) -> None:
    response = client.get(
        "/fhir/$export", params=params, headers={**headers, **ASYNC, **extra_headers}
    )
    assert response.status_code == status, response.text
    outcome = OperationOutcome.model_validate(response.json())
    assert outcome.issue[0].code == code
    assert rows(session_factory, ExportJob) == 0


def test_a_lenient_kick_off_ignores_what_it_cannot_do_and_says_so(
    client: TestClient, headers: Headers, jobs: Jobs, population: dict[str, Any]
) -> None:
    response = client.get(
        "/fhir/$export",
        params={
            "_type": "Patient,Observation",
            "includeAssociatedData": "LatestProvenanceResources",
        },
        headers={**headers, **ASYNC, "Prefer": "respond-async, handling=lenient"},
    )
    assert response.status_code == 202
    manifest = manifest_of(client, headers, response.headers["content-location"])
    assert {f["type"] for f in manifest["output"]} == {"Patient"}
    errors = exported(client, headers, manifest, "error")["OperationOutcome"]
    texts = sorted(o["issue"][0]["diagnostics"] for o in errors)
    assert len(texts) == 2 and "Observation" in texts[0] + texts[1]


def test_a_since_with_an_unencoded_offset_is_read_as_meant(
    client: TestClient, headers: Headers, jobs: Jobs, population: dict[str, Any]
) -> None:
    # "+" in a query string decodes to a space: the offset is still understood.
    response = client.get(
        "/fhir/$export?_since=2001-01-01T00:00:00+02:00&_type=Patient", headers={**headers, **ASYNC}
    )
    assert response.status_code == 202, response.text
    assert (
        len(
            exported(
                client, headers, manifest_of(client, headers, response.headers["content-location"])
            )["Patient"]
        )
        == 5
    )


def test_a_client_with_too_many_exports_in_progress_is_told_to_wait(
    client: TestClient, headers: Headers, jobs: Jobs
) -> None:
    jobs.hold = True
    kick_off(client, headers)
    kick_off(client, headers)
    response = client.get("/fhir/$export", headers={**headers, **ASYNC})
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) > 0
    assert OperationOutcome.model_validate(response.json()).issue[0].code == "throttled"


def test_a_failed_export_answers_500_and_an_expired_one_404_then_is_pruned(
    client: TestClient,
    headers: Headers,
    jobs: Jobs,
    population: dict[str, Any],
    session_factory: sessionmaker[Session],
    caplog: pytest.LogCaptureFixture,
) -> None:
    def broken(*_args: Any, **_kwargs: Any) -> Any:
        raise RuntimeError("Fam0 Giv0 MRN-0")  # an error whose text quotes patient data

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(export_ops, "next_file", broken)
        failed = kick_off(client, headers)
    response = client.get(failed, headers=headers)
    assert response.status_code == 500
    outcome = OperationOutcome.model_validate(response.json())
    assert "RuntimeError" in (outcome.issue[0].diagnostics or "")
    assert "Fam0" not in response.text and "Fam0" not in caplog.text
    done = kick_off(client, headers)
    file_url = manifest_of(client, headers, done)["output"][0]["url"]
    with session_factory() as session:
        session.execute(update(ExportJob).values(expires_at=utcnow() - timedelta(seconds=1)))
        session.commit()
    assert client.get(done, headers=headers).status_code == 404
    assert client.get(file_url, headers=headers).status_code == 404
    with session_factory() as session:
        assert prune_exports(session, utcnow()) == 2
        session.commit()
    assert rows(session_factory, ExportFile) == 0


def test_kick_offs_and_downloads_are_audited_without_patient_data(
    client: TestClient,
    headers: Headers,
    jobs: Jobs,
    population: dict[str, Any],
    session_factory: sessionmaker[Session],
) -> None:
    location = kick_off(client, headers, _type="Patient")
    job_id = location.rsplit("/", 1)[1]
    for item in manifest_of(client, headers, location)["output"]:
        lines_of(client, headers, item["url"])
    client.app.state.audit.flush()  # type: ignore[attr-defined]
    with session_factory() as session:
        rows = session.scalars(select(Audit).order_by(Audit.id)).all()
    kick = [r for r in rows if r.action == "export"]
    assert len(kick) == 1 and kick[0].outcome == 200
    assert kick[0].detail == {"job": job_id, "types": ["Patient"], "level": "system"}
    files = [r for r in rows if r.action == "export-file"]
    assert [r.resource_id for r in files] == [job_id] * 3
    assert sum(r.detail["count"] for r in files) == 5
    assert "Fam" not in json.dumps([r.detail for r in rows])


def test_the_capability_statement_declares_bulk_export(client: TestClient) -> None:
    statement = client.get("/fhir/metadata").json()
    assert (
        "http://hl7.org/fhir/uv/bulkdata/CapabilityStatement/bulk-data" in statement["instantiates"]
    )
    rest = statement["rest"][0]
    assert {"name": "export", "definition": EXPORT_DEFINITION} in rest["operation"]
    patient = next(r for r in rest["resource"] if r["type"] == "Patient")
    assert {"name": "export", "definition": PATIENT_EXPORT_DEFINITION} in patient["operation"]


@pytest.mark.postgres
@pytest.mark.slow
def test_our_bulk_connector_reads_the_export_over_http(
    live_gateway: LiveGateway, pg_url: str
) -> None:
    """Another askonce (or anyone's Bulk Data client) syncing from this one: the kick-off,
    the polls, the files, the transactionTime cursor and the job's deletion, over HTTP."""
    token = TokenService(SECRET).issue("peer-askonce", list(READER_SCOPES))
    config = SourceConfig(
        kind="bulk",
        base_url=f"{live_gateway.base}/fhir",
        auth={"kind": "bearer", "token": token},
        options={"page_size": 10, "poll_interval_s": 0.1},
    )
    source = build_source(config)
    pages = list(source.stream("Patient"))
    ids = [r["id"] for page in pages for r in page.resources]
    assert sorted(ids) == sorted(live_gateway.golden_ids)
    assert [len(page.resources) for page in pages] == [10, 10, 3, 0]
    assert decode_cursor(pages[-1].cursor).since is not None
    encounters = [r for page in source.stream("Encounter") for r in page.resources]
    assert sorted(int(e["id"]) for e in encounters) == sorted(live_gateway.encounter_ids)
    # The connector deletes each job once read: nothing is left on the server.
    engine = make_engine(pg_url)
    try:
        assert rows(make_session_factory(engine), ExportJob) == 0
    finally:
        engine.dispose()


def test_a_file_download_is_gzip_encoded_or_resumes_with_a_range(
    client: TestClient, headers: Headers, jobs: Jobs, population: dict[str, Any]
) -> None:
    location = kick_off(client, headers, _type="Patient")
    url = manifest_of(client, headers, location)["output"][0]["url"]
    # Stored gzip-compressed, and sent so to a client that accepts it (httpx does).
    packed = client.get(url, headers=headers)
    assert packed.headers["content-encoding"] == "gzip"
    whole = client.get(url, headers={**headers, "Accept-Encoding": "identity"})
    assert "content-encoding" not in whole.headers
    assert whole.headers["accept-ranges"] == "bytes"
    assert whole.content == packed.content
    size = len(whole.content)
    part = client.get(url, headers={**headers, "Range": "bytes=10-"})
    assert part.status_code == 206
    assert part.content == whole.content[10:]
    assert part.headers["content-range"] == f"bytes 10-{size - 1}/{size}"
    beyond = client.get(url, headers={**headers, "Range": f"bytes={size}-"})
    assert beyond.status_code == 416
    assert beyond.headers["content-range"] == f"bytes */{size}"
    OperationOutcome.model_validate(beyond.json())


def test_type_filters_export_what_their_searches_find(
    client: TestClient, headers: Headers, jobs: Jobs, population: dict[str, Any]
) -> None:
    ids = population["patients"]
    # Comma-separated queries (a type's are ORed); a comma inside one is sent encoded.
    filters = f"Patient?family=Fam1,Patient?family=Fam3%2CFam4,Encounter?patient={ids[3]}"
    location = kick_off(client, headers, _typeFilter=filters)
    resources = exported(client, headers, manifest_of(client, headers, location))
    assert sorted(p["id"] for p in resources["Patient"]) == sorted([ids[1], ids[3], ids[4]])
    assert [e["subject"]["reference"] for e in resources["Encounter"]] == [f"Patient/{ids[3]}"]
    # A filter on a type that is not exported changes nothing.
    only = kick_off(client, headers, _type="Encounter", _typeFilter="Patient?family=Fam1")
    assert len(exported(client, headers, manifest_of(client, headers, only))["Encounter"]) == 3


def test_type_filters_chain_and_reverse_chain_with_the_scopes_a_search_needs(
    client: TestClient,
    headers: Headers,
    auth_for: Callable[..., Headers],
    jobs: Jobs,
    population: dict[str, Any],
) -> None:
    """``Patient?_has:Encounter:…`` exports the people with such encounters, and
    ``Encounter?patient.…`` the encounters of such people; each reads the other type, so
    the caller needs its search scope, as the search itself would."""
    ids = population["patients"]
    location = kick_off(
        client,
        headers,
        _typeFilter="Patient?_has:Encounter:patient:class=AMB,Encounter?patient.family=Fam3",
    )
    resources = exported(client, headers, manifest_of(client, headers, location))
    assert sorted(p["id"] for p in resources["Patient"]) == sorted([ids[0], ids[3]])
    assert [e["subject"]["reference"] for e in resources["Encounter"]] == [f"Patient/{ids[3]}"]
    encounters_only = auth_for("system/Encounter.rs")
    refused = client.get(
        "/fhir/$export",
        params={"_type": "Encounter", "_typeFilter": "Encounter?patient.family=Fam3"},
        headers={**encounters_only, **ASYNC},
    )
    assert refused.status_code == 403, refused.text
    assert "system/Patient.s" in refused.json()["issue"][0]["diagnostics"]
    kick_off(client, encounters_only, _type="Encounter", _typeFilter="Encounter?status=finished")
