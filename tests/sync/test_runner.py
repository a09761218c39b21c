"""Source runs: chunks, cursors, requeueing, failures, resuming after a crash."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker

from connectors import Page, PermanentError, TransientError, build_source
from store import CursorRepository
from store.models import Encounter, SourceRecord, SyncRun
from sync import TaskContext, run_source
from sync.pipeline import split_page
from sync.runner import CURSOR_TRAIL_WINDOW, run_chunked
from tests.connectors.helpers import BASE, Recorder, searchset
from tests.connectors.helpers import patient as connector_patient
from tests.sync.helpers import (
    ScriptedSource,
    add_source,
    encounter,
    patient,
    records,
    write_ndjson,
)

PATIENT_PAGES = [[patient(f"p{page}-{n}", f"Fam{page}{n}") for n in range(3)] for page in range(4)]
ENCOUNTER_PAGES = [[encounter(f"e{page}", f"p{page}-0")] for page in range(4)]


def _context(engine: Engine, session_factory: sessionmaker[Session]) -> TaskContext:
    return TaskContext(engine=engine, session_factory=session_factory)


def _counts(session: Session, source_id: int) -> tuple[int, int]:
    total = session.scalar(
        select(func.count()).select_from(SourceRecord).where(SourceRecord.source_id == source_id)
    )
    distinct = session.scalar(
        select(func.count(func.distinct(SourceRecord.resource_id))).where(
            SourceRecord.source_id == source_id
        )
    )
    return total or 0, distinct or 0


def test_a_run_reads_every_type_records_itself_and_a_rerun_skips_everything(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    source_id = add_source(session_factory)
    source = ScriptedSource({"Patient": PATIENT_PAGES, "Encounter": ENCOUNTER_PAGES})
    context = _context(engine, session_factory)
    first = run_source(context, source_id, max_pages=None, source_factory=lambda _c: source)
    assert first.status == "ok"
    with session_factory() as session:
        run = session.get(SyncRun, first.run_id)
        assert run is not None and run.status == "ok" and run.finished_at is not None
        assert (run.pages, run.resources, run.quarantined) == (8, 16, 0)
        assert run.detail["counts"]["Encounter"]["stored"] == 4
        assert _counts(session, source_id) == (16, 16)
        assert (
            session.scalar(
                select(func.count()).select_from(Encounter).where(Encounter.golden_id.is_(None))
            )
            == 0
        )
    # The next incremental run starts at the cursors: nothing to read.
    again = run_source(context, source_id, max_pages=None, source_factory=lambda _c: source)
    assert (again.status, again.result.resources) == ("ok", 0)
    # A full run reads everything again, and skips it all by content hash.
    full = run_source(
        context, source_id, full=True, max_pages=None, source_factory=lambda _c: source
    )
    assert (full.result.resources, full.result.skipped, full.result.stored) == (16, 16, 0)


def test_a_queued_run_does_one_page_per_chunk_and_requeues_itself(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    source_id = add_source(session_factory)
    source = ScriptedSource({"Patient": PATIENT_PAGES, "Encounter": ENCOUNTER_PAGES})
    context = _context(engine, session_factory)
    pages: list[int] = []
    chunk, chunks = run_chunked(
        context,
        source_id,
        source_factory=lambda _c: source,
        on_chunk=lambda done: pages.append(done.pages),
    )
    assert max(pages) <= 1
    assert chunk.status == "ok"
    assert chunks >= 8
    with session_factory() as session:
        assert _counts(session, source_id) == (16, 16)


def test_a_crash_mid_run_resumes_from_the_committed_cursor_without_loss_or_doubles(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    source_id = add_source(session_factory)
    context = _context(engine, session_factory)
    crashing = ScriptedSource(
        {"Patient": PATIENT_PAGES, "Encounter": ENCOUNTER_PAGES},
        fail_after=2,
        error=KeyboardInterrupt(),  # not an Exception: nothing in the run may swallow it
    )
    with pytest.raises(KeyboardInterrupt):
        run_source(context, source_id, max_pages=None, source_factory=lambda _c: crashing)
    with session_factory() as session:
        assert CursorRepository(session).get(source_id, "Patient") == "2"
        assert _counts(session, source_id) == (6, 6)
        run = session.scalars(select(SyncRun)).one()
        assert run.status == "running"
    healthy = ScriptedSource({"Patient": PATIENT_PAGES, "Encounter": ENCOUNTER_PAGES})
    resumed = run_source(context, source_id, max_pages=None, source_factory=lambda _c: healthy)
    assert resumed.status == "ok"
    assert healthy.opened[0] == ("Patient", "2")
    with session_factory() as session:
        assert session.scalars(select(SyncRun)).one().status == "ok"  # the same run, resumed
        assert _counts(session, source_id) == (16, 16)


def test_transient_errors_propagate_for_retry_and_permanent_ones_fail_the_run(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    source_id = add_source(session_factory)
    context = _context(engine, session_factory)
    flaky = ScriptedSource(
        {"Patient": PATIENT_PAGES},
        fail_after=1,
        error=TransientError("503", url="http://ehr/Patient", status_code=503),
    )
    with pytest.raises(TransientError):
        run_source(context, source_id, max_pages=None, source_factory=lambda _c: flaky)
    with session_factory() as session:
        run = session.scalars(select(SyncRun)).one()
        assert (run.status, run.errors, run.pages) == ("running", 1, 1)
        assert run.detail["last_error"]["status_code"] == 503
    broken = ScriptedSource(
        {"Patient": PATIENT_PAGES}, fail_after=0, error=PermanentError("403", status_code=403)
    )
    failed = run_source(context, source_id, max_pages=None, source_factory=lambda _c: broken)
    assert failed.status == "failed"
    with session_factory() as session:
        run = session.scalars(select(SyncRun)).one()
        assert (run.status, run.errors) == ("failed", 2)
        assert records(session, source_id)  # what was committed before stays


def test_a_takeover_stops_the_old_chain(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    source_id = add_source(session_factory)
    source = ScriptedSource({"Patient": PATIENT_PAGES})
    context = _context(engine, session_factory)
    queue: list[tuple[int, int, str]] = []
    run_source(
        context, source_id, requeue=lambda *a: queue.append(a), source_factory=lambda _c: source
    )
    stale = queue.pop()
    # Beat (or `askonce sync`) triggers the same source again: it takes the run over.
    run_source(
        context, source_id, requeue=lambda *a: queue.append(a), source_factory=lambda _c: source
    )
    old = run_source(
        context, stale[0], run_id=stale[1], token=stale[2], source_factory=lambda _c: source
    )
    assert (old.status, old.pages) == ("superseded", 0)


def test_an_ndjson_folder_syncs_through_the_real_connector(
    engine: Engine, session_factory: sessionmaker[Session], tmp_path: Path
) -> None:
    folder = tmp_path / "ehr"
    write_ndjson(folder, "Patient", [patient(f"p{n}", f"Fam{n}") for n in range(5)])
    write_ndjson(folder, "Encounter", [encounter("e1", "p1"), encounter("e2", "p9")])
    with (folder / "Patient.ndjson").open("a") as handle:
        handle.write("{not json\n")
    source_id = add_source(session_factory, base_url=str(folder), config={"page_size": 2})
    context = _context(engine, session_factory)
    done = run_source(context, source_id, max_pages=None)
    assert done.status == "ok"
    assert (done.result.stored, done.result.quarantined, done.result.waiting) == (7, 1, 1)
    again = run_source(context, source_id, max_pages=None)
    assert (again.status, again.result.stored) == ("ok", 0)


def test_a_big_patient_page_commits_in_parts_and_the_cursor_with_the_last(
    engine: Engine, session_factory: sessionmaker[Session], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("sync.pipeline.MAX_PATIENTS_PER_TRANSACTION", 100)
    big = [patient(f"b{n}", f"Big{n}", f"19{50 + n % 40}-01-0{1 + n % 9}") for n in range(250)]
    parts = split_page(
        Page("Patient", big, "end", deleted=["gone"], replaced={"prior": "survivor"})
    )
    assert [len(p.resources) for p in parts] == [100, 100, 50]
    assert [p.cursor for p in parts] == [None, None, "end"]
    assert [p.deleted for p in parts] == [[], [], ["gone"]]
    assert [p.replaced for p in parts] == [{}, {}, {"prior": "survivor"}]
    source_id = add_source(session_factory)
    source = ScriptedSource({"Patient": [big]})
    done = run_source(
        _context(engine, session_factory),
        source_id,
        max_pages=None,
        source_factory=lambda _c: source,
    )
    assert (done.status, done.pages, done.result.stored) == ("ok", 1, 250)
    with session_factory() as session:
        assert CursorRepository(session).get(source_id, "Patient") == "1"
        assert _counts(session, source_id) == (250, 250)


class _LoopingSource(ScriptedSource):
    """A server whose ``next`` links come back around after ``period`` pages, forever."""

    def __init__(self, period: int) -> None:
        super().__init__({})
        self.period = period
        self.served = 0

    def stream(self, resource_type: str, cursor: str | None = None) -> Iterator[Page]:
        position = int(cursor or 0)
        while self.served < 1000:  # a runaway test fails instead of hanging
            self.served += 1
            position = (position + 1) % self.period
            yield Page(resource_type, [patient(f"loop{position}", "Loop")], str(position))


@pytest.mark.parametrize(("period", "pages"), [(3, 4), (70, 198)])
def test_a_stream_that_loops_is_stopped_and_the_run_keeps_a_bounded_trail(
    engine: Engine, session_factory: sessionmaker[Session], period: int, pages: int
) -> None:
    source_id = add_source(session_factory, resource_types=["Patient"])
    source = _LoopingSource(period)
    done = run_source(
        _context(engine, session_factory),
        source_id,
        max_pages=None,
        source_factory=lambda _c: source,
    )
    # A loop within the trail's window ends at its first repeat; a longer one after
    # at most three times its length (the anchor), each re-read page skipped by hash.
    assert (done.status, done.pages, done.result.stored) == ("ok", pages, period)
    with session_factory() as session:
        run = session.get(SyncRun, done.run_id)
        assert run is not None
        trail = run.detail["seen"]["Patient"]
        assert len(trail["recent"]) == min(pages, CURSOR_TRAIL_WINDOW)
        assert trail["pages"] == pages


def test_a_run_of_one_page_per_chunk_asks_for_one_token(
    engine: Engine, session_factory: sessionmaker[Session]
) -> None:
    """Each chunk builds the source again; the OAuth token it got in the first chunk serves
    the whole run (the EHR's token endpoint is asked once, not once per page)."""
    token_requests: list[str] = []
    everyone = [connector_patient(f"p{n}", stamp=f"2026-01-0{n + 1}T00:00:00Z") for n in range(8)]

    def answer(request: httpx.Request, _n: int) -> httpx.Response:
        if request.url.path == "/oauth2/token":
            token_requests.append(request.method)
            return httpx.Response(200, json={"access_token": "t", "expires_in": 3600})
        assert request.headers["Authorization"] == "Bearer t"
        if request.url.path == "/fhir/Encounter":
            return httpx.Response(200, json=searchset([]))
        # Honours _lastUpdated=ge… (a chunk resumes by it) and pages by two.
        since = request.url.params.get("_lastUpdated", "ge")[2:]
        found = [p for p in everyone if p["meta"]["lastUpdated"] >= since]
        page = int(request.url.params.get("page", "0"))
        following = None
        if 2 * page + 2 < len(found):
            following = f"{BASE}/Patient?_lastUpdated=ge{since}&page={page + 1}"
        return httpx.Response(200, json=searchset(found[2 * page : 2 * page + 2], following))

    handler = Recorder(answer)
    source_id = add_source(
        session_factory,
        kind="fhir",
        base_url=BASE,
        auth={
            "kind": "client_credentials",
            "token_url": "https://ehr.example/oauth2/token",
            "client_id": "askonce",
            "client_secret": "s3cret",
        },
        config={"requests_per_s": None},
    )
    chunk, chunks = run_chunked(
        _context(engine, session_factory),
        source_id,
        source_factory=lambda config: build_source(config, transport=handler.transport),
    )
    assert chunk.status == "ok" and chunks >= 5
    assert token_requests == ["POST"]
    with session_factory() as session:
        assert _counts(session, source_id) == (8, 8)
