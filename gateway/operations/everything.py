"""``Patient/{id}/$everything``: the golden Patient, its encounters, its forms and its
provenance.

https://hl7.org/fhir/R4/patient-operation-everything.html. Paged with ``_count``:
the Patient comes first, then every encounter from every linked source (by id), then
the QuestionnaireResponses a patient portal submitted for the person (when the caller
may read them: they are in the Patient compartment), then one Provenance per
contributing source record, telling which golden fields came from it and by which
survivorship rule (https://hl7.org/fhir/R4/provenance.html), then one Provenance per
merge or unmerge the golden record took part in (activity ``merge`` / ``unmerge`` of ISO
21089, both Patients as targets, the survivor first: what the FHIR merge operation says a
server SHOULD record, https://build.fhir.org/patient-operation-merge.html).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.domainresource import DomainResource
from fhir.resources.R4B.resource import Resource
from sqlalchemy import ColumnElement, func, or_, select
from sqlalchemy.orm import Session

from gateway.operations.bundle import match_entry, page_url, searchset
from gateway.operations.encounters import render_encounter
from gateway.operations.paging import decode_cursor, encode_cursor
from gateway.operations.params import DATE_PREFIXES, parse_date, parse_since
from gateway.operations.read import read_patient
from gateway.outcomes import OutcomeError, bad_request
from store.models import (
    Encounter,
    FieldProvenance,
    FormResponse,
    GoldenPatient,
    Link,
    LinkHistory,
    SourceRecord,
)
from store.types import as_utc, fhir_instant

SURVIVORSHIP_POLICY = "urn:askonce:survivorship:{rule}"
SOURCE_RECORD_SYSTEM = "urn:askonce:source:{source_id}:{resource_type}"
#: https://terminology.hl7.org/CodeSystem-provenance-participant-type.html
ASSEMBLER = {
    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
    "code": "assembler",
}
AUTHOR = {
    "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
    "code": "author",
}
#: https://terminology.hl7.org/CodeSystem-iso-21089-lifecycle.html (``merge``, ``unmerge``).
LIFECYCLE = "http://terminology.hl7.org/CodeSystem/iso-21089-lifecycle"
LIFECYCLE_ACTIONS = ("merge", "unmerge")


def provenance_of(
    session: Session, golden_id: str, after_record: int, since: datetime | None = None
) -> list[dict[str, Any]]:
    """One Provenance per source record that contributed fields, ordered by record id
    (with ``since``: those recorded at or after it)."""
    rows = session.execute(
        select(
            FieldProvenance,
            SourceRecord.source_id,
            SourceRecord.resource_type,
            SourceRecord.resource_id,
        )
        .outerjoin(SourceRecord, SourceRecord.id == FieldProvenance.source_record_id)
        .where(FieldProvenance.golden_id == golden_id)
        .order_by(FieldProvenance.source_record_id, FieldProvenance.field)
    ).all()
    grouped: dict[int, list[Any]] = defaultdict(list)
    for row in rows:
        key = row[0].source_record_id or 0
        if key > after_record:
            grouped[key].append(row)
    out = []
    for record_id in sorted(grouped):
        group = grouped[record_id]
        first = group[0]
        recorded = as_utc(max((r[0].observed_at for r in group if r[0].observed_at), default=None))
        if since is not None and (recorded is None or recorded < since):
            continue
        resource: dict[str, Any] = {
            "resourceType": "Provenance",
            "id": f"{golden_id}-{record_id}",
            "target": [{"reference": f"Patient/{golden_id}"}],
            "recorded": fhir_instant(recorded),
            "policy": sorted({SURVIVORSHIP_POLICY.format(rule=r[0].rule) for r in group}),
            "agent": [
                {"type": {"coding": [ASSEMBLER]}, "who": {"display": "askonce survivorship"}}
            ],
        }
        if first.source_id is not None:
            resource["entity"] = [
                {
                    "role": "source",
                    "what": {
                        "identifier": {
                            "system": SOURCE_RECORD_SYSTEM.format(
                                source_id=first.source_id, resource_type=first.resource_type
                            ),
                            "value": first.resource_id,
                        },
                        "display": "fields: " + ", ".join(sorted({r[0].field for r in group})),
                    },
                }
            ]
        out.append(resource)
    return out


def lifecycle_of(
    session: Session, golden_id: str, after: int, limit: int, since: datetime | None = None
) -> list[tuple[int, dict[str, Any]]]:
    """The merges and unmerges ``golden_id`` took part in, after history entry ``after``
    (by id; with ``since``, at or after it), as Provenance: (history id, resource)."""
    stmt = select(LinkHistory).where(
        LinkHistory.action.in_(LIFECYCLE_ACTIONS),
        or_(LinkHistory.golden_id == golden_id, LinkHistory.other_golden_id == golden_id),
        LinkHistory.id > after,
    )
    if since is not None:
        stmt = stmt.where(LinkHistory.at >= since)
    rows = session.scalars(stmt.order_by(LinkHistory.id).limit(limit)).all()
    out = []
    for row in rows:
        # A merge's entry names the record merged away and its survivor (other_golden_id);
        # an unmerge's the record restored and the one it came back from.
        targets = [row.other_golden_id, row.golden_id]
        steward = row.method == "MANUAL" and row.actor
        resource = {
            "resourceType": "Provenance",
            "id": f"{golden_id}-{row.action}-{row.id}",
            "target": [{"reference": f"Patient/{t}"} for t in targets if t],
            "recorded": fhir_instant(row.at),
            "activity": {"coding": [{"system": LIFECYCLE, "code": row.action}]},
            "agent": [
                {
                    "type": {"coding": [AUTHOR if steward else ASSEMBLER]},
                    "who": {"display": row.actor if steward else "askonce mpi"},
                }
            ],
        }
        out.append((row.id, resource))
    return out


#: The phases of ``$everything``, in order, and the type each returns.
PHASES = {
    "patient": "Patient",
    "encounter": "Encounter",
    "form": "QuestionnaireResponse",
    "provenance": "Provenance",
    "lifecycle": "Provenance",
}
EVERYTHING_TYPES = frozenset(PHASES.values())


@dataclass(frozen=True, slots=True)
class Scope:
    """What of the record ``$everything`` is asked for: ``_type``, ``_since``, and the care
    dates ``start`` and ``end`` (https://hl7.org/fhir/R4/patient-operation-everything.html)."""

    types: frozenset[str] = EVERYTHING_TYPES
    since: datetime | None = None
    #: The care-date range: an encounter is in it when its period overlaps [start, end).
    start: datetime | None = None
    end: datetime | None = None
    #: The parameters as asked, for the self and next links.
    params: tuple[tuple[str, str], ...] = ()


def everything_scope(
    types: Sequence[str], since: str | None, start: str | None, end: str | None
) -> Scope:
    """The :class:`Scope` of ``$everything``'s parameters; 400 on a malformed one.

    ``_type`` names FHIR resource types (comma-separated, or repeated); those this server
    holds no resources of add nothing, a name that is no resource type is a 400."""
    named: list[str] = []
    for value in types:
        for name in filter(None, (part.strip() for part in value.split(","))):
            if not _is_resource_type(name):
                raise OutcomeError(
                    bad_request(f"_type {name[:64]!r} is not a FHIR resource type.", "_type")
                )
            if name not in named:
                named.append(name)
    params: list[tuple[str, str]] = []
    if named:
        params.append(("_type", ",".join(named)))
    low = high = None
    for key, raw, bound in (("start", start, "low"), ("end", end, "high")):
        if raw is None:
            continue
        if raw[:2] in DATE_PREFIXES:
            raise OutcomeError(bad_request(f"{key} takes a date, without a prefix.", key))
        rng = parse_date(raw, key)
        if bound == "low":
            low = rng.low
        else:
            high = rng.high
        params.append((key, raw))
    if low is not None and high is not None and low >= high:
        raise OutcomeError(bad_request("start is after end.", "start"))
    if since is not None:
        params.append(("_since", since))
    return Scope(
        types=frozenset(named) if named else EVERYTHING_TYPES,
        since=parse_since(since) if since is not None else None,
        start=low,
        end=high,
        params=tuple(params),
    )


def _is_resource_type(name: str) -> bool:
    try:
        model = get_fhir_model_class(name)
    except (KeyError, ValueError):
        return False
    # Resource and DomainResource are abstract: no resource has them as its type.
    return issubclass(model, Resource) and model not in (Resource, DomainResource)


def _changed_since(session: Session, golden_id: str, since: datetime) -> bool:
    changed = session.scalar(
        select(GoldenPatient.last_updated).where(GoldenPatient.id == golden_id)
    )
    return changed is None or changed >= since


def _encounters_in(scope: Scope) -> list[ColumnElement[bool]]:
    conditions = []
    if scope.since is not None:
        conditions.append(Encounter.last_updated >= scope.since)
    if scope.start is not None or scope.end is not None:
        # An encounter without a period has no care date: it can't be shown to fall inside.
        conditions.append(Encounter.period_start.is_not(None))
    if scope.end is not None:
        conditions.append(Encounter.period_start < scope.end)
    if scope.start is not None:
        ends = func.coalesce(Encounter.period_end, Encounter.period_start)
        conditions.append(ends >= scope.start)
    return conditions


def everything(
    session: Session,
    golden_id: str,
    *,
    base: str,
    secret: str,
    count: int,
    cursor: str | None,
    forms: bool = False,
    scope: Scope = Scope(),
) -> tuple[dict[str, Any], list[str]]:
    """The page of ``$everything`` and the ids it disclosed (for the audit); ``forms``:
    the caller may read QuestionnaireResponses; ``scope``: what of the record is asked."""
    position = decode_cursor(secret, cursor) if cursor else {"phase": "patient"}
    phase = position.get("phase")
    last_encounter = position.get("e", 0)
    last_form = position.get("f", "")
    last_record = position.get("p", -1)
    last_history = position.get("m", 0)
    if (
        phase not in PHASES
        or not isinstance(last_encounter, int)
        or not isinstance(last_form, str)
        or not isinstance(last_record, int)
        or not isinstance(last_history, int)
    ):
        raise OutcomeError(bad_request("The paging cursor is invalid.", "_cursor"))
    patient = read_patient(session, golden_id)
    wanted = [
        name for name, rtype in PHASES.items() if rtype in scope.types and (name != "form" or forms)
    ]

    def after(current: str) -> str:
        """The next phase asked for after ``current`` ("done" after the last)."""
        order = list(PHASES)
        return next((p for p in order[order.index(current) + 1 :] if p in wanted), "done")

    if phase not in wanted:
        phase = after(phase)
    entries: list[dict[str, Any]] = []
    since = scope.since
    if phase == "patient":
        if since is None or _changed_since(session, golden_id, since):
            entries.append(match_entry(base, patient.as_dict()))
        phase = after("patient")
    if phase == "encounter":
        rows = session.scalars(
            select(Encounter)
            .where(Encounter.golden_id == golden_id, Encounter.id > last_encounter)
            .where(*_encounters_in(scope))
            .order_by(Encounter.id)
            .limit(count - len(entries) + 1)
        ).all()
        room = count - len(entries)
        entries.extend(match_entry(base, render_encounter(r)) for r in rows[:room])
        if len(rows) > room:
            last_encounter = rows[room - 1].id if room else last_encounter
        else:
            phase = after("encounter")
    if phase == "form" and len(entries) < count:
        # Through the forms' records' links, so that a merged record's forms follow it.
        stmt = (
            select(FormResponse)
            .join(Link, Link.source_record_id == FormResponse.source_record_id)
            .where(Link.golden_id == golden_id, FormResponse.id > last_form)
        )
        if since is not None:
            stmt = stmt.where(FormResponse.received_at >= since)
        found = session.scalars(
            stmt.order_by(FormResponse.id).limit(count - len(entries) + 1)
        ).all()
        room = count - len(entries)
        entries.extend(match_entry(base, f.resource) for f in found[:room])
        if len(found) > room:
            last_form = found[room - 1].id
        else:
            phase = after("form")
    if phase == "provenance" and len(entries) < count:
        provenance = provenance_of(session, golden_id, last_record, since)
        room = count - len(entries)
        entries.extend(match_entry(base, p) for p in provenance[:room])
        if len(provenance) > room:
            last_record = int(provenance[room - 1]["id"].rsplit("-", 1)[1])
        else:
            phase = after("provenance")
    if phase == "lifecycle" and len(entries) < count:
        room = count - len(entries)
        events = lifecycle_of(session, golden_id, last_history, room + 1, since)
        entries.extend(match_entry(base, resource) for _, resource in events[:room])
        if len(events) > room:
            last_history = events[room - 1][0]
        else:
            phase = "done"
    path = f"Patient/{golden_id}/$everything"
    asked = [*scope.params, ("_count", str(count))]
    next_url = None
    if phase != "done":
        position = {"e": last_encounter, "f": last_form, "p": last_record, "m": last_history}
        token = encode_cursor(secret, {"phase": phase, **position})
        next_url = page_url(base, path, [*asked, ("_cursor", token)])
    bundle = searchset(entries, self_url=page_url(base, path, asked), next_url=next_url)
    return bundle, [e["resource"]["id"] for e in entries]
