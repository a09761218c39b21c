"""OperationOutcomes as values, and the one exception that carries them.

Every error the gateway returns is an `OperationOutcome
<https://hl7.org/fhir/R4/operationoutcome.html>`_ with an HTTP status chosen as
the `RESTful API <https://hl7.org/fhir/R4/http.html>`_ section says. Build one with
the named constructors (``not_found``, ``bad_request(detail, expression)``, …) and
either return it from an operation or ``raise OutcomeError(outcome)``; the
gateway's exception handler renders it as ``application/fhir+json``.

Details are written for the client and must never quote patient data: name the
parameter or FHIR path (``expression``), not the value that was sent.

Errors::

    Exception
     └── OutcomeError   (carries an Outcome: HTTP status + OperationOutcome)
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

#: https://hl7.org/fhir/R4/valueset-issue-severity.html
Severity = str
#: https://hl7.org/fhir/R4/valueset-issue-type.html
IssueCode = str

FHIR_JSON = "application/fhir+json"


@dataclass(frozen=True, slots=True)
class Outcome:
    """An HTTP status with the OperationOutcome that explains it."""

    status: int
    resource: dict[str, Any]
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def diagnostics(self) -> str:
        issues = self.resource.get("issue") or [{}]
        return str(issues[0].get("diagnostics", ""))


class OutcomeError(Exception):
    """Raised by operations and dependencies; rendered by the gateway's handler."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.diagnostics)
        self.outcome = outcome

    @property
    def status(self) -> int:
        return self.outcome.status


def issue(
    code: IssueCode,
    diagnostics: str,
    *,
    severity: Severity = "error",
    expression: Sequence[str] | str | None = None,
) -> dict[str, Any]:
    """One ``OperationOutcome.issue``."""
    entry: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": diagnostics}
    if expression:
        entry["expression"] = [expression] if isinstance(expression, str) else list(expression)
    return entry


def operation_outcome(issues: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """An OperationOutcome resource holding ``issues`` (at least one)."""
    return {"resourceType": "OperationOutcome", "issue": list(issues)}


def outcome(
    status: int,
    code: IssueCode,
    diagnostics: str,
    *,
    expression: Sequence[str] | str | None = None,
    severity: Severity = "error",
    headers: Mapping[str, str] | None = None,
) -> Outcome:
    return Outcome(
        status,
        operation_outcome([issue(code, diagnostics, severity=severity, expression=expression)]),
        dict(headers or {}),
    )


def bad_request(detail: str, expression: Sequence[str] | str | None = None) -> Outcome:
    """400: an invalid parameter or a malformed request."""
    return outcome(400, "invalid", detail, expression=expression)


def unauthorized(detail: str = "A valid bearer token is required.") -> Outcome:
    """401: no token, or one that is invalid or expired (RFC 6750 challenge included)."""
    return outcome(401, "login", detail, headers={"WWW-Authenticate": 'Bearer realm="askonce"'})


def forbidden(detail: str) -> Outcome:
    """403: the token is valid but lacks the scope this interaction needs."""
    return outcome(
        403,
        "forbidden",
        detail,
        headers={"WWW-Authenticate": 'Bearer realm="askonce", error="insufficient_scope"'},
    )


def not_found(detail: str) -> Outcome:
    """404: no such resource, version or route."""
    return outcome(404, "not-found", detail)


def method_not_allowed(detail: str, allow: Sequence[str] = ()) -> Outcome:
    """405: the route exists but not with this HTTP method."""
    headers = {"Allow": ", ".join(allow)} if allow else {}
    return outcome(405, "not-supported", detail, headers=headers)


def not_acceptable(detail: str) -> Outcome:
    """406: the client asked for a format this server does not produce (e.g. XML)."""
    return outcome(406, "not-supported", detail)


def conflict(detail: str) -> Outcome:
    """409: the request conflicts with the current state of the resource."""
    return outcome(409, "conflict", detail)


def gone(detail: str) -> Outcome:
    """410: the resource existed and was deleted."""
    return outcome(410, "deleted", detail)


def precondition_failed(detail: str) -> Outcome:
    """412: ``If-Match`` names a version that is not the current one."""
    return outcome(412, "conflict", detail)


def too_large(detail: str) -> Outcome:
    """413: the request body exceeds the configured limit."""
    return outcome(413, "too-long", detail)


def unsupported_media_type(detail: str) -> Outcome:
    """415: the request body is not FHIR JSON."""
    return outcome(415, "not-supported", detail)


def unprocessable(detail: str, expression: Sequence[str] | str | None = None) -> Outcome:
    """422: well-formed, but not a resource this operation can process."""
    return outcome(422, "processing", detail, expression=expression)


#: Seconds a client is asked to wait after a database failure worth retrying.
UNAVAILABLE_RETRY_AFTER_S = 2


def unavailable(detail: str, retry_after_s: int = UNAVAILABLE_RETRY_AFTER_S) -> Outcome:
    """503: a failure that will most likely pass (the database restarting, a deadlock's
    victim, a lock timeout); the request changed nothing and can be sent again."""
    return outcome(503, "transient", detail, headers={"Retry-After": str(retry_after_s)})


def server_error(detail: str = "Internal server error.") -> Outcome:
    """500: an unexpected failure (the cause is logged by type, never quoted here)."""
    return outcome(500, "exception", detail)


def informational(detail: str) -> dict[str, Any]:
    """An OperationOutcome carrying a warning for a Bundle's ``search.mode=outcome`` entry."""
    return operation_outcome([issue("informational", detail, severity="warning")])
