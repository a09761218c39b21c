"""Fault handling against fake servers (``httpx.MockTransport``): each case's exact behaviour."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import httpx
import pytest

from connectors import (
    AuthenticationError,
    MalformedPageError,
    PermanentError,
    TransientError,
    UnsupportedResourceError,
    parse_retry_after,
)
from tests.connectors.helpers import (
    BASE,
    Recorder,
    make_source,
    outcome,
    patient,
    searchset,
)


def ids(pages: list) -> list[str]:
    return [r["id"] for page in pages for r in page.resources]


def test_429_waits_exactly_the_retry_after_then_succeeds() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if n == 1:
            return httpx.Response(429, headers={"Retry-After": "7"}, json=outcome("slow down"))
        return httpx.Response(200, json=searchset([patient("a")]))

    handler, sleeps = Recorder(answer), []
    pages = list(make_source(handler, sleeps=sleeps).stream("Patient"))
    assert ids(pages) == ["a"]
    assert sleeps == [7.0]
    assert len(handler.requests) == 2
    assert handler.requests[0].url == handler.requests[1].url


def test_retry_after_as_http_date_is_honoured() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)
    assert parse_retry_after("Thu, 01 Jan 2026 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Thu, 01 Jan 2026 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("soon", now=now) is None


def test_retry_after_beyond_the_cap_is_left_to_the_scheduler() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(429, headers={"Retry-After": "3600"})

    handler, sleeps = Recorder(answer), []
    source = make_source(handler, sleeps=sleeps, options={"max_retry_after_s": 60})
    with pytest.raises(TransientError) as caught:
        list(source.stream("Patient"))
    assert caught.value.retry_after == 3600.0
    assert caught.value.status_code == 429
    assert sleeps == []
    assert len(handler.requests) == 1


def test_503_then_success_backs_off_once_with_jitter() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if n == 1:
            return httpx.Response(503)
        return httpx.Response(200, json=searchset([patient("a"), patient("b")]))

    handler, sleeps = Recorder(answer), []
    source = make_source(handler, sleeps=sleeps, options={"backoff_base_s": 0.5})
    assert ids(list(source.stream("Patient"))) == ["a", "b"]
    assert len(sleeps) == 1
    assert 0.0 <= sleeps[0] <= 0.5
    assert len(handler.requests) == 2


def test_5xx_on_every_attempt_raises_transient_after_max_attempts() -> None:
    handler, sleeps = Recorder(lambda request, n: httpx.Response(502)), []
    with pytest.raises(TransientError) as caught:
        list(make_source(handler, sleeps=sleeps).stream("Patient"))
    assert caught.value.status_code == 502
    assert len(handler.requests) == 3  # max_attempts in FAST_OPTIONS
    assert len(sleeps) == 2
    # exponential ceiling: attempt 1 <= base, attempt 2 <= 2 * base
    assert sleeps[0] <= 0.01 and sleeps[1] <= 0.02


def test_timeout_is_retried_then_raised_as_transient() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        raise httpx.ReadTimeout("read timed out", request=request)

    handler, sleeps = Recorder(answer), []
    with pytest.raises(TransientError) as caught:
        list(make_source(handler, sleeps=sleeps).stream("Patient"))
    assert "timed out" in str(caught.value)
    assert caught.value.url == f"{BASE}/Patient"
    assert len(handler.requests) == 3
    assert len(sleeps) == 2


def test_timeout_then_success_delivers_the_page() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if n == 1:
            raise httpx.ConnectTimeout("connect timed out", request=request)
        return httpx.Response(200, json=searchset([patient("a")]))

    handler = Recorder(answer)
    assert ids(list(make_source(handler).stream("Patient"))) == ["a"]
    assert len(handler.requests) == 2


def test_malformed_json_page_raises_with_the_url_only() -> None:
    secret_body = b'{"resourceType": "Bundle", "entry": [{"resource": {"name": "Jane Doe"'

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if "page=2" in str(request.url):
            return httpx.Response(200, content=secret_body)
        return httpx.Response(200, json=searchset([patient("a")], f"{BASE}/Patient?page=2"))

    handler = Recorder(answer)
    stream = make_source(handler).stream("Patient")
    first = next(stream)
    assert ids([first]) == ["a"]
    assert first.cursor is not None  # the good page before the bad one can be committed
    with pytest.raises(MalformedPageError) as caught:
        next(stream)
    assert isinstance(caught.value, PermanentError)
    assert caught.value.url == f"{BASE}/Patient"
    assert "Jane" not in str(caught.value)
    assert len(handler.requests) == 2  # not retried


def test_next_link_is_followed_verbatim_and_a_repeated_resource_comes_once() -> None:
    page2 = f"{BASE}/Patient?_getpages=opaque-token&_page=2"

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if n == 1:
            return httpx.Response(200, json=searchset([patient("a"), patient("b")], page2))
        # the server's page 2 repeats b (same version) and brings b's newer version and c
        return httpx.Response(
            200, json=searchset([patient("b"), patient("b", version="2"), patient("c")])
        )

    handler = Recorder(answer)
    pages = list(make_source(handler).stream("Patient"))
    assert str(handler.requests[1].url) == page2
    delivered = [(r["id"], r["meta"]["versionId"]) for p in pages for r in p.resources]
    assert delivered == [("a", "1"), ("b", "1"), ("b", "2"), ("c", "1")]


def test_next_link_that_loops_back_fails_instead_of_spinning() -> None:
    loop = f"{BASE}/Patient?page=2"
    handler = Recorder(lambda request, n: httpx.Response(200, json=searchset([], loop)))
    with pytest.raises(PermanentError, match="repeats"):
        list(make_source(handler).stream("Patient"))
    assert len(handler.requests) == 2


def test_401_then_a_fresh_token_once() -> None:
    tokens = iter(["token-one", "token-two"])

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": next(tokens), "expires_in": 3600})
        if request.headers["Authorization"] == "Bearer token-one":
            return httpx.Response(401, json=outcome("token revoked", "login"))
        return httpx.Response(200, json=searchset([patient("a")]))

    handler = Recorder(answer)
    auth = {
        "kind": "client_credentials",
        "token_url": "https://ehr.example/oauth/token",
        "client_id": "askonce",
        "client_secret": "s3cret-value",
    }
    source = make_source(handler, auth=auth)
    assert ids(list(source.stream("Patient"))) == ["a"]
    paths = [r.url.path for r in handler.requests]
    assert paths == ["/oauth/token", "/fhir/Patient", "/oauth/token", "/fhir/Patient"]
    assert handler.requests[0].headers["Authorization"].startswith("Basic ")
    # the fresh token is cached: the next request needs no token call
    assert source.fetch("Patient", "a") is not None
    assert [r.url.path for r in handler.requests[4:]] == ["/fhir/Patient/a"]
    assert handler.requests[4].headers["Authorization"] == "Bearer token-two"


def test_401_with_a_fresh_token_is_an_authentication_error() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path == "/oauth/token":
            return httpx.Response(200, json={"access_token": f"t{n}", "expires_in": 3600})
        return httpx.Response(401, json=outcome("no access", "login"))

    handler = Recorder(answer)
    auth = {
        "kind": "client_credentials",
        "token_url": "https://ehr.example/oauth/token",
        "client_id": "askonce",
        "client_secret": "s3cret-value",
        "auth_method": "client_secret_post",
    }
    with pytest.raises(AuthenticationError) as caught:
        list(make_source(handler, auth=auth).stream("Patient"))
    assert caught.value.status_code == 401
    assert len(handler.requests) == 4  # token, 401, token, 401: exactly one refresh
    assert b"client_secret=s3cret-value" in handler.requests[0].content


def test_token_endpoint_refusal_is_permanent_and_names_the_oauth_error() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(401, json={"error": "invalid_client"})

    handler = Recorder(answer)
    auth = {
        "kind": "client_credentials",
        "token_url": "https://ehr.example/oauth/token",
        "client_id": "askonce",
        "client_secret": "wrong",
    }
    with pytest.raises(AuthenticationError, match="invalid_client") as caught:
        list(make_source(handler, auth=auth).stream("Patient"))
    assert "wrong" not in str(caught.value)
    assert len(handler.requests) == 1


def test_404_for_an_unsupported_resource_type_fails_at_once_with_the_outcome() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(404, json=outcome("Unknown resource type 'Encounter'"))

    handler, sleeps = Recorder(answer), []
    with pytest.raises(UnsupportedResourceError) as caught:
        list(make_source(handler, sleeps=sleeps).stream("Encounter"))
    assert caught.value.status_code == 404
    assert caught.value.outcome == "error not-supported: Unknown resource type 'Encounter'"
    assert "Unknown resource type 'Encounter'" in str(caught.value)
    assert len(handler.requests) == 1
    assert sleeps == []


def test_other_4xx_fails_at_once_with_the_outcome_text() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        return httpx.Response(400, json=outcome("Unknown search parameter _sort", "invalid"))

    handler = Recorder(answer)
    with pytest.raises(PermanentError) as caught:
        list(make_source(handler).stream("Patient"))
    assert caught.value.outcome == "error invalid: Unknown search parameter _sort"
    assert not isinstance(caught.value, TransientError)
    assert len(handler.requests) == 1


def test_fetch_returns_none_for_a_missing_resource() -> None:
    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if request.url.path.endswith("/gone"):
            return httpx.Response(410, json=outcome("deleted", "deleted"))
        if request.url.path.endswith("/missing"):
            return httpx.Response(404, text="not found")
        return httpx.Response(200, content=json.dumps(patient("here")).encode())

    source = make_source(Recorder(answer))
    assert source.fetch("Patient", "missing") is None
    assert source.fetch("Patient", "gone") is None
    found = source.fetch("Patient", "here")
    assert found is not None and found["id"] == "here"


def test_a_next_link_to_another_host_is_followed_without_our_credentials() -> None:
    elsewhere = "https://cdn.elsewhere.example/fhir/Patient?page=2"

    def answer(request: httpx.Request, n: int) -> httpx.Response:
        if n == 1:
            return httpx.Response(200, json=searchset([patient("a")], elsewhere))
        return httpx.Response(200, json=searchset([patient("b")]))

    handler = Recorder(answer)
    source = make_source(handler, auth={"kind": "bearer", "token": "tok"})
    assert ids(list(source.stream("Patient"))) == ["a", "b"]
    assert handler.requests[0].headers["Authorization"] == "Bearer tok"
    assert str(handler.requests[1].url) == elsewhere
    assert "Authorization" not in handler.requests[1].headers
