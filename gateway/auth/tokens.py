"""Access tokens: short-lived JWTs signed HS256 with the gateway's secret (PyJWT).

Claims: ``iss``/``aud`` (this server), ``sub`` (the consumer's client id),
``scope`` (space-separated, RFC 8693 style), ``iat``, ``exp`` and ``jti``.
Verified tokens are cached until they expire, so the hot read path pays for one
signature check per token rather than per request.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass

import jwt

from gateway.auth.scopes import ScopeSet

ALGORITHM = "HS256"
ISSUER = "askonce"
AUDIENCE = "askonce-fhir"
DEFAULT_TOKEN_LIFETIME_S = 300
#: Verified tokens remembered (per process) so repeated requests skip the HMAC check.
VERIFIED_CACHE_SIZE = 4096
#: Seconds of clock skew tolerated when checking ``exp``/``iat``.
LEEWAY_S = 5


class InvalidTokenError(ValueError):
    """Signature, audience, issuer, expiry or scope claim is wrong."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a consumer's client id and what its token allows."""

    client_id: str
    scopes: ScopeSet
    expires_at: float


class TokenService:
    def __init__(self, secret: str, lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S) -> None:
        if not secret:
            raise ValueError("a signing secret is required")
        self._secret = secret
        self.lifetime_s = lifetime_s
        self._cache: OrderedDict[str, Principal] = OrderedDict()
        self._lock = threading.Lock()

    def issue(
        self,
        client_id: str,
        scopes: list[str],
        *,
        now: float | None = None,
        audience: str = AUDIENCE,
        lifetime_s: int | None = None,
    ) -> str:
        """A signed token for ``audience``: the API's bearer tokens by default; the steward
        console's session cookie has an audience of its own, so neither works as the other."""
        issued = int(now if now is not None else time.time())
        claims = {
            "iss": ISSUER,
            "aud": audience,
            "sub": client_id,
            "scope": " ".join(scopes),
            "iat": issued,
            "exp": issued + (lifetime_s if lifetime_s is not None else self.lifetime_s),
            "jti": secrets.token_hex(8),
        }
        return jwt.encode(claims, self._secret, algorithm=ALGORITHM)

    def verify(self, token: str, *, audience: str = AUDIENCE) -> Principal:
        now = time.time()
        key = token if audience == AUDIENCE else f"{audience} {token}"
        with self._lock:
            cached = self._cache.get(key)
        if cached is not None and cached.expires_at > now:
            return cached
        try:
            claims = jwt.decode(
                token,
                self._secret,
                algorithms=[ALGORITHM],
                audience=audience,
                issuer=ISSUER,
                leeway=LEEWAY_S,
                options={"require": ["exp", "iat", "sub", "aud", "iss"]},
            )
            scopes = ScopeSet.of(str(claims.get("scope", "")).split())
        except (jwt.PyJWTError, ValueError) as exc:
            raise InvalidTokenError(type(exc).__name__) from exc
        principal = Principal(str(claims["sub"]), scopes, float(claims["exp"]))
        with self._lock:
            self._cache[key] = principal
            if len(self._cache) > VERIFIED_CACHE_SIZE:
                self._cache.popitem(last=False)
        return principal
