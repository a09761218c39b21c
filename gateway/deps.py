"""FastAPI dependencies, defined once as ``Annotated`` aliases.

``SessionDep`` opens one session per request; ``require(type, permission)``
authenticates the bearer token and checks its SMART scopes, raising an
:class:`~gateway.outcomes.OutcomeError` (401 or 403) that renders as an
OperationOutcome.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine, Iterator
from typing import Annotated, Any

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.orm import Session

from gateway.audit import AuditLog
from gateway.auth.tokens import InvalidTokenError, Principal, TokenService
from gateway.outcomes import OutcomeError, forbidden, unauthorized
from gateway.state import GatewayState

#: Declares the bearer scheme in OpenAPI; the check itself is ours (OperationOutcome errors).
bearer_scheme = HTTPBearer(auto_error=False, description="Token from POST /auth/token")


def state_of(request: Request) -> GatewayState:
    state: GatewayState = request.app.state.askonce
    return state


async def gateway_state(request: Request) -> GatewayState:
    return state_of(request)


def token_service(request: Request) -> TokenService:
    service: TokenService = request.app.state.tokens
    return service


def get_session(request: Request) -> Iterator[Session]:
    state: GatewayState = request.app.state.askonce
    with state.session_factory() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
StateDep = Annotated[GatewayState, Depends(gateway_state)]


async def audit_log(request: Request) -> AuditLog:
    audit: AuditLog = request.app.state.audit
    return audit


AuditDep = Annotated[AuditLog, Depends(audit_log)]


async def authenticate(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer_scheme)],
) -> Principal:
    """The principal behind the request's bearer token, or 401."""
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise OutcomeError(unauthorized())
    return _verify(request, credentials.credentials)


def _verify(request: Request, token: str) -> Principal:
    try:
        return token_service(request).verify(token)
    except InvalidTokenError as exc:
        raise OutcomeError(unauthorized("The bearer token is invalid or expired.")) from exc


def check_scope(principal: Principal, resource_type: str, permission: str) -> Principal:
    if not principal.scopes.allows(resource_type, permission):
        raise OutcomeError(
            forbidden(f"This interaction needs scope system/{resource_type}.{permission}.")
        )
    return principal


def authorize_inline(request: Request, resource_type: str, permission: str) -> Principal:
    """:func:`require` without the dependency machinery, for the hot read route (its
    OpenAPI security is declared with :data:`BEARER_SECURITY`)."""
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise OutcomeError(unauthorized())
    return check_scope(_verify(request, token.strip()), resource_type, permission)


#: The OpenAPI security requirement of a route that authorizes inline.
BEARER_SECURITY: list[dict[str, list[str]]] = [{"HTTPBearer": []}]


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def require(
    resource_type: str, permission: str
) -> Callable[[Principal], Coroutine[Any, Any, Principal]]:
    """A dependency that needs a SMART scope granting ``permission`` on ``resource_type``.

    Dependencies that do no I/O are ``async`` so they run on the event loop, not in
    the thread pool (one hop fewer per request on the hot read path)."""

    async def check(principal: PrincipalDep) -> Principal:
        return check_scope(principal, resource_type, permission)

    return check


async def require_admin(principal: PrincipalDep) -> Principal:
    if not principal.scopes.admin:
        raise OutcomeError(forbidden("The admin API needs scope askonce.admin."))
    return principal


PatientRead = Annotated[Principal, Depends(require("Patient", "r"))]
PatientSearch = Annotated[Principal, Depends(require("Patient", "s"))]
EncounterSearch = Annotated[Principal, Depends(require("Encounter", "s"))]
AdminPrincipal = Annotated[Principal, Depends(require_admin)]
