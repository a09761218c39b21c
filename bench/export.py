"""Bulk Data ``$export`` benchmark: every golden Patient and Encounter, as NDJSON files.

``python -m bench.export [--patients N] [--backend postgresql]`` loads N golden records
(each with a stored version, as sync writes them) and 3N Encounters into a fresh
database, then times, in one process:

- the export a consumer kicks off (``gateway.operations.export.run_export``: the
  keyset reads, the rendering and the file writes, one transaction per file of
  ``--file-resources``), and the process's resident memory while it runs;
- the download of every file through the real gateway (``TestClient``: auth, audit);
- an export with ``_since`` after 1% of the golden records changed.

The data is loaded by a child process, so that this one's memory is the export's. The
last line is JSON: ``resources_per_s``, ``export_s``, ``files``, ``mb`` (the NDJSON),
``stored_mb`` (the files as kept, gzip-compressed),
``download_mb_per_s``, ``since_export_s``, ``since_resources``, ``rss_before_export_mb``,
``export_rss_mb`` (the largest resident memory seen during the export) and ``backend``.
``export_rss_mb`` stays about the same from 25k to 100k Patients: a file is built,
written and dropped.
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing
import random
import tempfile
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import func, insert, select, update

from bench.api import synthetic_patient
from bench.ingest import DEFAULT_PG_ADMIN_URL, database_url, rss_mb
from gateway import GatewayState, create_app
from gateway.auth import TokenService
from gateway.operations.export import ExportSettings, run_export
from store import make_engine, make_session_factory, unit_of_work
from store.db import stop_checkpointers
from store.models import Encounter, ExportFile, ExportJob, GoldenPatient, GoldenPatientVersion
from store.types import utcnow

DEFAULT_PATIENTS = 25_000
ENCOUNTERS_PER_PATIENT = 3
LOAD_CHUNK = 5000
SECRET = "bench-export-secret-" + "e" * 32
SCOPES = ["system/Patient.rs", "system/Encounter.rs"]


def golden(i: int, rng: random.Random, stamp: str) -> dict[str, Any]:
    """bench.api's synthetic golden Patient, with an id and a version."""
    resource = synthetic_patient(i, rng)
    resource["id"] = str(uuid.UUID(int=rng.getrandbits(128), version=4))
    resource["meta"] = {"versionId": "1", "lastUpdated": stamp}
    return resource


def load(url: str, patients: int) -> list[str]:
    """``patients`` golden records with their versions, and 3 Encounters each; every
    100th golden id (the ones the ``_since`` export finds changed)."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    rng = random.Random(11)
    now = utcnow()
    stamp = now.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    ids: list[str] = []
    record = 0
    for start in range(0, patients, LOAD_CHUNK):
        goldens, versions, encounters = [], [], []
        for i in range(start, min(start + LOAD_CHUNK, patients)):
            resource = golden(i, rng, stamp)
            if i % 100 == 0:
                ids.append(resource["id"])
            goldens.append(
                {
                    "id": resource["id"],
                    "version": 1,
                    "resource": resource,
                    "status": "active",
                    "birth_date": resource["birthDate"],
                    "gender": resource["gender"],
                    "created_at": now,
                    "last_updated": now,
                }
            )
            versions.append(
                {
                    "golden_id": resource["id"],
                    "version": 1,
                    "resource": resource,
                    "status": "active",
                    "recorded_at": now,
                }
            )
            for n in range(ENCOUNTERS_PER_PATIENT):
                record += 1
                day = now - timedelta(days=rng.randint(1, 3650))
                encounters.append(
                    {
                        "source_record_id": record,
                        "source_id": 1 + i % 3,
                        "patient_resource_id": f"p{i}",
                        "golden_id": resource["id"],
                        "status": "finished",
                        "class_code": "AMB",
                        "period_start": day,
                        "period_end": day + timedelta(hours=1),
                        "resource": {
                            "resourceType": "Encounter",
                            "id": f"e{i}-{n}",
                            "status": "finished",
                            "class": {
                                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                                "code": "AMB",
                            },
                            "subject": {"reference": f"Patient/p{i}"},
                            "period": {"start": day.isoformat(), "end": day.isoformat()},
                        },
                        "last_updated": now,
                    }
                )
        with unit_of_work(sessions) as session:
            session.execute(insert(GoldenPatient), goldens)
            session.execute(insert(GoldenPatientVersion), versions)
            session.execute(insert(Encounter), encounters)
    engine.dispose()
    return ids


def _load_into(url: str, patients: int, out: Any) -> None:
    out.put(load(url, patients))


def load_elsewhere(url: str, patients: int) -> list[str]:
    """:func:`load` in a child process, so that this one's memory is the export's alone."""
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    child = context.Process(target=_load_into, args=(url, patients, queue))
    child.start()
    ids: list[str] = queue.get()
    child.join()
    return ids


class RssWatch:
    """The largest resident memory seen while the block runs (sampled every 20 ms)."""

    def __init__(self) -> None:
        self.peak = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb()[0])

    def __enter__(self) -> RssWatch:
        self.peak = rss_mb()[0]
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def kick_off(client: TestClient, headers: dict[str, str], query: str) -> str:
    response = client.get(f"/fhir/$export{query}", headers={**headers, "Prefer": "respond-async"})
    assert response.status_code == 202, response.text
    return str(response.headers["content-location"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--file-resources", type=int, default=10_000)
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    settings = ExportSettings(file_resources=args.file_resources)
    with tempfile.TemporaryDirectory() as tmp:
        url, cleanup = database_url(args.backend, args.pg_admin_url, Path(tmp))
        try:
            started = time.perf_counter()
            changed = load_elsewhere(url, args.patients)
            print(f"loaded {args.patients} golden records in {time.perf_counter() - started:.1f} s")
            engine = make_engine(url)
            sessions = make_session_factory(engine)
            jobs: list[str] = []
            state = GatewayState(
                engine=engine,
                session_factory=sessions,
                secret_key=SECRET,
                export=settings,
                export_trigger=jobs.append,
            )
            token = TokenService(SECRET).issue("bench", SCOPES)
            headers = {"Authorization": f"Bearer {token}"}
            with TestClient(create_app(state), base_url="http://bench") as client:
                location = kick_off(client, headers, "")
                rss_before = rss_mb()[0]
                with RssWatch() as watch:
                    started = time.perf_counter()
                    report = run_export(sessions, jobs.pop(), settings)
                    export_s = time.perf_counter() - started
                print(
                    f"export: {report.resources} resources in {report.files} files, "
                    f"{export_s:.1f} s",
                    flush=True,
                )
                manifest = client.get(location, headers=headers).json()
                size = 0
                started = time.perf_counter()
                for item in manifest["output"]:
                    body = client.get(item["url"], headers=headers)
                    assert body.status_code == 200
                    size += len(body.content)
                download_s = time.perf_counter() - started
                # 1% of the golden records change; an export _since then.
                since = utcnow()
                time.sleep(0.01)
                with unit_of_work(sessions) as session:
                    session.execute(
                        update(GoldenPatient)
                        .where(GoldenPatient.id.in_(changed))
                        .values(last_updated=utcnow())
                    )
                stamp = since.isoformat(timespec="milliseconds").replace("+00:00", "Z")
                kick_off(client, headers, f"?_since={stamp}")
                started = time.perf_counter()
                since_report = run_export(sessions, jobs.pop(), settings)
                since_s = time.perf_counter() - started
                with sessions() as session:
                    done = session.scalars(select(ExportJob.status)).all()
                    stored = session.scalar(select(func.sum(func.length(ExportFile.content_gzip))))
                assert done == ["completed", "completed"], done
            engine.dispose()
            stop_checkpointers()
        finally:
            cleanup()
    summary = {
        "patients": args.patients,
        "resources": report.resources,
        "files": report.files,
        "export_s": round(export_s, 2),
        "resources_per_s": round(report.resources / export_s, 1),
        "mb": round(size / 1e6, 1),
        "stored_mb": round((stored or 0) / 1e6, 1),
        "download_mb_per_s": round(size / 1e6 / download_s, 1),
        "since_resources": since_report.resources,
        "since_export_s": round(since_s, 2),
        "rss_before_export_mb": round(rss_before, 1),
        "export_rss_mb": round(watch.peak, 1),
        "backend": args.backend,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
