"""Four worker processes ingest the same 200 people at the same moment (PostgreSQL).

Each process is a different EHR sending an identical copy of every person. Without the
advisory locks on block keys, two workers would each miss the other's uncommitted golden
record and create a second one; with them, every person ends up with exactly one golden
record holding all four copies.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import func, select

from fhir_mapping import parse_patient
from mpi import resolve_patients
from store import make_engine, make_session_factory
from store.models import GoldenPatient, Link, Source
from tests.conftest import truncate_all
from tests.mpi.helpers import add_record
from tools.ehrgen import generate

WORKERS = 4
PEOPLE = 200
#: Seconds a worker waits for the others to be ready (bounded, never hangs CI).
START_TIMEOUT_S = 60
JOIN_TIMEOUT_S = 240


def _people() -> list[dict[str, Any]]:
    data = generate(PEOPLE, seed=21)
    first: dict[str, dict[str, Any]] = {}
    by_id = {(r.source, r.resource_id): r.person_id for r in data.truth}
    for source, resources in data.patients_by_source.items():
        for resource in resources:
            first.setdefault(by_id[(source, resource["id"])], resource)
    return [first[p] for p in sorted(first)][:PEOPLE]


def _worker(url: str, source_id: int, barrier: Any, people: list[dict[str, Any]]) -> None:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    barrier.wait(timeout=START_TIMEOUT_S)
    for resource in people:
        with factory() as session:
            source = session.get(Source, source_id)
            assert source is not None
            row, patient = add_record(session, source, resource)
            resolve_patients(session, [(row, patient)])
            session.commit()
    engine.dispose()


@pytest.mark.postgres
@pytest.mark.slow
def test_four_processes_ingesting_the_same_people_create_one_golden_each(pg_url: str) -> None:
    engine = make_engine(pg_url)
    truncate_all(engine)
    factory = make_session_factory(engine)
    people = _people()
    with factory() as session:
        ids = []
        for n in range(WORKERS):
            source = Source(name=f"ehr-{n}", kind="ndjson", base_url=f"file:///ehr-{n}")
            session.add(source)
            session.flush()
            ids.append(source.id)
        session.commit()
    assert parse_patient(people[0])  # the data set parses before we spawn
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    processes = [
        context.Process(target=_worker, args=(pg_url, source_id, barrier, people))
        for source_id in ids
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(JOIN_TIMEOUT_S)
    assert all(p.exitcode == 0 for p in processes), [p.exitcode for p in processes]
    with factory() as session:
        active = session.scalar(
            select(func.count()).select_from(GoldenPatient).where(GoldenPatient.status == "active")
        )
        per_golden = Counter(session.scalars(select(Link.golden_id)).all())
    truncate_all(engine)
    engine.dispose()
    assert active == len(people)
    assert sorted(set(per_golden.values())) == [WORKERS]
