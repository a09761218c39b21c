"""Shared fixtures: databases (SQLite and PostgreSQL), Redis, settings isolation.

With ``ASKONCE_REQUIRE_SERVICES=1`` (as in CI) a missing PostgreSQL or Redis fails
the run instead of skipping the tests that need it.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session, sessionmaker

from askonce.settings import get_settings
from connectors.auth import TOKENS
from connectors.http import LIMITERS
from store import ALL_TABLES, make_engine, make_session_factory, upgrade

pytest_plugins: list[str] = ["tests.sekmet_server"]

REQUIRE_SERVICES = os.environ.get("ASKONCE_REQUIRE_SERVICES") == "1"
PG_ADMIN_URL = os.environ.get(
    "ASKONCE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS_URL = os.environ.get("ASKONCE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BACKENDS = ["sqlite", "postgresql"]
_URL_FIXTURE = {"sqlite": "sqlite_url", "postgresql": "pg_url"}


def service_unavailable(what: str, why: object) -> None:
    """Skip, or fail when CI requires the real services."""
    message = f"{what} unavailable: {why}"
    if REQUIRE_SERVICES:
        pytest.fail(message + " (ASKONCE_REQUIRE_SERVICES=1)", pytrace=False)
    pytest.skip(message)


@pytest.fixture(autouse=True)
def _fresh_connector_state() -> Iterator[None]:
    """Each test's sources ask their token endpoints afresh and start their rate limits
    anew: the process's access tokens (``connectors.auth.TOKENS``) and rate limiters
    (``connectors.http.LIMITERS``) start and end empty."""
    TOKENS.clear()
    LIMITERS.clear()
    yield
    TOKENS.clear()
    LIMITERS.clear()


@pytest.fixture(autouse=True)
def _isolated_settings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Tests never see the developer's ASKONCE_* environment or a stale settings cache."""
    keep = ("ASKONCE_REQUIRE_SERVICES", "ASKONCE_TEST_", "ASKONCE_SEKMET")
    for key in list(os.environ):
        if key.startswith("ASKONCE_") and not key.startswith(keep):
            monkeypatch.delenv(key)
    monkeypatch.setenv("ASKONCE_SECRET_KEY", "test-secret-" + "x" * 32)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


def create_pg_database() -> str:
    """A fresh, empty PostgreSQL database; returns its URL."""
    try:
        admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
        name = f"askonce_test_{uuid.uuid4().hex[:12]}"
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        admin.dispose()
    except Exception as exc:
        service_unavailable("PostgreSQL", exc)
    return PG_ADMIN_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    admin = make_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """A migrated PostgreSQL database for this test session."""
    url = create_pg_database()
    upgrade(url)
    yield url
    drop_pg_database(url)


@pytest.fixture(scope="session")
def sqlite_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A migrated SQLite database file for this test session."""
    path: Path = tmp_path_factory.mktemp("sqlite") / "askonce.db"
    url = f"sqlite:///{path}"
    upgrade(url)
    return url


@pytest.fixture
def cli_db(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A migrated SQLite file of its own for a CLI test: the ``askonce`` commands it
    invokes find it through ``ASKONCE_DATABASE_URL`` (and log warnings only)."""
    url = f"sqlite:///{tmp_path / 'cli.db'}"
    monkeypatch.setenv("ASKONCE_DATABASE_URL", url)
    monkeypatch.setenv("ASKONCE_LOG_LEVEL", "WARNING")
    upgrade(url)
    return url


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest) -> str:
    """The migrated database URL, once per backend."""
    return str(request.getfixturevalue(_URL_FIXTURE[request.param]))


def truncate_all(engine: Engine) -> None:
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            tables = ", ".join(f'"{t}"' for t in ALL_TABLES)
            conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(ALL_TABLES):
                conn.execute(text(f'DELETE FROM "{table}"'))


def emptied_engine(url: str) -> Iterator[Engine]:
    """An engine on a migrated database, every table emptied before and after its use."""
    eng = make_engine(url)
    truncate_all(eng)
    yield eng
    truncate_all(eng)
    eng.dispose()


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """An engine on a migrated database; every table is emptied after the test."""
    yield from emptied_engine(db_url)


@pytest.fixture
def session_factory(engine: Engine) -> sessionmaker[Session]:
    return make_session_factory(engine)


@pytest.fixture
def session(session_factory: sessionmaker[Session]) -> Iterator[Session]:
    with session_factory() as s:
        yield s


@pytest.fixture(scope="session")
def redis_url() -> str:
    """The real Redis server's URL, checked once."""
    import redis

    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=2)
    try:
        client.ping()
    except Exception as exc:
        service_unavailable("Redis", exc)
    finally:
        client.close()
    return REDIS_URL
