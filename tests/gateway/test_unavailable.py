"""A database that cannot answer for a moment is a 503 ``transient`` with ``Retry-After``,
not a 500: the request's transaction was rolled back whole, so the client sends it again.

The failure is real: another connection holds what the request needs past the gateway's
wait (PostgreSQL: an exclusive lock on the golden records and a lock timeout; SQLite: the
file's write lock and a short busy timeout)."""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import pytest
from fastapi.testclient import TestClient
from fhir.resources.R4B.operationoutcome import OperationOutcome
from sqlalchemy import Engine, func, select, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from gateway import GatewayState, create_app
from store import make_engine, make_session_factory
from store.db import PG_OPTIONS
from store.models import GoldenPatient, LinkHistory
from tests.gateway.conftest import SECRET
from tests.gateway.test_merge import ADA_B, FHIR, body
from tests.gateway.test_mpi_wiring import ADA, ingest

#: How long the gateway's connections wait for a lock here.
SHORT_WAIT_MS = 300


@contextmanager
def held(engine: Engine, db_url: str) -> Iterator[None]:
    """Another connection holds what a merge needs until the block ends."""
    if engine.dialect.name == "postgresql":
        with engine.connect() as holder:
            holder.execute(text("LOCK TABLE golden_patient IN ACCESS EXCLUSIVE MODE"))
            yield
            holder.rollback()
        return
    path = engine.url.database
    assert path
    holder = sqlite3.connect(path, timeout=5)
    holder.execute("BEGIN IMMEDIATE")
    try:
        yield
    finally:
        holder.rollback()
        holder.close()


@pytest.fixture
def impatient_client(engine: Engine, db_url: str) -> Iterator[TestClient]:
    """The gateway on an engine whose connections give up on a held lock quickly."""
    if engine.dialect.name == "postgresql":
        options = f"{PG_OPTIONS} -c lock_timeout={SHORT_WAIT_MS}"
        impatient = make_engine(db_url, connect_args={"options": options})
    else:
        impatient = make_engine(db_url, connect_args={"timeout": SHORT_WAIT_MS / 1000})
    state = GatewayState(
        engine=impatient,
        session_factory=make_session_factory(impatient),
        secret_key=SECRET,
        max_body_bytes=64 * 1024,
    )
    with TestClient(create_app(state), base_url="http://testserver") as client:
        yield client
    impatient.dispose()


def test_a_merge_the_database_cannot_take_now_is_a_503_to_send_again(
    impatient_client: TestClient,
    engine: Engine,
    db_url: str,
    session_factory: sessionmaker[Session],
    auth_for: Callable[..., dict[str, str]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    with session_factory() as session:
        ada, ada_b = (r.golden_id for r in ingest(session, "ehr-a", [ADA, ADA_B]))
    assert ada != ada_b
    merger = {**auth_for("system/Patient.rus", client_id="registration-desk"), **FHIR}
    request = body(ada_b, ada)
    with caplog.at_level(logging.WARNING), held(engine, db_url):
        reply = impatient_client.post("/fhir/Patient/$merge", json=request, headers=merger)
    assert reply.status_code == 503, reply.text
    assert reply.headers["Retry-After"] == "2"
    assert reply.headers["content-type"].startswith("application/fhir+json")
    issue = OperationOutcome.model_validate(reply.json()).issue[0]
    assert (issue.severity, issue.code) == ("error", "transient")
    assert "database is unavailable" in (issue.diagnostics or "")
    logged = [r for r in caplog.records if r.getMessage() == "database unavailable"]
    assert logged and logged[0].levelno == logging.WARNING  # not an "unhandled error"
    assert "Oyelaran" not in caplog.text and "1984-06-02" not in caplog.text
    with session_factory() as session:  # the merge changed nothing
        assert session.scalar(select(func.max(GoldenPatient.version))) == 1
        assert session.scalar(select(func.count()).select_from(LinkHistory)) == 2  # the links
    # The same request, sent again once the lock is gone, merges.
    again = impatient_client.post("/fhir/Patient/$merge", json=request, headers=merger)
    assert again.status_code == 200, again.text
    with session_factory() as session:
        merged = session.get(GoldenPatient, ada_b)
        assert merged is not None and merged.status == "merged"


def test_a_database_error_a_retry_cannot_cure_stays_a_500(
    engine: Engine, session_factory: sessionmaker[Session], headers: dict[str, str]
) -> None:
    """A missing table (a schema behind the code, a bug) fails every time: 500, no
    Retry-After, logged as an unhandled error."""
    with engine.connect() as conn:
        try:
            conn.execute(text("SELECT * FROM no_such_table"))
        except DBAPIError as exc:
            missing = exc
    state = GatewayState(
        engine=engine, session_factory=session_factory, secret_key=SECRET, max_body_bytes=1024
    )
    app = create_app(state)

    async def broken(_golden_id: str) -> None:
        raise missing

    with TestClient(app, raise_server_exceptions=False) as client:
        app.state.reader.read = broken
        reply = client.get("/fhir/Patient/abc", headers=headers)
    assert reply.status_code == 500
    assert "Retry-After" not in reply.headers
    assert reply.json()["issue"][0]["code"] == "exception"
