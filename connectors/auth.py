"""Authentication for sources, one :class:`httpx.Auth` class per kind.

To add a kind, subclass ``httpx.Auth`` (or :class:`OAuthTokenAuth` for anything
that trades credentials for a bearer token: implement ``token_request_flow``)
and register it in :func:`build_auth`.

* ``none``: no header.
* ``basic``: RFC 7617, :class:`httpx.BasicAuth`.
* ``bearer``: a static token.
* ``client_credentials``: OAuth 2.0 client_credentials with a client secret
  (RFC 6749 §4.4), ``client_secret_basic`` or ``client_secret_post``.
* ``smart``: SMART Backend Services
  (https://hl7.org/fhir/smart-app-launch/backend-services.html): token endpoint
  discovered from ``.well-known/smart-configuration``, a client-assertion JWT
  signed with RS384 or ES384 carrying ``kid`` and ``jti`` and expiring within 5 minutes.

Token kinds cache the access token until shortly before it expires, and retry a
request once with a fresh token when the server answers 401. The cache belongs to the
process, not to one connector: a sync builds its source again for every chunk (a page,
on a worker), and a token per page would have sent a SMART client's signed assertion
to the EHR's token endpoint thousands of times a sync (and read its discovery
document as often), where the token lives for minutes. Entries are keyed by the kind,
the endpoint (or FHIR base), the client, the scope and a digest of the secret or key,
so two sources share a token only when they would have asked for the same one.
Secrets never appear in ``repr``, log records or error messages.
"""

from __future__ import annotations

import abc
import functools
import hashlib
import threading
import time
import uuid
from collections.abc import Generator
from pathlib import Path
from typing import Any

import httpx
import jwt

from connectors.errors import AuthenticationError, TransientError

#: Refresh a cached token this many seconds before it expires.
TOKEN_REFRESH_MARGIN_S = 30.0
#: Assumed lifetime when a token response has no ``expires_in``.
DEFAULT_TOKEN_LIFETIME_S = 300.0
#: Client assertions expire this soon; SMART requires at most 5 minutes, we keep a
#: minute of margin for clock skew between us and the authorization server.
ASSERTION_LIFETIME_S = 240
ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
SMART_CONFIGURATION_PATH = ".well-known/smart-configuration"
SMART_ALGORITHMS = ("RS384", "ES384")
DEFAULT_SMART_SCOPE = "system/*.rs"
CLIENT_AUTH_METHODS = ("client_secret_basic", "client_secret_post")
HTTP_OK = 200
HTTP_UNAUTHORIZED = 401
SERVER_ERROR_MIN = 500

AuthFlow = Generator[httpx.Request, httpx.Response, None]
TokenFlow = Generator[httpx.Request, httpx.Response, str]


class BearerTokenAuth(httpx.Auth):
    """A static bearer token (``Authorization: Bearer <token>``)."""

    def __init__(self, token: str) -> None:
        self._token = token

    def __repr__(self) -> str:
        return "BearerTokenAuth(token=***)"

    def auth_flow(self, request: httpx.Request) -> AuthFlow:
        request.headers["Authorization"] = f"Bearer {self._token}"
        yield request


class TokenCache:
    """Access tokens by client (see the module docstring), shared by a process's connectors."""

    def __init__(self) -> None:
        self._tokens: dict[str, tuple[str, float]] = {}
        self._lock = threading.Lock()

    def get(self, key: str, now: float) -> str | None:
        """The token of ``key`` while it has more than the refresh margin to live."""
        with self._lock:
            found = self._tokens.get(key)
        if found is not None and now < found[1] - TOKEN_REFRESH_MARGIN_S:
            return found[0]
        return None

    def put(self, key: str, token: str, expires_at: float) -> None:
        with self._lock:
            self._tokens[key] = (token, expires_at)

    def drop(self, key: str, token: str) -> None:
        """Forget ``token`` (refused with a 401), unless another request replaced it."""
        with self._lock:
            if self._tokens.get(key, ("",))[0] == token:
                del self._tokens[key]

    def clear(self) -> None:
        with self._lock:
            self._tokens.clear()


#: The process's token cache.
TOKENS = TokenCache()


class OAuthTokenAuth(httpx.Auth, abc.ABC):
    """Base for kinds that obtain a bearer token from a token endpoint.

    Subclasses implement :meth:`token_request_flow`, a generator that yields the
    token request(s) and returns the token response's JSON, and :meth:`cache_parts`, what
    tells their token apart from another client's. Caching (in ``cache``, the process's
    by default), expiry and the single retry on 401 live here.
    """

    requires_response_body = True

    def __init__(self, *, clock: Any = time.time, cache: TokenCache | None = None) -> None:
        self._clock = clock
        self._cache = TOKENS if cache is None else cache

    @abc.abstractmethod
    def token_request_flow(self) -> Generator[httpx.Request, httpx.Response, dict[str, Any]]:
        """Yield the token request(s); return the token response's JSON object."""

    @abc.abstractmethod
    def cache_parts(self) -> tuple[str, ...]:
        """What identifies the token this client gets (endpoint, client, scope, secret)."""

    @functools.cached_property
    def cache_key(self) -> str:
        """Taken once, when the first request needs a token (a SMART client's discovered
        endpoint does not change it)."""
        parts = (type(self).__name__, *self.cache_parts())
        return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()

    def _fresh_token(self) -> TokenFlow:
        body = yield from self.token_request_flow()
        token = body.get("access_token")
        if not isinstance(token, str) or not token:
            raise AuthenticationError("token response has no access_token")
        lifetime = body.get("expires_in")
        seconds = float(lifetime) if isinstance(lifetime, int | float) else DEFAULT_TOKEN_LIFETIME_S
        self._cache.put(self.cache_key, token, self._clock() + seconds)
        return token

    def _valid_token(self) -> str | None:
        return self._cache.get(self.cache_key, self._clock())

    def auth_flow(self, request: httpx.Request) -> AuthFlow:
        token = self._valid_token()
        if token is None:
            token = yield from self._fresh_token()
        request.headers["Authorization"] = f"Bearer {token}"
        response = yield request
        if response.status_code == HTTP_UNAUTHORIZED:
            self._cache.drop(self.cache_key, token)
            token = yield from self._fresh_token()
            request.headers["Authorization"] = f"Bearer {token}"
            yield request


def _json_body(response: httpx.Response, url: str, what: str = "") -> Any:
    """The JSON of an auth server's answer (None if it is not JSON); 5xx is transient."""
    if response.status_code >= SERVER_ERROR_MIN:
        raise TransientError(
            f"{what}{url} answered HTTP {response.status_code}",
            url=url,
            status_code=response.status_code,
        )
    try:
        return response.json()
    except ValueError:
        return None


def token_response_json(response: httpx.Response) -> dict[str, Any]:
    """Check a token endpoint's answer (RFC 6749 §5.1/§5.2) and return its JSON."""
    where = str(response.request.url.copy_with(query=None))
    body = _json_body(response, where, "token endpoint ")
    if response.status_code != HTTP_OK or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        raise AuthenticationError(
            f"token endpoint {where} refused the client: HTTP {response.status_code}"
            + (f" {error}" if isinstance(error, str) else ""),
            url=where,
            status_code=response.status_code,
        )
    return body


class ClientCredentialsAuth(OAuthTokenAuth):
    """OAuth 2.0 client_credentials grant with a shared client secret."""

    def __init__(
        self,
        *,
        token_url: str,
        client_id: str,
        client_secret: str,
        scope: str | None = None,
        auth_method: str = "client_secret_basic",
    ) -> None:
        super().__init__()
        if auth_method not in CLIENT_AUTH_METHODS:
            raise ValueError(f"auth_method must be one of {CLIENT_AUTH_METHODS}")
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self.scope = scope
        self.auth_method = auth_method

    def __repr__(self) -> str:
        return f"ClientCredentialsAuth(client_id={self.client_id!r}, client_secret=***)"

    def cache_parts(self) -> tuple[str, ...]:
        secret = hashlib.sha256(self._secret.encode()).hexdigest()
        return (self.token_url, self.client_id, self.scope or "", self.auth_method, secret)

    def token_request_flow(self) -> Generator[httpx.Request, httpx.Response, dict[str, Any]]:
        form = {"grant_type": "client_credentials"}
        if self.scope:
            form["scope"] = self.scope
        headers = {"Accept": "application/json"}
        if self.auth_method == "client_secret_post":
            form.update(client_id=self.client_id, client_secret=self._secret)
            request = httpx.Request("POST", self.token_url, data=form, headers=headers)
        else:
            request = httpx.Request("POST", self.token_url, data=form, headers=headers)
            request = next(httpx.BasicAuth(self.client_id, self._secret).auth_flow(request))
        response = yield request
        return token_response_json(response)


class SmartBackendServicesAuth(OAuthTokenAuth):
    """SMART Backend Services: private_key_jwt client assertion (RS384 or ES384).

    ``token_url`` may be omitted; it is then read from
    ``<fhir_base>/.well-known/smart-configuration`` on first use.
    """

    def __init__(
        self,
        *,
        fhir_base_url: str,
        client_id: str,
        private_key_pem: str,
        kid: str,
        alg: str = "RS384",
        scope: str = DEFAULT_SMART_SCOPE,
        token_url: str | None = None,
        jku: str | None = None,
        clock: Any = time.time,
    ) -> None:
        super().__init__(clock=clock)
        if alg not in SMART_ALGORITHMS:
            raise ValueError(f"SMART Backend Services signs with one of {SMART_ALGORITHMS}")
        self.fhir_base_url = fhir_base_url.rstrip("/")
        self.client_id = client_id
        self._private_key = private_key_pem
        self.kid = kid
        self.alg = alg
        self.scope = scope
        self.token_url = token_url
        self._configured_token_url = token_url
        self.jku = jku

    def __repr__(self) -> str:
        return (
            f"SmartBackendServicesAuth(client_id={self.client_id!r}, kid={self.kid!r}, "
            f"alg={self.alg})"
        )

    def cache_parts(self) -> tuple[str, ...]:
        key = hashlib.sha256(self._private_key.encode()).hexdigest()
        # The FHIR base stands for the token endpoint it discovers (or names it outright).
        endpoint = self._configured_token_url or self.fhir_base_url
        return (endpoint, self.client_id, self.kid, self.alg, self.scope, key)

    def client_assertion(self, token_url: str) -> str:
        """The signed JWT (https://hl7.org/fhir/smart-app-launch/backend-services.html#authenticating-to-the-token-endpoint)."""
        now = int(self._clock())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": token_url,
            "exp": now + ASSERTION_LIFETIME_S,
            "iat": now,
            "jti": uuid.uuid4().hex,
        }
        headers = {"kid": self.kid, "typ": "JWT"}
        if self.jku:
            headers["jku"] = self.jku
        return jwt.encode(claims, self._private_key, algorithm=self.alg, headers=headers)

    def _discover(self) -> Generator[httpx.Request, httpx.Response, str]:
        url = f"{self.fhir_base_url}/{SMART_CONFIGURATION_PATH}"
        response = yield httpx.Request("GET", url, headers={"Accept": "application/json"})
        body = _json_body(response, url)
        endpoint = body.get("token_endpoint") if isinstance(body, dict) else None
        if response.status_code != HTTP_OK or not isinstance(endpoint, str):
            raise AuthenticationError(
                f"no token_endpoint in {url} (HTTP {response.status_code})",
                url=url,
                status_code=response.status_code,
            )
        return endpoint

    def token_request_flow(self) -> Generator[httpx.Request, httpx.Response, dict[str, Any]]:
        if self.token_url is None:
            self.token_url = yield from self._discover()
        form = {
            "grant_type": "client_credentials",
            "scope": self.scope,
            "client_assertion_type": ASSERTION_TYPE,
            "client_assertion": self.client_assertion(self.token_url),
        }
        response = yield httpx.Request(
            "POST", self.token_url, data=form, headers={"Accept": "application/json"}
        )
        return token_response_json(response)


def _required(auth: dict[str, Any], *keys: str) -> list[str]:
    missing = [key for key in keys if not auth.get(key)]
    if missing:
        raise ValueError(f"auth kind {auth.get('kind')!r} needs {', '.join(missing)}")
    return [str(auth[key]) for key in keys]


def _private_key(auth: dict[str, Any]) -> str:
    if auth.get("private_key_pem"):
        return str(auth["private_key_pem"])
    if auth.get("private_key_path"):
        return Path(str(auth["private_key_path"])).read_text()
    raise ValueError("auth kind 'smart' needs private_key_pem or private_key_path")


def build_auth(auth: dict[str, Any] | None, fhir_base_url: str) -> httpx.Auth | None:
    """The ``httpx.Auth`` for a source's ``auth`` dict (see the README for the keys)."""
    auth = auth or {"kind": "none"}
    kind = auth.get("kind", "none")
    if kind == "none":
        return None
    if kind == "basic":
        username, password = _required(auth, "username", "password")
        return httpx.BasicAuth(username, password)
    if kind == "bearer":
        (token,) = _required(auth, "token")
        return BearerTokenAuth(token)
    if kind == "client_credentials":
        token_url, client_id, secret = _required(auth, "token_url", "client_id", "client_secret")
        return ClientCredentialsAuth(
            token_url=token_url,
            client_id=client_id,
            client_secret=secret,
            scope=auth.get("scope"),
            auth_method=auth.get("auth_method", "client_secret_basic"),
        )
    if kind == "smart":
        client_id, kid = _required(auth, "client_id", "kid")
        return SmartBackendServicesAuth(
            fhir_base_url=fhir_base_url,
            client_id=client_id,
            private_key_pem=_private_key(auth),
            kid=kid,
            alg=auth.get("alg", "RS384"),
            scope=auth.get("scope", DEFAULT_SMART_SCOPE),
            token_url=auth.get("token_url"),
            jku=auth.get("jku"),
        )
    raise ValueError(f"unknown auth kind {kind!r}")
