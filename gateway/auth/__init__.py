"""Authentication and authorization: consumers, client secrets, tokens, SMART scopes.

Errors::

    ValueError
     ├── InvalidScopeError     (not a SMART scope nor the admin scope)
     ├── InvalidTokenError     (bad signature, audience, issuer or expiry)
     └── ConsumerExistsError   (a consumer with that name is registered)
"""

from __future__ import annotations

from gateway.auth.consumers import (
    CONSUMER_KINDS,
    ConsumerExistsError,
    Credentials,
    authenticate_client,
    register_consumer,
)
from gateway.auth.scopes import ADMIN_SCOPE, InvalidScopeError, ScopeSet, validate_scopes
from gateway.auth.tokens import InvalidTokenError, Principal, TokenService

__all__ = [
    "ADMIN_SCOPE",
    "CONSUMER_KINDS",
    "ConsumerExistsError",
    "Credentials",
    "InvalidScopeError",
    "InvalidTokenError",
    "Principal",
    "ScopeSet",
    "TokenService",
    "authenticate_client",
    "register_consumer",
    "validate_scopes",
]
