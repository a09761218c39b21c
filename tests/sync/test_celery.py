"""A real task through the real Redis broker and a real worker process, and in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from askonce.runtime import build_runtime
from askonce.settings import Settings
from sync.tasks import ping

WORKER_START_TIMEOUT_S = 60


def test_task_runs_in_process_without_redis(sqlite_url: str) -> None:
    runtime = build_runtime(Settings(database_url=sqlite_url, redis_url=None))
    assert runtime.celery.conf.task_always_eager
    result = ping.delay("hello").get(timeout=5)
    assert result == {"token": "hello", "pid": os.getpid(), "database": "sqlite"}


@pytest.fixture
def worker(redis_url: str, pg_url: str, tmp_path: Path) -> Iterator[Settings]:
    """A real ``askonce worker`` process on a private queue."""
    queue = f"askonce-test-{uuid.uuid4().hex[:8]}"
    env = {
        **os.environ,
        "ASKONCE_DATABASE_URL": pg_url,
        "ASKONCE_REDIS_URL": redis_url,
        "ASKONCE_TASK_QUEUE": queue,
        "ASKONCE_WORKER_CONCURRENCY": "1",
    }
    log = (tmp_path / "worker.log").open("w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "askonce", "worker"], env=env, stdout=log, stderr=subprocess.STDOUT
    )
    try:
        yield Settings(database_url=pg_url, redis_url=redis_url, task_queue=queue)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def test_task_runs_through_redis_on_a_worker_process(worker: Settings) -> None:
    runtime = build_runtime(worker)
    assert not runtime.celery.conf.task_always_eager
    result = ping.apply_async(args=["via-redis"], queue=worker.task_queue)
    value = result.get(timeout=WORKER_START_TIMEOUT_S)
    assert value["token"] == "via-redis"
    assert value["database"] == "postgresql"
    assert value["pid"] != os.getpid()  # it ran in the worker, not here


def test_worker_refuses_to_start_in_embedded_mode() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "askonce", "worker"],
        env={k: v for k, v in os.environ.items() if k != "ASKONCE_REDIS_URL"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "ASKONCE_REDIS_URL" in proc.stderr
