"""Tokens, client authentication and SMART scopes, as a consumer experiences them."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from gateway.auth import ScopeSet, TokenService, register_consumer
from gateway.auth.scopes import InvalidScopeError, parse_scope
from store.models import Consumer
from tests.gateway.conftest import SECRET


@pytest.fixture
def consumer(session_factory: sessionmaker[Session]) -> tuple[str, str]:
    with session_factory() as session:
        creds = register_consumer(
            session, "crm-main", "crm", ["system/Patient.rs", "system/Encounter.rs"]
        )
        session.commit()
    return creds.client_id, creds.client_secret


def _basic(client_id: str, secret: str) -> dict[str, str]:
    raw = base64.b64encode(f"{client_id}:{secret}".encode()).decode()
    return {"Authorization": f"Basic {raw}"}


def test_client_secret_basic_token_reads_patients(
    client: TestClient, consumer: tuple[str, str], add_patient: Callable[..., str]
) -> None:
    golden_id = add_patient()
    reply = client.post(
        "/auth/token", data={"grant_type": "client_credentials"}, headers=_basic(*consumer)
    )
    assert reply.status_code == 200, reply.text
    body = reply.json()
    assert body["token_type"] == "bearer" and body["expires_in"] == 300
    assert reply.headers["cache-control"] == "no-store"
    read = client.get(
        f"/fhir/Patient/{golden_id}", headers={"Authorization": f"Bearer {body['access_token']}"}
    )
    assert read.status_code == 200 and read.json()["id"] == golden_id


def test_client_secret_post_can_narrow_scopes(
    client: TestClient, consumer: tuple[str, str], add_patient: Callable[..., str]
) -> None:
    client_id, secret = consumer
    reply = client.post(
        "/auth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": client_id,
            "client_secret": secret,
            "scope": "system/Encounter.rs",
        },
    )
    assert reply.status_code == 200 and reply.json()["scope"] == "system/Encounter.rs"
    token = reply.json()["access_token"]
    denied = client.get(
        f"/fhir/Patient/{add_patient()}", headers={"Authorization": f"Bearer {token}"}
    )
    assert denied.status_code == 403
    assert denied.json()["issue"][0]["code"] == "forbidden"


@pytest.mark.parametrize(
    ("data", "status", "error"),
    [
        ({"grant_type": "client_credentials", "client_secret": "wrong"}, 401, "invalid_client"),
        ({"grant_type": "password"}, 400, "unsupported_grant_type"),
        ({"grant_type": "client_credentials", "scope": "system/*.cruds"}, 400, "invalid_scope"),
    ],
)
def test_token_errors_follow_rfc6749(
    client: TestClient, consumer: tuple[str, str], data: dict[str, str], status: int, error: str
) -> None:
    client_id, secret = consumer
    form = {"client_id": client_id, "client_secret": secret, **data}
    reply = client.post("/auth/token", data=form)
    assert reply.status_code == status
    assert reply.json()["error"] == error
    assert "access_token" not in reply.text


def test_unknown_client_and_deactivated_client_get_no_token(
    client: TestClient, consumer: tuple[str, str], session_factory: sessionmaker[Session]
) -> None:
    client_id, secret = consumer
    unknown = client.post(
        "/auth/token", data={"grant_type": "client_credentials"}, headers=_basic("nobody", secret)
    )
    assert unknown.status_code == 401
    with session_factory() as session:
        session.scalars(select(Consumer)).one().active = False
        session.commit()
    blocked = client.post(
        "/auth/token", data={"grant_type": "client_credentials"}, headers=_basic(client_id, secret)
    )
    assert blocked.status_code == 401


def test_only_a_hash_of_the_secret_is_stored(
    consumer: tuple[str, str], session_factory: sessionmaker[Session]
) -> None:
    with session_factory() as session:
        stored = session.scalars(select(Consumer)).one().secret_hash
    assert consumer[1] not in stored and stored.startswith("scrypt$")


def test_no_token_bad_token_and_expired_token_are_401_outcomes(
    client: TestClient, add_patient: Callable[..., str]
) -> None:
    url = f"/fhir/Patient/{add_patient()}"
    expired = TokenService(SECRET, lifetime_s=60).issue(
        "old", ["system/Patient.rs"], now=time.time() - 3600
    )
    forged = TokenService("another-secret-" + "z" * 32).issue("evil", ["system/*.rs"])
    for headers in (
        {},
        {"Authorization": "Bearer not-a-jwt"},
        {"Authorization": f"Bearer {expired}"},
        {"Authorization": f"Bearer {forged}"},
        {"Authorization": "Basic Zm9vOmJhcg=="},
    ):
        reply = client.get(url, headers=headers)
        assert reply.status_code == 401
        assert reply.headers["content-type"].startswith("application/fhir+json")
        assert reply.json()["issue"][0]["code"] == "login"
        assert reply.headers["www-authenticate"].startswith("Bearer")


def test_scopes_are_enforced_per_route(
    client: TestClient, auth_for: Callable[..., dict[str, str]], add_patient: Callable[..., str]
) -> None:
    golden_id = add_patient()
    patient_only = auth_for("system/Patient.rs")
    assert client.get(f"/fhir/Patient/{golden_id}", headers=patient_only).status_code == 200
    assert client.get("/fhir/Encounter", headers=patient_only).status_code == 403
    assert (
        client.get(f"/fhir/Patient/{golden_id}/$everything", headers=patient_only).status_code
        == 403
    )
    search_only = auth_for("system/Patient.s")
    assert client.get(f"/fhir/Patient/{golden_id}", headers=search_only).status_code == 403
    assert client.get("/fhir/Patient", headers=search_only).status_code == 200
    # SMART v1 ".read" still works; a patient/ scope needs a launch context we do not have.
    assert (
        client.get(
            f"/fhir/Patient/{golden_id}", headers=auth_for("system/Patient.read")
        ).status_code
        == 200
    )
    assert (
        client.get(f"/fhir/Patient/{golden_id}", headers=auth_for("patient/*.rs")).status_code
        == 403
    )


def test_admin_api_needs_the_admin_scope(
    client: TestClient, auth_for: Callable[..., dict[str, str]]
) -> None:
    wildcard = auth_for("system/*.cruds")
    reply = client.get("/admin/sources", headers=wildcard)
    assert reply.status_code == 403 and reply.json()["resourceType"] == "OperationOutcome"
    assert client.get("/admin/sources", headers=auth_for("askonce.admin")).status_code == 200
    assert client.get("/admin/sources").status_code == 401


def test_scope_grammar() -> None:
    assert ScopeSet.of(["system/Patient.rs"]).allows("Patient", "s")
    assert not ScopeSet.of(["system/Patient.rs"]).allows("Patient", "u")
    assert ScopeSet.of(["system/*.read"]).allows("Encounter", "r")
    assert not ScopeSet.of(["user/Patient.c"]).allows("Patient", "r")
    for bad in ("system/Patient.sr", "system/patient.rs", "Patient.read", "system/Patient."):
        with pytest.raises(InvalidScopeError):
            parse_scope(bad)


def test_register_consumer_refuses_bad_input(session: Session) -> None:
    with pytest.raises(ValueError, match="kind"):
        register_consumer(session, "x", "spaceship", ["system/Patient.rs"])
    with pytest.raises(InvalidScopeError):
        register_consumer(session, "x", "crm", ["read everything"])
