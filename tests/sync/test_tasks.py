"""The Celery tasks, run in-process (embedded mode): same plain functions, same results."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from store.models import SyncRun
from sync.tasks import run_source, schedule_due
from tests.sync.helpers import add_source, embedded


def test_run_source_task_runs_a_whole_run_in_process(tmp_path: Path) -> None:
    runtime, folder = embedded(tmp_path)
    assert runtime.celery.conf.task_always_eager
    source_id = add_source(
        runtime.session_factory, base_url=str(folder), config={"page_size": 2}, schedule="1h"
    )
    result = run_source.delay(source_id).get(timeout=60)
    assert (result["status"], result["stored"]) == ("ok", 5)
    with runtime.session_factory() as session:
        assert session.scalars(select(SyncRun.status)).all() == ["ok"]
    # Beat's tick: the source ran just now, so nothing is due.
    assert schedule_due.delay().get(timeout=60) == []
