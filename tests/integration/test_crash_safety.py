"""kill -9 of a real worker in the middle of a run: the run resumes, nothing lost or doubled."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from askonce.runtime import Runtime
from store import CursorRepository, SourceRepository
from store.models import Encounter, Link, SourceRecord, SyncRun
from sync.tasks import run_source
from tests.integration.conftest import Worker, latest_run, wait_for
from tools.ehrgen import generate, write_ndjson

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]

PEOPLE = 300
PAGE_SIZE = 20
#: The worker is killed once this many pages are committed.
KILL_AFTER_PAGES = 8
RUN_TIMEOUT_S = 240


def test_kill_9_mid_run_resumes_from_the_committed_cursor(
    services: Runtime, worker: Worker, pg_sessions: sessionmaker[Session], tmp_path: Path
) -> None:
    generated = generate(PEOPLE, seed=11, encounters_per_patient=1.5)
    folders = write_ndjson(generated, tmp_path / "data")
    patients = generated.patients_by_source["ehr-a"]
    encounters = generated.encounters_by_source["ehr-a"]
    with pg_sessions() as session:
        source_id = (
            SourceRepository(session)
            .add(
                name="ehr-a",
                kind="ndjson",
                base_url=str(folders["ehr-a"]),
                config={"page_size": PAGE_SIZE},
            )
            .id
        )
        session.commit()
    queue = services.settings.task_queue
    run_source.apply_async(kwargs={"source_id": source_id}, queue=queue)

    def pages_committed() -> int:
        run = latest_run(pg_sessions, source_id)
        return run.pages if run else 0

    wait_for(
        lambda: pages_committed() >= KILL_AFTER_PAGES,
        timeout_s=RUN_TIMEOUT_S,
        what="the first pages",
        log=worker.log_path,
    )
    worker.kill9()
    with pg_sessions() as session:
        before = session.scalar(select(func.count()).select_from(SourceRecord)) or 0
        cursor_before = CursorRepository(session).get(source_id, "Patient")
        pages_before = pages_committed()
    total = len(patients) + len(encounters)
    assert 0 < before < total, "the kill must land in the middle of the run"
    assert cursor_before is not None

    # A new worker; the next trigger (what beat does on schedule) resumes the same run.
    worker.start()
    run_source.apply_async(kwargs={"source_id": source_id}, queue=queue)

    def finished() -> bool:
        run = latest_run(pg_sessions, source_id)
        return run is not None and run.status != "running"

    wait_for(finished, timeout_s=RUN_TIMEOUT_S, what="the resumed run", log=worker.log_path)
    with pg_sessions() as session:
        runs = session.scalars(select(SyncRun)).all()
        assert [r.status for r in runs] == ["ok"]  # one run, resumed, not restarted
        run = runs[0]
        expected_pages = -(-len(patients) // PAGE_SIZE) + -(-len(encounters) // PAGE_SIZE)
        # Resumed at the committed cursor: at most the page in flight was read twice
        # (plus the empty end-of-stream page of each type); a restart would add 8+.
        assert pages_before <= run.pages <= expected_pages + 4
        by_type = dict(
            session.execute(
                select(SourceRecord.resource_type, func.count()).group_by(
                    SourceRecord.resource_type
                )
            ).all()
        )
        distinct = session.scalar(select(func.count(func.distinct(SourceRecord.resource_id))))
        assert by_type == {"Patient": len(patients), "Encounter": len(encounters)}
        assert distinct == total  # nothing doubled
        assert session.scalar(select(func.count()).select_from(Link)) == len(patients)
        assert session.scalar(select(func.count()).select_from(Encounter)) == len(encounters)
        unattached = session.scalar(
            select(func.count()).select_from(Encounter).where(Encounter.golden_id.is_(None))
        )
        assert unattached == 0
