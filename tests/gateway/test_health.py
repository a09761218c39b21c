from __future__ import annotations

from pathlib import Path

from fastapi.testclient import TestClient

from askonce.runtime import build_runtime
from askonce.settings import Settings


def test_liveness_and_readiness(db_url: str) -> None:
    runtime = build_runtime(Settings(database_url=db_url))
    client = TestClient(runtime.create_app())
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json()["checks"] == {"database": "ok", "schema": "ok", "broker": "embedded"}


def test_readiness_checks_the_real_broker(sqlite_url: str, redis_url: str) -> None:
    runtime = build_runtime(Settings(database_url=sqlite_url, redis_url=redis_url))
    ready = TestClient(runtime.create_app()).get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["broker"] == "ok"


def test_not_ready_when_broker_is_unreachable(sqlite_url: str) -> None:
    # Port 1 on loopback: nothing listens there, the connection is refused at once.
    runtime = build_runtime(Settings(database_url=sqlite_url, redis_url="redis://127.0.0.1:1/0"))
    ready = TestClient(runtime.create_app()).get("/readyz")
    assert ready.status_code == 503
    assert ready.json()["checks"]["broker"].startswith("unreachable")


def test_not_ready_on_a_stale_schema_and_names_the_fix(tmp_path: Path) -> None:
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'empty.db'}")
    runtime = build_runtime(settings, check_schema=False)
    ready = TestClient(runtime.create_app()).get("/readyz")
    assert ready.status_code == 503
    assert "askonce db upgrade" in ready.json()["checks"]["schema"]
