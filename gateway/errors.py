"""One place that turns every error into an OperationOutcome (``application/fhir+json``).

Handles :class:`~gateway.outcomes.OutcomeError`, FastAPI's request validation
errors (400), Starlette's 404/405 for unknown routes and methods, and anything
unexpected (500, logged by exception type only: messages can quote patient data). A
database failure worth retrying (a lost connection, a deadlock, a lock timeout: see
:mod:`store.errors`) is a 503 ``transient`` with ``Retry-After``, since the request's
transaction was rolled back whole and sending it again is safe.
"""

from __future__ import annotations

import logging
import sqlite3

import psycopg
from fastapi import FastAPI
from fastapi.exceptions import RequestValidationError
from sqlalchemy.exc import DBAPIError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from gateway.outcomes import (
    FHIR_JSON,
    Outcome,
    OutcomeError,
    bad_request,
    method_not_allowed,
    not_found,
    outcome,
    server_error,
    unavailable,
)
from store.errors import transient_database_error

log = logging.getLogger(__name__)
#: What the drivers raise, wrapped by SQLAlchemy or not (the raw SQLite reads).
DATABASE_ERRORS: tuple[type[Exception], ...] = (DBAPIError, sqlite3.Error, psycopg.Error)
TOKEN_PATH = "/auth/token"  # noqa: S105 - a path, not a secret


def render(result: Outcome) -> Response:
    return JSONResponse(
        result.resource,
        status_code=result.status,
        media_type=FHIR_JSON,
        headers=dict(result.headers),
    )


async def _outcome_error(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, OutcomeError)
    return render(exc.outcome)


async def _validation_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    if request.url.path == TOKEN_PATH:
        # The token endpoint speaks OAuth 2.0 (RFC 6749 §5.2), not FHIR.
        return JSONResponse({"error": "invalid_request"}, status_code=400)
    expressions = []
    for error in exc.errors():
        loc = [str(p) for p in error.get("loc", ()) if p not in ("query", "path", "body", "header")]
        if loc:
            expressions.append(".".join(loc))
    return render(bad_request("The request has an invalid parameter.", expressions or None))


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        return render(not_found(f"No route for {request.url.path}."))
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        return render(
            method_not_allowed(
                f"{request.method} is not supported here.", allow.split(", ") if allow else ()
            )
        )
    code = "invalid" if 400 <= exc.status_code < 500 else "exception"
    return render(outcome(exc.status_code, code, str(exc.detail), headers=exc.headers))


async def _database_error(request: Request, exc: Exception) -> Response:
    """A 503 for a database failure worth retrying; any other goes on to :func:`_unexpected`.

    Registered for the database errors' own classes, not only inside the catch-all: the
    catch-all's errors are raised again after the answer (for the server to log them as
    unhandled), and a moment's unavailability is not a defect."""
    if not transient_database_error(exc):
        raise exc
    log.warning(
        "database unavailable",
        extra={"path": request.url.path, "method": request.method, "reason": type(exc).__name__},
    )
    return render(unavailable("The database is unavailable for a moment; send the request again."))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error(
        "unhandled error",
        exc_info=(type(exc), exc, None),
        extra={"path": request.url.path, "method": request.method},
    )
    return render(server_error())


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(OutcomeError, _outcome_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for database_error in DATABASE_ERRORS:
        app.add_exception_handler(database_error, _database_error)
    app.add_exception_handler(Exception, _unexpected)
