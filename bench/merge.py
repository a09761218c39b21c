"""A steward's merges through the gateway: ``Patient/$merge`` (preview and real) and
``Patient/$unmerge``.

``python -m bench.merge [--patients N] [--pairs M] [--backend postgresql]`` syncs N
generated people from one EHR, and M of them again from a second EHR that knows them
under its own MRN with another phone and address (so the engine keeps the two apart:
name and birth date alone do not link). Then, through the real gateway (``TestClient``:
auth, audit, the JSON body), one request at a time as a registration desk sends them, it
times for each pair:

- ``$merge`` with ``preview=true``: the checks (scores and guards between their records,
  a steward's "no-match"), the whole merge, the survivor rendered, then rolled back;
- ``$merge``: the same, committed (links moved, both golden records written, the event);
- ``$unmerge``: the records given back, both rebuilt, the "no-match" pairs stored.

Before the merges, the steward's lookup of each pair's likely duplicates
(``GET /admin/golden/{target}/duplicates``, :func:`mpi.likely_duplicates`): its time,
the share of pairs whose other half it offers (``duplicates_found``), first
(``duplicates_first``), and how many other golden records it offers on average
(``duplicates_others``: people who share a name part or a birth date, graded lower).

The last line is JSON: ``duplicates_p50_ms``, ``duplicates_found``,
``duplicates_first``, ``duplicates_others``, ``preview_p50_ms``, ``merge_p50_ms``, ``merge_p99_ms``,
``merges_per_s``, ``unmerge_p50_ms``, ``unmerges_per_s``, ``patients``, ``pairs``,
``backend``.
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import select

from bench.forms import gateway, person, timed
from bench.ingest import DEFAULT_PG_ADMIN_URL, database_url
from connectors import Page
from gateway.auth import TokenService
from store import make_engine, make_session_factory
from store.db import stop_checkpointers
from store.models import Link, SourceRecord
from store.repositories import SourceRepository
from sync.pipeline import ingest_page

DEFAULT_PATIENTS = 5_000
DEFAULT_PAIRS = 300
PAGE = 500
SECRET = "bench-merge-secret-" + "m" * 32
CLIENT = "bench-registration"
SCOPES = ["system/Patient.rus"]


def second_registration(first: dict[str, Any], i: int) -> dict[str, Any]:
    """The same person as ``first`` in another EHR: its own MRN, another phone and address."""
    return {
        **first,
        "identifier": [{"system": "urn:bench:ehr-b:mrn", "value": f"B{i:07d}"}],
        "telecom": [{"system": "phone", "value": f"+1 628 555 {i % 10000:04d}", "use": "home"}],
        "address": [{"line": [f"{i} Bay St"], "city": "Alameda", "postalCode": "94501"}],
    }


def load(url: str, patients: int, pairs: int) -> list[tuple[str, str]]:
    """Sync the people and the second registrations; the (second, first) golden id pairs
    the engine kept apart."""
    engine = make_engine(url)
    sessions = make_session_factory(engine)
    rng = random.Random(5)
    people = [person(i, rng) for i in range(patients)]
    chosen = sorted(random.Random(9).sample(range(patients), min(pairs, patients)))
    with sessions() as session:
        repository = SourceRepository(session)
        ehr_a = repository.add(name="ehr-a", kind="ndjson", base_url="/nonexistent")
        ehr_b = repository.add(name="ehr-b", kind="ndjson", base_url="/nonexistent")
        session.commit()
        ids = (ehr_a.id, ehr_b.id)
    seconds = [second_registration(people[i], i) for i in chosen]
    for source_id, resources in zip(ids, (people, seconds), strict=True):
        for start in range(0, len(resources), PAGE):
            with sessions() as session:
                ingest_page(
                    session, source_id, Page("Patient", resources[start : start + PAGE], None)
                )
                session.commit()
    with sessions() as session:
        golden_of = {
            (source_id, resource_id): golden_id
            for source_id, resource_id, golden_id in session.execute(
                select(SourceRecord.source_id, SourceRecord.resource_id, Link.golden_id).join(
                    Link, Link.source_record_id == SourceRecord.id
                )
            )
        }
    engine.dispose()
    found = [(golden_of[(ids[1], f"p{i}")], golden_of[(ids[0], f"p{i}")]) for i in chosen]
    # Namesakes born the same day happen in generated data too: a golden record shared by
    # two pairs would be merged once only, so such pairs are left out.
    seen = [g for pair in found for g in pair]
    return [(s, f) for s, f in found if s != f and seen.count(s) == 1 and seen.count(f) == 1]


def parameters(source: str, target: str | None, preview: bool = False) -> dict[str, Any]:
    params: list[dict[str, Any]] = [
        {"name": "source-patient", "valueReference": {"reference": f"Patient/{source}"}}
    ]
    if target is not None:
        params.append(
            {"name": "target-patient", "valueReference": {"reference": f"Patient/{target}"}}
        )
    if preview:
        params.append({"name": "preview", "valueBoolean": True})
    return {"resourceType": "Parameters", "parameter": params}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=DEFAULT_PATIENTS)
    parser.add_argument("--pairs", type=int, default=DEFAULT_PAIRS)
    parser.add_argument("--backend", choices=["sqlite", "postgresql"], default="sqlite")
    parser.add_argument("--pg-admin-url", default=DEFAULT_PG_ADMIN_URL)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    with tempfile.TemporaryDirectory() as tmp:
        url, cleanup = database_url(args.backend, args.pg_admin_url, Path(tmp))
        try:
            started = time.perf_counter()
            pairs = load(url, args.patients, args.pairs)
            print(
                f"synced {args.patients} people and {args.pairs} second registrations in "
                f"{time.perf_counter() - started:.1f} s; {len(pairs)} pairs kept apart"
            )
            engine, app_client, headers = gateway(url, SECRET, CLIENT, SCOPES)
            with app_client as client:

                def call(path: str, body: dict[str, Any]) -> Callable[[], Any]:
                    def run() -> None:
                        answer = client.post(path, json=body, headers=headers)
                        assert answer.status_code == 200, answer.text

                    return run

                admin = {
                    "Authorization": "Bearer "
                    + TokenService(SECRET).issue("bench-steward", ["askonce.admin"])
                }
                offered: dict[str, list[str]] = {}

                def duplicates_of(target: str) -> Callable[[], Any]:
                    def run() -> None:
                        answer = client.get(f"/admin/golden/{target}/duplicates", headers=admin)
                        assert answer.status_code == 200, answer.text
                        offered[target] = [d["golden_id"] for d in answer.json()["duplicates"]]

                    return run

                _, lookups = timed([duplicates_of(t) for _, t in pairs])
                merge, unmerge = "/fhir/Patient/$merge", "/fhir/Patient/$unmerge"
                _, previews = timed([call(merge, parameters(s, t, True)) for s, t in pairs])
                merge_s, merges = timed([call(merge, parameters(s, t)) for s, t in pairs])
                unmerge_s, unmerges = timed([call(unmerge, parameters(s, None)) for s, _ in pairs])
            engine.dispose()
            stop_checkpointers()
        finally:
            cleanup()
    summary = {
        "patients": args.patients,
        "pairs": len(pairs),
        "duplicates_p50_ms": round(statistics.median(lookups), 2),
        "duplicates_found": round(sum(s in offered[t] for s, t in pairs) / len(pairs), 3),
        "duplicates_first": round(sum(offered[t][:1] == [s] for s, t in pairs) / len(pairs), 3),
        "duplicates_others": round(
            sum(len([g for g in offered[t] if g != s]) for s, t in pairs) / len(pairs), 3
        ),
        "preview_p50_ms": round(statistics.median(previews), 2),
        "merge_p50_ms": round(statistics.median(merges), 2),
        "merge_p99_ms": round(statistics.quantiles(merges, n=100)[98], 2),
        "merges_per_s": round(len(pairs) / merge_s, 1),
        "unmerge_p50_ms": round(statistics.median(unmerges), 2),
        "unmerges_per_s": round(len(pairs) / unmerge_s, 1),
        "backend": args.backend,
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
