"""Forms coming back: ``$extract`` and a portal's form submissions, through the gateway.

``python -m bench.forms [--patients N] [--forms M] [--backend postgresql]`` syncs N
generated people from one EHR through the pipeline, registers a ``portal`` source, fills
the demo's intake form for M of them with ``$populate`` (untimed), changes each one's
mobile number, and then times, through the real gateway (``TestClient``: auth, audit,
the JSON body):

- ``$extract`` of each completed form (no writes: the extraction alone);
- ``POST /fhir/QuestionnaireResponse`` of each form: the extraction, the identity check,
  the portal record written and pinned, the golden record rewritten with its event, the
  form kept; one transaction each, as a portal's patients submit them one at a time;
- the same forms again (unchanged: the record is found, the content hash skips it);
- the same forms with another number (an update of the portal's record).

The last line is JSON: ``extract_per_s``, ``submit_per_s``, ``submit_p50_ms``,
``submit_p99_ms``, ``resubmit_per_s``, ``update_per_s``, ``patients``, ``forms``,
``backend``. A portal campaign that asks every patient to confirm their contact data is
the load this prices: forms per second per gateway process.
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import Engine, select

from askonce.demo import INTAKE_QUESTIONNAIRE
from bench.ingest import DEFAULT_PG_ADMIN_URL, database_url
from connectors import Page
from gateway import GatewayState, create_app
from gateway.auth import TokenService
from store import make_engine, make_session_factory
from store.db import stop_checkpointers
from store.models import Link, SourceRecord
from store.repositories import SourceRepository
from sync.pipeline import ingest_page
from sync.sources import checked_settings

DEFAULT_PATIENTS = 5_000
DEFAULT_FORMS = 500
PAGE = 500
SECRET = "bench-forms-secret-" + "f" * 32
CLIENT = "bench-portal"
SCOPES = ["system/Patient.rs", "system/QuestionnaireResponse.crs"]
FAMILIES = ["Nguyen", "Smith", "Garcia", "Mueller", "Okafor", "Tanaka", "Kowalski", "Haddad"]
GIVENS = ["Anh", "John", "Maria", "Juergen", "Chidi", "Yuki", "Anna", "Omar", "Li", "Sara"]


def person(i: int, rng: random.Random) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": f"p{i}",
        "meta": {"lastUpdated": "2026-01-10T10:00:00Z"},
        "identifier": [{"system": "urn:oid:2.16.840.1.113883.4.1.bench", "value": f"MRN{i:07d}"}],
        "name": [
            {"use": "official", "family": rng.choice(FAMILIES), "given": [rng.choice(GIVENS)]}
        ],
        "gender": rng.choice(["female", "male"]),
        "birthDate": f"{rng.randint(1930, 2015)}-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
        "telecom": [{"system": "phone", "value": f"+1 415 555 {i % 10000:04d}", "use": "mobile"}],
        "address": [{"line": [f"{i} Main St"], "city": "Oakland", "postalCode": "94601"}],
    }


def load(url: str, patients: int) -> list[str]:
    """Sync ``patients`` people from one EHR; register the portal; their golden ids."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    rng = random.Random(5)
    with sessions() as session:
        ehr = SourceRepository(session).add(name="ehr", kind="ndjson", base_url="/nonexistent")
        portal = checked_settings(
            "portal",
            "https://portal.example",
            auth=None,
            schedule=None,
            resource_types=None,
            config={"client_id": CLIENT},
        )
        SourceRepository(session).add(
            name="portal",
            kind="portal",
            base_url=portal.url,
            config=portal.config,
            resource_types=portal.resource_types,
            trust_rank=60,
        )
        session.commit()
        ehr_id = ehr.id
    for start in range(0, patients, PAGE):
        with sessions() as session:
            batch = [person(i, rng) for i in range(start, min(start + PAGE, patients))]
            ingest_page(session, ehr_id, Page("Patient", batch, None))
            session.commit()
    with sessions() as session:
        goldens = session.scalars(
            select(Link.golden_id)
            .join(SourceRecord, SourceRecord.id == Link.source_record_id)
            .where(SourceRecord.source_id == ehr_id)
            .order_by(SourceRecord.id)
        ).all()
    engine.dispose()
    return list(dict.fromkeys(goldens))


def gateway(
    url: str, secret: str, client_id: str, scopes: list[str]
) -> tuple[Engine, TestClient, dict[str, str]]:
    """The real app on the database at ``url`` (its engine, to dispose), a client for it
    (enter it to start the app) and the JSON headers of a token of ``client_id``."""
    engine = make_engine(url)
    state = GatewayState(
        engine=engine,
        session_factory=make_session_factory(engine),
        secret_key=secret,
        max_body_bytes=1024 * 1024,
    )
    headers = {
        "Authorization": f"Bearer {TokenService(secret).issue(client_id, scopes)}",
        "Content-Type": "application/fhir+json",
    }
    return engine, TestClient(create_app(state), base_url="http://bench"), headers


def with_mobile(response: dict[str, Any], number: str) -> dict[str, Any]:
    out = copy.deepcopy(response)
    for group in out.get("item", []):
        for item in group.get("item", []):
            if item["linkId"] == "contact.mobile":
                item["answer"] = [{"valueString": number}]
    return out


def timed(calls: list[Callable[[], Any]]) -> tuple[float, list[float]]:
    """Run each call; the total seconds and each call's milliseconds."""
    each: list[float] = []
    started = time.perf_counter()
    for call in calls:
        before = time.perf_counter()
        call()
        each.append((time.perf_counter() - before) * 1000)
    return time.perf_counter() - started, each


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS)
    parser.add_argument("--forms", type=int, default=DEFAULT_FORMS)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    form = json.loads(INTAKE_QUESTIONNAIRE.read_text(encoding="utf-8"))
    contained = {**form, "id": "intake"}
    with tempfile.TemporaryDirectory() as tmp:
        url, cleanup = database_url(args.backend, args.pg_admin_url, Path(tmp))
        try:
            started = time.perf_counter()
            goldens = load(url, args.patients)
            print(f"synced {args.patients} people in {time.perf_counter() - started:.1f} s")
            engine, app_client, headers = gateway(url, SECRET, CLIENT, SCOPES)
            chosen = random.Random(9).sample(goldens, min(args.forms, len(goldens)))
            with app_client as client:
                responses = []
                for golden_id in chosen:  # $populate: the setup, untimed
                    body = {
                        "resourceType": "Parameters",
                        "parameter": [
                            {"name": "questionnaire", "resource": form},
                            {
                                "name": "subject",
                                "valueReference": {"reference": f"Patient/{golden_id}"},
                            },
                        ],
                    }
                    filled = client.post(
                        "/fhir/Questionnaire/$populate", json=body, headers=headers
                    )
                    response = next(
                        p["resource"] for p in filled.json()["parameter"] if p["name"] == "response"
                    )
                    response.update(
                        status="completed", questionnaire="#intake", contained=[contained]
                    )
                    responses.append(response)
                first = [with_mobile(r, f"+1 510 555 {n:04d}") for n, r in enumerate(responses)]
                later = [with_mobile(r, f"+1 628 555 {n:04d}") for n, r in enumerate(responses)]

                def extract(body: dict[str, Any]) -> Callable[[], Any]:
                    def call() -> None:
                        answer = client.post(
                            "/fhir/QuestionnaireResponse/$extract", json=body, headers=headers
                        )
                        assert answer.status_code == 200, answer.text

                    return call

                def submit(body: dict[str, Any]) -> Callable[[], Any]:
                    def call() -> None:
                        answer = client.post(
                            "/fhir/QuestionnaireResponse",
                            json=body,
                            headers={**headers, "Prefer": "return=minimal"},
                        )
                        assert answer.status_code == 201, answer.text

                    return call

                extract_s, _ = timed([extract(b) for b in first])
                submit_s, each = timed([submit(b) for b in first])
                resubmit_s, _ = timed([submit(b) for b in first])
                update_s, _ = timed([submit(b) for b in later])
            engine.dispose()
            stop_checkpointers()
        finally:
            cleanup()
    forms = len(first)
    quantiles = statistics.quantiles(each, n=100)
    summary = {
        "patients": args.patients,
        "forms": forms,
        "extract_per_s": round(forms / extract_s, 1),
        "submit_per_s": round(forms / submit_s, 1),
        "submit_p50_ms": round(statistics.median(each), 2),
        "submit_p99_ms": round(quantiles[98], 2),
        "resubmit_per_s": round(forms / resubmit_s, 1),
        "update_per_s": round(forms / update_s, 1),
        "backend": args.backend,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
