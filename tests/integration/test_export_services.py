"""Services mode: a Bulk Data ``$export`` kicked off on the API runs on a real worker (real
Redis and PostgreSQL), and the client reads the files the worker wrote through the API."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from askonce.runtime import Runtime
from gateway.auth import TokenService
from store.models import ExportJob, GoldenPatient
from sync.tasks import run_source
from tests.integration.conftest import Worker, latest_run, wait_for
from tests.sync.helpers import add_source, encounter, patient, write_ndjson

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

TASK_TIMEOUT_S = 120
PEOPLE = 30


def test_a_worker_writes_the_export_the_api_kicked_off(
    services: Runtime, worker: Worker, pg_sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient(f"p{n}", f"Fam{n}", f"Giv{n}") for n in range(PEOPLE)])
    write_ndjson(folder, "Encounter", [encounter(f"e{n}", f"p{n}") for n in range(PEOPLE)])
    source_id = add_source(pg_sessions, base_url=str(folder))
    run_source.apply_async(kwargs={"source_id": source_id}, queue=services.settings.task_queue)

    def synced() -> bool:
        run = latest_run(pg_sessions, source_id)
        return run is not None and run.status == "ok"

    wait_for(synced, timeout_s=TASK_TIMEOUT_S, what="the source's run", log=worker.log_path)
    with pg_sessions() as session:
        goldens = set(
            session.scalars(
                select(GoldenPatient.id).where(GoldenPatient.status.in_(("active", "merged")))
            )
        )
    assert goldens

    token = TokenService(services.settings.secret_key.get_secret_value()).issue(
        "warehouse", ["system/Patient.rs", "system/Encounter.rs"]
    )
    headers = {"Authorization": f"Bearer {token}"}
    with TestClient(services.create_app(), base_url="http://testserver") as client:
        kicked = client.get("/fhir/$export", headers={**headers, "Prefer": "respond-async"})
        assert kicked.status_code == 202, kicked.text
        location = kicked.headers["content-location"]
        deadline = time.monotonic() + TASK_TIMEOUT_S
        status = client.get(location, headers=headers)
        while status.status_code == 202 and time.monotonic() < deadline:
            time.sleep(0.2)
            status = client.get(location, headers=headers)
        assert status.status_code == 200, worker.log_path.read_text()[-3000:]
        manifest = status.json()
        resources: dict[str, list[dict[str, object]]] = {}
        for item in manifest["output"]:
            body = client.get(item["url"], headers=headers)
            assert body.status_code == 200
            lines = [json.loads(line) for line in body.text.splitlines()]
            assert len(lines) == item["count"]
            resources.setdefault(item["type"], []).extend(lines)
    assert {p["id"] for p in resources["Patient"]} == goldens
    assert len(resources["Encounter"]) == PEOPLE
    subjects = {e["subject"]["reference"] for e in resources["Encounter"]}  # type: ignore[index]
    assert subjects <= {f"Patient/{g}" for g in goldens}
    with pg_sessions() as session:
        job = session.scalar(select(ExportJob))
        assert job is not None and job.status == "completed" and job.owner is None
