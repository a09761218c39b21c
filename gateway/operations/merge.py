"""``Patient/$merge`` and ``Patient/$unmerge``: a steward's merge of two golden records,
and its undo.

``$merge`` is FHIR's Patient merge operation
(https://build.fhir.org/patient-operation-merge.html, defined in R5 and usable on R4
servers): the *source* Patient is merged into the *target*, which survives. Here both are
golden records, so the merge is the mpi engine's (:func:`mpi.merge_patients`):

- the source's source records are linked to the target, and its encounters follow;
- the target is rebuilt by survivorship from all of them, with a ``replaces`` link, and a
  read of the source answers ``active: false`` and ``replaced-by`` the target;
- ``patient.merged`` reaches Subscriptions and webhooks;
- the link history keeps what the source held, so ``$unmerge`` can give it back.

A merge the records speak against is refused (422 ``business-rule``): a guard (another SSN,
a twin, Jr/Sr), a ``certainly-not`` score, or a data steward's "no-match" between them.
The steward console can merge such records after a person looked at the evidence; an API
call cannot. ``preview=true`` runs the whole merge and rolls it back: the ``result`` is
exactly what the target would become.

Not taken: ``result-patient`` (a golden record is computed from its source records, never
written by a client) and ``delete-source=true`` (a merged id keeps answering with its
survivor). A merge completes in its request, so no ``Task`` is returned.

``$unmerge`` (askonce's own operation, :data:`UNMERGE_DEFINITION`) undoes the last merge of
the source: its records, as they were, get it back, and a "no-match" between the two
groups keeps the engine from merging them again.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from fhir_mapping import normalize_search_value
from gateway.operations.populate import subject_id
from gateway.operations.read import ACTIVE, MERGED, read_patient, survivor_of
from gateway.operations.search_patient import token_condition
from gateway.outcomes import (
    OutcomeError,
    bad_request,
    issue,
    operation_outcome,
    outcome,
    unprocessable,
)
from mpi import (
    GoldenNotFound,
    InvalidOperation,
    MatchSettings,
    MergeCheck,
    MergeRefused,
    merge_patients,
    unmerge_golden,
)
from store.models import GoldenPatient

SOURCE, TARGET = "source-patient", "target-patient"
MERGE_PARAMETERS = frozenset(
    {
        SOURCE,
        f"{SOURCE}-identifier",
        TARGET,
        f"{TARGET}-identifier",
        "result-patient",
        "preview",
        "delete-source",
    }
)
UNMERGE_PARAMETERS = frozenset({SOURCE, TARGET, "preview"})
#: The identifiers a ``*-patient-identifier`` lookup may name (each one must be present).
MAX_IDENTIFIERS = 20
#: Where askonce's own ``$unmerge`` is defined (``GET /fhir/OperationDefinition/Patient-unmerge``).
UNMERGE_URL = "https://askonce.dev/fhir/OperationDefinition/Patient-unmerge"


@dataclass(frozen=True)
class _Named:
    """How a request named a Patient: a reference, or identifiers to look up."""

    parameter: str
    golden_id: str | None = None
    identifiers: tuple[tuple[str | None, str], ...] = ()


@dataclass
class MergeRequest:
    source: _Named
    target: _Named | None
    preview: bool
    body: dict[str, Any]


def _parameters(body: Any, allowed: frozenset[str], operation: str) -> list[dict[str, Any]]:
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise OutcomeError(bad_request(f"{operation} takes a Parameters resource.", "Parameters"))
    params = body.get("parameter")
    if not isinstance(params, list) or not all(isinstance(p, dict) for p in params):
        raise OutcomeError(bad_request("Parameters.parameter must be a list.", "Parameters"))
    for param in params:
        name = param.get("name")
        if name not in allowed:
            raise OutcomeError(
                bad_request(
                    f"{operation} takes no parameter {str(name)[:64]!r}; it takes "
                    f"{', '.join(sorted(allowed))}.",
                    "Parameters.parameter.name",
                )
            )
    return params


def _one(params: Sequence[dict[str, Any]], name: str) -> dict[str, Any] | None:
    found = [p for p in params if p.get("name") == name]
    if len(found) > 1:
        raise OutcomeError(bad_request(f"{name} may be given once.", name))
    return found[0] if found else None


def _boolean(params: Sequence[dict[str, Any]], name: str) -> bool:
    param = _one(params, name)
    if param is None:
        return False
    if not isinstance(param.get("valueBoolean"), bool):
        raise OutcomeError(bad_request(f"{name} takes valueBoolean.", name))
    return bool(param["valueBoolean"])


def _identifier(value: Any, name: str) -> tuple[str | None, str]:
    if not isinstance(value, dict) or not isinstance(value.get("value"), str):
        raise OutcomeError(bad_request(f"{name} takes valueIdentifier with a value.", name))
    system = value.get("system")
    if system is not None and not isinstance(system, str):
        raise OutcomeError(bad_request(f"{name}: Identifier.system must be a string.", name))
    code = normalize_search_value("identifier", value["value"])
    if not code:
        raise OutcomeError(bad_request(f"{name}: Identifier.value is empty.", name))
    return system or None, code


def _named(params: Sequence[dict[str, Any]], name: str, base: str) -> _Named | None:
    """The Patient ``name`` (or ``name-identifier``) designates, as the request says it."""
    reference = _one(params, name)
    listed = [p for p in params if p.get("name") == f"{name}-identifier"]
    if reference is not None and listed:
        raise OutcomeError(
            bad_request(f"Name the {name} by {name} or by {name}-identifier, not both.", name)
        )
    if listed:
        if len(listed) > MAX_IDENTIFIERS:
            raise OutcomeError(
                bad_request(f"{name}-identifier is limited to {MAX_IDENTIFIERS}.", name)
            )
        return _Named(
            f"{name}-identifier",
            identifiers=tuple(_identifier(p.get("valueIdentifier"), name) for p in listed),
        )
    if reference is None:
        return None
    value = reference.get("valueReference")
    if isinstance(value, dict) and "reference" not in value and "identifier" in value:
        # A logical reference: the identifier it carries is looked up.
        return _Named(name, identifiers=(_identifier(value["identifier"], name),))
    return _Named(name, golden_id=subject_id(value, base, name))


def parse_merge_request(body: Any, base: str) -> MergeRequest:
    """The ``$merge`` input; 400 for a malformed or unsupported one."""
    params = _parameters(body, MERGE_PARAMETERS, "Patient/$merge")
    if _one(params, "result-patient") is not None:
        raise OutcomeError(
            outcome(
                400,
                "not-supported",
                "result-patient is not taken: a golden record is built from its source "
                "records by survivorship, never written by a client. Merge without it; the "
                "result parameter returns what the target became.",
                expression="result-patient",
            )
        )
    if _boolean(params, "delete-source"):
        raise OutcomeError(
            outcome(
                400,
                "not-supported",
                "delete-source is not supported: a merged golden id keeps answering, "
                "inactive and replaced-by its survivor, for the consumers that hold it.",
                expression="delete-source",
            )
        )
    source, target = _named(params, SOURCE, base), _named(params, TARGET, base)
    for found, name in ((source, SOURCE), (target, TARGET)):
        if found is None:
            raise OutcomeError(
                bad_request(f"Name the {name}: {name} or {name}-identifier is required.", name)
            )
    assert source is not None
    return MergeRequest(source, target, _boolean(params, "preview"), body)


def parse_unmerge_request(body: Any, base: str) -> MergeRequest:
    """The ``$unmerge`` input; 400 for a malformed one."""
    params = _parameters(body, UNMERGE_PARAMETERS, "Patient/$unmerge")
    source = _named(params, SOURCE, base)
    if source is None or source.golden_id is None:
        raise OutcomeError(
            bad_request(f"{SOURCE} (a reference to the merged Patient) is required.", SOURCE)
        )
    return MergeRequest(source, _named(params, TARGET, base), _boolean(params, "preview"), body)


def _by_identifiers(session: Session, named: _Named) -> str:
    """The one active golden record that holds every identifier named; 422 otherwise."""
    query = select(GoldenPatient.id).where(GoldenPatient.status == ACTIVE)
    for system, value in named.identifiers:
        query = query.where(token_condition("identifier", system, value))
    found = list(session.scalars(query.limit(2)))
    if len(found) != 1:
        detail = "No Patient holds" if not found else "More than one Patient holds"
        raise OutcomeError(
            unprocessable(f"{detail} the identifiers {named.parameter} names.", named.parameter)
        )
    return found[0]


def _golden(session: Session, named: _Named, *, active: bool = True) -> str:
    """The golden id ``named`` designates; 422 when there is none (or, if ``active``, when
    it is merged or deleted)."""
    if named.golden_id is None:
        return _by_identifiers(session, named)
    golden_id = named.golden_id
    status = session.scalar(select(GoldenPatient.status).where(GoldenPatient.id == golden_id))
    if status is None:
        raise OutcomeError(
            unprocessable(f"Patient/{golden_id} is not a Patient of this server.", named.parameter)
        )
    if active and status == MERGED:
        survivor = survivor_of(session, golden_id)
        into = f" into Patient/{survivor}" if survivor else ""
        raise OutcomeError(
            unprocessable(f"Patient/{golden_id} was merged{into} already.", named.parameter)
        )
    if active and status != ACTIVE:
        raise OutcomeError(unprocessable(f"Patient/{golden_id} is {status}.", named.parameter))
    return golden_id


@dataclass(frozen=True)
class MergeResult:
    """What ``$merge`` or ``$unmerge`` did (or, previewed, would do)."""

    source_id: str
    target_id: str
    parameters: dict[str, Any]
    #: True when nothing may be kept: the caller rolls back.
    preview: bool


def _evidence(check: MergeCheck) -> str:
    if check.grade is None:
        return "One of them holds no active source record to compare."
    alone = "" if check.corroborated else " on names, birth date and sex alone"
    return f"The engine grades their records {check.grade} (best score {check.score}){alone}."


def _answer(
    session: Session, request: MergeRequest, source_id: str, target_id: str, shown: str, *notes: str
) -> MergeResult:
    """The output Parameters: the request, ``notes`` (and, for a preview, that nothing was
    changed) and golden record ``shown`` as it is now in this transaction."""
    if request.preview:
        notes = (*notes, "Preview only: nothing was changed.")
    patient = read_patient(session, shown).as_dict()
    if request.preview:
        # Nothing was committed: the version and time it shows would not be the ones kept.
        dropped = ("versionId", "lastUpdated")
        meta = {k: v for k, v in (patient.get("meta") or {}).items() if k not in dropped}
        patient = {k: v for k, v in patient.items() if k != "meta"}
        if meta:
            patient["meta"] = meta
    issues = [issue("informational", note, severity="information") for note in notes]
    parameters = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "input", "resource": request.body},
            {"name": "outcome", "resource": operation_outcome(issues)},
            {"name": "result", "resource": patient},
        ],
    }
    return MergeResult(source_id, target_id, parameters, request.preview)


def _refused(exc: MergeRefused) -> OutcomeError:
    reasons = "; ".join(exc.reasons)
    return OutcomeError(
        outcome(
            422,
            "business-rule",
            f"Not merged: their records say these are two people ({reasons}). A data "
            "steward can merge them in the console after checking the evidence.",
            expression=[SOURCE, TARGET],
        )
    )


def merge(
    session: Session,
    body: Any,
    *,
    base: str,
    actor: str,
    settings: MatchSettings | None = None,
) -> MergeResult:
    """``Patient/$merge``: merge (or preview merging) the source into the target. The
    caller commits unless ``preview``, and rolls back after a preview."""
    request = parse_merge_request(body, base)
    assert request.target is not None
    source_id = _golden(session, request.source)
    target_id = _golden(session, request.target)
    try:
        _survivor, check = merge_patients(
            session, source_id, target_id, actor=actor, settings=settings
        )
    except MergeRefused as exc:
        raise _refused(exc) from exc
    except (InvalidOperation, GoldenNotFound) as exc:
        raise OutcomeError(unprocessable(str(exc), [SOURCE, TARGET])) from exc
    done = "would be merged" if request.preview else "was merged"
    return _answer(
        session,
        request,
        source_id,
        target_id,
        target_id,
        f"Patient/{source_id} {done} into Patient/{target_id}.",
        _evidence(check),
    )


def unmerge(
    session: Session,
    body: Any,
    *,
    base: str,
    actor: str,
    settings: MatchSettings | None = None,
) -> MergeResult:
    """``Patient/$unmerge``: give the source back its records as they were before its last
    merge. The caller commits unless ``preview``, and rolls back after a preview."""
    request = parse_unmerge_request(body, base)
    source_id = _golden(session, request.source, active=False)
    row = session.get(GoldenPatient, source_id)
    assert row is not None
    if row.status != MERGED or row.merged_into is None:
        raise OutcomeError(
            unprocessable(f"Patient/{source_id} is {row.status}, not merged.", SOURCE)
        )
    into = session.get(GoldenPatient, row.merged_into)
    if into is not None and into.status == MERGED and into.merged_into is not None:
        raise OutcomeError(
            unprocessable(
                f"Patient/{source_id} was merged into Patient/{into.id}, which was merged into "
                f"Patient/{into.merged_into} since: unmerge Patient/{into.id} first.",
                SOURCE,
            )
        )
    if request.target is not None:
        target_id = _golden(session, request.target, active=False)
        if target_id != row.merged_into:
            raise OutcomeError(
                unprocessable(
                    f"Patient/{source_id} was merged into Patient/{row.merged_into}, not "
                    f"Patient/{target_id}.",
                    TARGET,
                )
            )
    try:
        survivor_id = unmerge_golden(session, source_id, actor=actor, settings=settings)
    except (InvalidOperation, GoldenNotFound) as exc:
        raise OutcomeError(unprocessable(str(exc), SOURCE)) from exc
    done = "would get" if request.preview else "got"
    return _answer(
        session,
        request,
        source_id,
        survivor_id,
        source_id,
        f"Patient/{source_id} {done} its records back from Patient/{survivor_id}; the two "
        "are kept apart from now on.",
    )


#: askonce's ``$unmerge`` as an OperationDefinition (served at
#: ``/fhir/OperationDefinition/Patient-unmerge``, named by the CapabilityStatement).
UNMERGE_DEFINITION: dict[str, Any] = {
    "resourceType": "OperationDefinition",
    "id": "Patient-unmerge",
    "url": UNMERGE_URL,
    "name": "PatientUnmerge",
    "title": "Undo a merge of two golden Patients",
    "status": "active",
    "kind": "operation",
    "affectsState": True,
    "code": "unmerge",
    "resource": ["Patient"],
    "system": False,
    "type": True,
    "instance": False,
    "description": (
        "Undoes the last merge of source-patient (a golden Patient merged by $merge, by a "
        "steward or by the matching engine): the source records it held before the merge "
        "are linked to it again, both golden records are rebuilt, and a steward's "
        "'no-match' between the two groups keeps them from being merged again "
        "automatically. patient.unmerged is emitted for both."
    ),
    "parameter": [
        {
            "name": SOURCE,
            "use": "in",
            "min": 1,
            "max": "1",
            "type": "Reference",
            "documentation": "The merged Patient to restore.",
        },
        {
            "name": TARGET,
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "Reference",
            "documentation": "The Patient it was merged into; when given, it must be.",
        },
        {
            "name": "preview",
            "use": "in",
            "min": 0,
            "max": "1",
            "type": "boolean",
            "documentation": "Check and show the result without changing anything.",
        },
        {
            "name": "input",
            "use": "out",
            "min": 1,
            "max": "1",
            "type": "Parameters",
            "documentation": "The request's parameters.",
        },
        {
            "name": "outcome",
            "use": "out",
            "min": 1,
            "max": "1",
            "type": "OperationOutcome",
            "documentation": "What was done.",
        },
        {
            "name": "result",
            "use": "out",
            "min": 1,
            "max": "1",
            "type": "Patient",
            "documentation": "The restored Patient.",
        },
    ],
}
