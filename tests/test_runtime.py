"""The composition root hands the settings to every process's workers and routes."""

from __future__ import annotations

import threading

from celery import current_app

from askonce.runtime import build_runtime
from askonce.settings import Settings
from sync.context import current_task_context


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
