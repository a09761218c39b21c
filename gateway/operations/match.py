"""``Patient/$match``: score golden records against a Patient, with the mpi engine.

https://hl7.org/fhir/R4/patient-operation-match.html. Input is a Parameters
resource with ``resource`` (a Patient), ``onlyCertainMatches`` and ``count``
(a bare Patient is accepted too). The answer is a searchset Bundle; each entry
has ``search.score`` (0..1) and the `match-grade extension
<https://hl7.org/fhir/R4/extension-match-grade.html>`_.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy.orm import Session

from fhir_mapping import InvalidResource
from gateway.operations.bundle import page_url, searchset
from gateway.operations.read import read_patient
from gateway.outcomes import Outcome, OutcomeError, bad_request, unprocessable

MATCH_GRADE_URL = "http://hl7.org/fhir/StructureDefinition/match-grade"
GRADES = frozenset({"certain", "probable", "possible", "certainly-not"})
DEFAULT_MATCH_COUNT = 10
MAX_MATCH_COUNT = 100


class Candidate(Protocol):
    """What the mpi engine returns per candidate (``mpi.MatchCandidate``)."""

    golden_id: str
    score: float
    grade: str


Matcher = Callable[..., Sequence[Candidate]]
PatientParser = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True, slots=True)
class MatchRequest:
    patient: dict[str, Any]
    only_certain: bool
    count: int


def parse_match_request(body: Any) -> MatchRequest:
    """Read the ``$match`` input; 400 when a parameter is missing or of the wrong type."""
    if not isinstance(body, dict):
        raise OutcomeError(bad_request("The body must be a Parameters resource.", "Parameters"))
    if body.get("resourceType") == "Patient":
        return MatchRequest(body, False, DEFAULT_MATCH_COUNT)
    if body.get("resourceType") != "Parameters":
        raise OutcomeError(bad_request("The body must be a Parameters resource.", "resourceType"))
    patient, only_certain, count = None, False, DEFAULT_MATCH_COUNT
    for param in body.get("parameter") or []:
        name = param.get("name") if isinstance(param, dict) else None
        if name == "resource":
            patient = param.get("resource")
        elif name == "onlyCertainMatches":
            if not isinstance(param.get("valueBoolean"), bool):
                raise OutcomeError(bad_request("onlyCertainMatches takes valueBoolean.", name))
            only_certain = param["valueBoolean"]
        elif name == "count":
            value = param.get("valueInteger")
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise OutcomeError(bad_request("count takes a positive valueInteger.", name))
            count = min(value, MAX_MATCH_COUNT)
    if not isinstance(patient, dict):
        raise OutcomeError(bad_request("Parameter resource (a Patient) is required.", "resource"))
    if patient.get("resourceType") != "Patient":
        raise OutcomeError(unprocessable("Parameter resource must be a Patient.", "resource"))
    return MatchRequest(patient, only_certain, count)


def probability(score: float) -> float:
    """A Fellegi-Sunter match weight (log2 odds) as a 0..1 score for ``search.score``."""
    return round(1.0 / (1.0 + math.pow(2.0, -max(min(score, 60.0), -60.0))), 4)


def match(
    session: Session,
    body: Any,
    *,
    base: str,
    matcher: Matcher,
    parse_patient: PatientParser,
) -> dict[str, Any]:
    request = parse_match_request(body)
    try:
        patient = parse_patient(request.patient)
    except InvalidResource as exc:
        # Its OperationOutcome names each offending FHIR path (never the value).
        raise OutcomeError(Outcome(422, exc.to_operation_outcome())) from exc
    candidates = matcher(session, patient, count=request.count, only_certain=request.only_certain)
    entries = []
    for candidate in list(candidates)[: request.count]:
        if request.only_certain and candidate.grade != "certain":
            continue
        stored = read_patient(session, candidate.golden_id)
        entries.append(
            {
                "fullUrl": f"{base}/fhir/Patient/{candidate.golden_id}",
                "resource": stored.as_dict(),
                "search": {
                    "mode": "match",
                    "score": probability(float(candidate.score)),
                    "extension": [{"url": MATCH_GRADE_URL, "valueCode": candidate.grade}],
                },
            }
        )
    return searchset(entries, self_url=page_url(base, "Patient/$match", []), total=len(entries))
