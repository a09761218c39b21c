"""``POST /auth/token``: OAuth 2.0 client credentials (RFC 6749 §4.4).

The client authenticates with ``client_secret_basic`` (HTTP Basic) or
``client_secret_post`` (form fields). Errors follow RFC 6749 §5.2 (``{"error":
"invalid_client"}``…), the format every OAuth client library understands; the
FHIR endpoints themselves answer with OperationOutcomes.
See also `SMART Backend Services <https://hl7.org/fhir/smart-app-launch/backend-services.html>`_.
"""

from __future__ import annotations

import base64
import binascii
import logging
from typing import Annotated, Any
from urllib.parse import unquote

from fastapi import APIRouter, Form, Request
from fastapi.responses import JSONResponse

from gateway.auth.consumers import authenticate_client, granted_scopes
from gateway.deps import SessionDep, state_of, token_service

log = logging.getLogger(__name__)
router = APIRouter(tags=["auth"])

NO_STORE = {"Cache-Control": "no-store", "Pragma": "no-cache"}
GRANT_TYPE = "client_credentials"


def _oauth_error(status: int, error: str, description: str) -> JSONResponse:
    headers = dict(NO_STORE)
    if status == 401:
        headers["WWW-Authenticate"] = 'Basic realm="askonce"'
    return JSONResponse(
        {"error": error, "error_description": description}, status_code=status, headers=headers
    )


def _basic_credentials(header: str | None) -> tuple[str, str] | None:
    if not header or not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    client_id, sep, secret = decoded.partition(":")
    if not sep:
        return None
    # RFC 6749 §2.3.1: both parts are form-urlencoded before Basic encoding.
    return unquote(client_id), unquote(secret)


@router.post(
    "/auth/token",
    summary="Issue an access token (OAuth 2.0 client credentials)",
    responses={400: {"description": "OAuth error"}, 401: {"description": "invalid_client"}},
)
def issue_token(
    request: Request,
    session: SessionDep,
    grant_type: Annotated[str, Form()],
    scope: Annotated[str | None, Form()] = None,
    client_id: Annotated[str | None, Form()] = None,
    client_secret: Annotated[str | None, Form()] = None,
) -> JSONResponse:
    basic = _basic_credentials(request.headers.get("authorization"))
    if basic is not None and client_secret is not None:
        return _oauth_error(400, "invalid_request", "use one client authentication method")
    if basic is None:
        if not client_id or client_secret is None:
            return _oauth_error(401, "invalid_client", "client authentication failed")
        basic = (client_id, client_secret)
    if grant_type != GRANT_TYPE:
        return _oauth_error(400, "unsupported_grant_type", "only client_credentials is supported")
    consumer = authenticate_client(session, *basic)
    if consumer is None:
        log.info("token refused", extra={"reason": "invalid_client"})
        return _oauth_error(401, "invalid_client", "client authentication failed")
    scopes = granted_scopes(consumer, scope)
    if scopes is None:
        return _oauth_error(400, "invalid_scope", "a requested scope was not granted")
    service = token_service(request)
    body: dict[str, Any] = {
        "access_token": service.issue(consumer.client_id, scopes),
        "token_type": "bearer",
        "expires_in": service.lifetime_s,
        "scope": " ".join(scopes),
    }
    log.info("token issued", extra={"consumer_id": consumer.id})
    return JSONResponse(body, headers=NO_STORE)


@router.get("/.well-known/smart-configuration", summary="SMART configuration discovery")
def smart_configuration(request: Request) -> JSONResponse:
    """https://hl7.org/fhir/smart-app-launch/conformance.html#using-well-known"""
    base = state_of(request).base_url(request)
    return JSONResponse(
        {
            "token_endpoint": f"{base}/auth/token",
            "grant_types_supported": [GRANT_TYPE],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": [
                "system/Patient.rs",
                "system/Encounter.rs",
                "system/QuestionnaireResponse.crs",
                "system/Questionnaire.cruds",
                "system/Subscription.cruds",
                "askonce.admin",
            ],
            "capabilities": ["client-confidential-symmetric", "permission-v2", "permission-v1"],
        }
    )
