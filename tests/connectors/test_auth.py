"""Auth classes: SMART Backend Services assertions, token caching, and no secret in logs."""

from __future__ import annotations

import logging
import time

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from askonce.logging import JsonFormatter
from connectors import SmartBackendServicesAuth, build_auth
from tests.connectors.helpers import BASE, Recorder, make_source, patient, searchset

TOKEN_URL = "https://ehr.example/oauth2/token"


def pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def smart_server(assertions: list[str], tokens: list[str]) -> Recorder:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path == "/fhir/.well-known/smart-configuration":
            return httpx.Response(200, json={"token_endpoint": TOKEN_URL})
        if request.url.path == "/oauth2/token":
            form = dict(httpx.QueryParams(request.content.decode()))
            assert form["grant_type"] == "client_credentials"
            assert form["client_assertion_type"] == (
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
            )
            assertions.append(form["client_assertion"])
            tokens.append(f"access-{len(tokens)}")
            return httpx.Response(200, json={"access_token": tokens[-1], "expires_in": 300})
        return httpx.Response(200, json=searchset([patient("a")]))

    return Recorder(answer)


@pytest.mark.parametrize(
    ("alg", "key"),
    [
        ("RS384", rsa.generate_private_key(public_exponent=65537, key_size=2048)),
        ("ES384", ec.generate_private_key(ec.SECP384R1())),
    ],
)
def test_smart_backend_services_discovers_and_signs_a_short_lived_assertion(
    alg: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
) -> None:
    assertions: list[str] = []
    tokens: list[str] = []
    handler = smart_server(assertions, tokens)
    auth = {
        "kind": "smart",
        "client_id": "askonce-client",
        "private_key_pem": pem(key),
        "kid": "key-1",
        "alg": alg,
        "scope": "system/Patient.rs",
    }
    source = make_source(handler, auth=auth)
    list(source.stream("Patient"))
    list(source.stream("Patient"))
    paths = [r.url.path for r in handler.requests]
    assert paths == [
        "/fhir/.well-known/smart-configuration",
        "/oauth2/token",
        "/fhir/Patient",
        "/fhir/Patient",  # the token is cached
    ]
    assert handler.requests[2].headers["Authorization"] == "Bearer access-0"
    header = jwt.get_unverified_header(assertions[0])
    assert header["alg"] == alg and header["kid"] == "key-1"
    claims = jwt.decode(assertions[0], key.public_key(), algorithms=[alg], audience=TOKEN_URL)
    assert claims["iss"] == claims["sub"] == "askonce-client"
    assert claims["jti"]
    assert 0 < claims["exp"] - time.time() <= 300


def test_each_assertion_has_a_new_jti_and_the_token_is_refreshed_before_expiry() -> None:
    now = [1_000_000.0]
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    auth = SmartBackendServicesAuth(
        fhir_base_url=BASE,
        client_id="c",
        private_key_pem=pem(key),
        kid="k",
        token_url=TOKEN_URL,
        clock=lambda: now[0],
    )
    assertions: list[str] = []
    tokens: list[str] = []
    handler = smart_server(assertions, tokens)
    with httpx.Client(auth=auth, transport=handler.transport) as client:
        client.get(f"{BASE}/Patient")
        now[0] += 200  # 100 s left of a 300 s token: still used
        client.get(f"{BASE}/Patient")
        now[0] += 80  # 20 s left: inside the refresh margin
        client.get(f"{BASE}/Patient")
    assert [r.url.path for r in handler.requests].count("/oauth2/token") == 2
    jtis = {jwt.decode(a, options={"verify_signature": False})["jti"] for a in assertions}
    assert len(jtis) == 2


SMART_KEY = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))


def smart_auth(**changes: str) -> dict[str, str]:
    return {
        "kind": "smart",
        "client_id": "askonce-client",
        "private_key_pem": SMART_KEY,
        "kid": "key-1",
        "scope": "system/Patient.rs",
        **changes,
    }


def test_sources_built_again_share_their_clients_token() -> None:
    """A sync builds its source again for each chunk (a page, on a worker): the token, and
    the SMART discovery before it, are asked for once per client, not once per page."""
    assertions: list[str] = []
    tokens: list[str] = []
    handler = smart_server(assertions, tokens)
    for _chunk in range(3):
        source = make_source(handler, auth=smart_auth())
        list(source.stream("Patient"))
        source.close()
    paths = [r.url.path for r in handler.requests]
    assert paths.count("/oauth2/token") == 1
    assert paths.count("/fhir/.well-known/smart-configuration") == 1
    assert {
        r.headers["Authorization"] for r in handler.requests if r.url.path == "/fhir/Patient"
    } == {"Bearer access-0"}
    # Another client, scope or key is another token.
    other_key = pem(rsa.generate_private_key(public_exponent=65537, key_size=2048))
    for changes in (
        {"client_id": "other-client"},
        {"scope": "system/*.rs"},
        {"private_key_pem": other_key},
    ):
        list(make_source(handler, auth=smart_auth(**changes)).stream("Patient"))
    assert [r.url.path for r in handler.requests].count("/oauth2/token") == 4


def test_a_refused_shared_token_is_replaced_for_every_source() -> None:
    """A 401 (the EHR revoked the token) drops it from the shared cache: the next source
    built uses the fresh one instead of meeting the 401 again."""
    issued: list[str] = []
    used: list[str | None] = []  # as sent (a retried request's headers change afterwards)

    def answer(request: httpx.Request, _n: int) -> httpx.Response:
        if request.url.path == "/fhir/Patient":
            used.append(request.headers.get("Authorization"))
        if request.url.path == "/oauth2/token":
            issued.append(f"token-{len(issued)}")
            return httpx.Response(200, json={"access_token": issued[-1], "expires_in": 3600})
        if request.headers.get("Authorization") == "Bearer token-0" and len(issued) == 1:
            return httpx.Response(401)  # token-0 was revoked after its first use
        return httpx.Response(200, json=searchset([patient("a")]))

    handler = Recorder(answer)
    auth = {
        "kind": "client_credentials",
        "token_url": TOKEN_URL,
        "client_id": "c",
        "client_secret": "s3cret",
    }
    list(make_source(handler, auth=auth).stream("Patient"))  # 401, then token-1
    list(make_source(handler, auth=auth).stream("Patient"))
    list(make_source(handler, auth={**auth, "client_secret": "rotated"}).stream("Patient"))
    assert issued == ["token-0", "token-1", "token-2"]  # the rotated secret asks its own
    assert used == [
        "Bearer token-0",
        "Bearer token-1",  # the same request, sent again with a fresh token
        "Bearer token-1",  # the next source: the shared, fresh token
        "Bearer token-2",
    ]


def test_smart_rejects_algorithms_other_than_rs384_and_es384() -> None:
    with pytest.raises(ValueError, match="RS384"):
        build_auth(
            {"kind": "smart", "client_id": "c", "kid": "k", "alg": "HS256", "private_key_pem": "x"},
            BASE,
        )


def test_unknown_auth_kind_and_missing_fields_are_configuration_errors() -> None:
    with pytest.raises(ValueError, match="unknown auth kind"):
        build_auth({"kind": "kerberos"}, BASE)
    with pytest.raises(ValueError, match="password"):
        build_auth({"kind": "basic", "username": "u"}, BASE)


def test_basic_and_bearer_send_their_headers() -> None:
    handler = Recorder(lambda request, n: httpx.Response(200, json=searchset([])))
    list(make_source(handler, auth={"kind": "bearer", "token": "tok"}).stream("Patient"))
    list(
        make_source(handler, auth={"kind": "basic", "username": "u", "password": "p"}).stream(
            "Patient"
        )
    )
    assert handler.requests[0].headers["Authorization"] == "Bearer tok"
    assert handler.requests[1].headers["Authorization"] == "Basic dTpw"


def test_no_secret_or_patient_data_reaches_the_logs(caplog: pytest.LogCaptureFixture) -> None:
    """Retries, token calls, a failure and a success, all logged at DEBUG: nothing sensitive."""
    secret, name, birth = "client-secret-XYZ", "Zebediah", "1931-02-03"
    issued: list[str] = []

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path == "/oauth/token":
            issued.append(f"access-token-{n}")
            return httpx.Response(200, json={"access_token": issued[-1], "expires_in": 3600})
        if n == 2:
            return httpx.Response(503, json={"resourceType": "OperationOutcome", "issue": []})
        record = patient("p1")
        record["name"] = [{"family": name}]
        record["birthDate"] = birth
        return httpx.Response(200, json=searchset([record]))

    auth = {
        "kind": "client_credentials",
        "token_url": "https://ehr.example/oauth/token",
        "client_id": "askonce",
        "client_secret": secret,
    }
    caplog.set_level(logging.DEBUG)
    source = make_source(Recorder(answer), auth=auth)
    pages = list(source.stream("Patient"))
    assert pages[0].resources[0]["name"][0]["family"] == name  # data did flow
    assert secret not in repr(source.http.client.auth)
    formatter = JsonFormatter()
    rendered = "\n".join(formatter.format(record) for record in caplog.records)
    everything = caplog.text + rendered
    assert any(r.getMessage() == "connector request will be retried" for r in caplog.records)
    for sensitive in (secret, *issued, name, birth, "Basic "):
        assert sensitive not in everything
