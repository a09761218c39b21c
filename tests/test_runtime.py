"""The composition root hands the settings to every process's workers and routes."""

from __future__ import annotations

import threading
import time
from pathlib import Path

from celery import current_app
from sqlalchemy import func, select

from askonce.runtime import build_runtime
from askonce.settings import Settings
from store.models import SourceRecord, SyncRun
from sync import run_source
from sync.context import current_task_context
from sync.runner import DEFAULT_PAGES_PER_CHUNK
from tests.sync.helpers import add_source, embedded, encounter, write_ndjson


def test_task_context_carries_region_and_match_thresholds(sqlite_url: str) -> None:
    settings = Settings(
        database_url=sqlite_url, default_region="DE", match_certain=31.5, match_possible=4.0
    )
    runtime = build_runtime(settings)
    context = current_task_context()
    assert context.engine is runtime.engine
    assert context.default_region == "DE"
    assert context.match_settings is not None
    assert (context.match_settings.certain, context.match_settings.possible) == (31.5, 4.0)


def test_match_route_uses_the_configured_thresholds(sqlite_url: str) -> None:
    runtime = build_runtime(Settings(database_url=sqlite_url, match_probable=17.25))
    state = runtime.create_app().state.askonce
    assert state.matcher.keywords["settings"].probable == 17.25


def test_tasks_sent_from_any_thread_go_through_the_runtime_app(
    sqlite_url: str, redis_url: str
) -> None:
    """A request's background task runs in the API's thread pool: the task it sends must
    find the runtime's app there too (eager when embedded, the Redis broker otherwise),
    not Celery's own default app (amqp://localhost)."""
    seen: dict[str, object] = {}

    def look() -> None:
        seen["eager"] = current_app.conf.task_always_eager
        seen["broker"] = current_app.conf.broker_url

    for redis, eager, broker in ((None, True, "memory://"), (redis_url, None, redis_url)):
        build_runtime(Settings(database_url=sqlite_url, redis_url=redis))
        thread = threading.Thread(target=look)
        thread.start()
        thread.join()
        assert (bool(seen["eager"]), seen["broker"]) == (bool(eager), broker)


def test_the_embedded_server_syncs_sources_on_their_schedule(tmp_path: Path) -> None:
    """No beat, no worker: the server's scheduler thread starts each due source's run, one
    at a time; a source that fails does not stop the others, and a source with no schedule
    is left alone."""
    runtime, folder = embedded(tmp_path, schedule_interval_s=0.1)
    write_ndjson(folder, "Encounter", [encounter("e1", "p1")])
    factory = runtime.session_factory
    broken = add_source(factory, "broken", base_url=str(tmp_path / "gone"), schedule="1h")
    ready = add_source(
        factory, "ready", base_url=str(folder), schedule="1h", config={"page_size": 2}
    )
    manual = add_source(factory, "manual", base_url=str(folder))

    def runs() -> dict[int, str]:
        with factory() as session:
            return dict(session.execute(select(SyncRun.source_id, SyncRun.status)).all())

    with runtime.schedule_loop():
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and runs().get(ready) != "ok":
            time.sleep(0.05)
    assert runs() == {broken: "failed", ready: "ok"}  # "manual" has no schedule
    with factory() as session:
        stored = select(func.count()).select_from(SourceRecord)
        assert session.scalar(stored.where(SourceRecord.source_id == ready)) == 6
        assert session.scalar(stored.where(SourceRecord.source_id == manual)) == 0
    # The next ticks find nothing due: each ran just now.
    assert runtime.run_due() == []


def test_a_stopped_scheduler_leaves_the_run_between_two_chunks(tmp_path: Path) -> None:
    runtime, folder = embedded(tmp_path)
    source_id = add_source(
        runtime.session_factory, base_url=str(folder), schedule="1h", config={"page_size": 2}
    )
    stop = threading.Event()
    stop.set()  # the server is stopping: only the first chunk runs
    assert runtime.run_due(stop) == [source_id]
    with runtime.session_factory() as session:
        run = session.scalars(select(SyncRun)).one()
        assert (run.status, run.pages) == ("running", DEFAULT_PAGES_PER_CHUNK)
    # The next tick (after the stall window, or the next start) resumes it to the end.
    assert run_source(current_task_context(), source_id, max_pages=None).status == "ok"
    with runtime.session_factory() as session:
        assert session.scalar(select(func.count()).select_from(SourceRecord)) == 5
