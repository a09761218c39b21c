"""The composition root hands the settings to every process's workers and routes."""

from __future__ import annotations

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
