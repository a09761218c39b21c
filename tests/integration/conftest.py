"""Integration fixtures: real ``askonce worker`` processes on PostgreSQL and Redis."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker

from askonce.runtime import Runtime, build_runtime
from askonce.settings import Settings
from store import make_session_factory
from store.models import SyncRun
from tests.conftest import emptied_engine

WORKER_STOP_TIMEOUT_S = 20
POLL_S = 0.1


class Worker:
    """An ``askonce worker`` in its own process group, so ``kill -9`` reaches the pool too."""

    def __init__(self, env: dict[str, str], log_path: Path) -> None:
        self.env = env
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "askonce", "worker"],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()

    def kill9(self) -> None:
        """SIGKILL the worker and its pool processes: no cleanup, no ack, no rollback."""
        assert self.process is not None
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)
        self.process = None

    def stop(self) -> None:
        if self.process is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=WORKER_STOP_TIMEOUT_S)
        except ProcessLookupError:
            pass
        self.process = None


@pytest.fixture
def pg_engine(pg_url: str) -> Iterator[Engine]:
    """The session's PostgreSQL database, emptied before and after the test."""
    yield from emptied_engine(pg_url)


@pytest.fixture
def pg_sessions(pg_engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(pg_engine)


@pytest.fixture
def services(pg_url: str, redis_url: str, pg_engine: Engine) -> Runtime:
    """This process wired for services mode on a private task queue."""
    queue = f"askonce-it-{uuid.uuid4().hex[:8]}"
    return build_runtime(Settings(database_url=pg_url, redis_url=redis_url, task_queue=queue))


@pytest.fixture
def worker(services: Runtime, tmp_path: Path) -> Iterator[Worker]:
    """A real worker consuming the private queue (concurrency 1)."""
    env = {
        **os.environ,
        "ASKONCE_DATABASE_URL": services.settings.database_url,
        "ASKONCE_REDIS_URL": services.settings.redis_url or "",
        "ASKONCE_TASK_QUEUE": services.settings.task_queue,
        "ASKONCE_WORKER_CONCURRENCY": "1",
        "ASKONCE_LOG_LEVEL": "WARNING",
    }
    proc = Worker(env, tmp_path / "worker.log")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


def wait_for(
    condition: Callable[[], bool], *, timeout_s: float, what: str, log: Path | None = None
) -> None:
    """Poll ``condition`` until it holds; fail with ``what`` (and the worker log) on timeout."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(POLL_S)
    tail = log.read_text(errors="replace")[-3000:] if log and log.exists() else ""
    pytest.fail(f"timed out waiting for {what}\n{tail}")


def latest_run(sessions: sessionmaker[Session], source_id: int) -> SyncRun | None:
    with sessions() as session:
        return session.scalar(
            select(SyncRun).where(SyncRun.source_id == source_id).order_by(SyncRun.id.desc())
        )
