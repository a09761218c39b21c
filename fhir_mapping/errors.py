"""Errors raised by ``fhir_mapping``.

Hierarchy::

    MappingError                 base of every error this package raises
    └── InvalidResource          a resource failed validation; carries FHIR paths and reasons

An ``InvalidResource`` is ready to become an OperationOutcome
(https://hl7.org/fhir/R4/operationoutcome.html) for an API caller, or a quarantine
entry for ``sync``. Reasons never quote the offending value, so the error can be
logged by id without leaking patient data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

#: OperationOutcome.issue.code for a structural/validation problem
#: (https://hl7.org/fhir/R4/valueset-issue-type.html).
ISSUE_CODE_INVALID = "invalid"
ISSUE_CODE_STRUCTURE = "structure"
ISSUE_SEVERITY_ERROR = "error"


class MappingError(Exception):
    """Base class of the errors of ``fhir_mapping``."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One problem found in a resource: a FHIRPath-style location and a reason."""

    path: str
    reason: str
    code: str = ISSUE_CODE_INVALID


class InvalidResource(MappingError):
    """A resource that is not valid FHIR R4 (or not the type we expected).

    ``resource_type`` and ``resource_id`` are taken from the raw input when they are
    strings (either may be None); ``issues`` lists every problem found.
    """

    def __init__(
        self,
        resource_type: str | None,
        resource_id: str | None,
        issues: list[Issue],
    ) -> None:
        self.resource_type = resource_type
        self.resource_id = resource_id
        self.issues = list(issues)
        summary = "; ".join(f"{i.path}: {i.reason}" for i in self.issues[:3])
        more = len(self.issues) - 3
        if more > 0:
            summary += f"; and {more} more"
        super().__init__(f"invalid {resource_type or 'resource'}: {summary}")

    def to_operation_outcome(self) -> dict[str, Any]:
        """The error as a FHIR R4 OperationOutcome (one issue per problem, with
        ``expression`` set to the FHIRPath of the element)."""
        return {
            "resourceType": "OperationOutcome",
            "issue": [
                {
                    "severity": ISSUE_SEVERITY_ERROR,
                    "code": issue.code,
                    "diagnostics": issue.reason,
                    "expression": [issue.path],
                }
                for issue in self.issues
            ],
        }

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form for the quarantine (``source_record.error``)."""
        return {
            "error": "invalid-resource",
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "issues": [{"path": i.path, "reason": i.reason, "code": i.code} for i in self.issues],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> InvalidResource:
        """Rebuild the error from :meth:`to_dict` output."""
        return cls(
            data.get("resource_type"),
            data.get("resource_id"),
            [
                Issue(i["path"], i["reason"], i.get("code", ISSUE_CODE_INVALID))
                for i in data["issues"]
            ],
        )
