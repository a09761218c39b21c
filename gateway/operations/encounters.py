"""Encounters of golden patients: rendering, read and search.

An encounter is served as its source's FHIR JSON with ``subject`` pointing at
the golden ``Patient/<id>``, so every source's encounters of one person come
back together (https://hl7.org/fhir/R4/encounter.html#search). Its id here is
askonce's row id; the source's own id is kept as an identifier.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

from sqlalchemy import ColumnElement, Select, and_, func, literal, not_, or_, select, true, union
from sqlalchemy.orm import Session

from gateway.operations.json_tokens import HasElement, identifier_of_type
from gateway.operations.keyset import Keyset
from gateway.operations.params import (
    DateRange,
    Token,
    criteria_only,
    fail,
    parse_date,
    parse_of_type,
    parse_search,
    parse_token,
    split_or,
)
from gateway.operations.read import patient_ids, patients_by_id
from gateway.operations.sql import SortColumn, date_condition, missing_condition, not_in
from gateway.outcomes import OutcomeError, not_found
from store.models import Encounter, Source, SourceRecord
from store.types import UTCDateTime, fhir_instant

#: System of the identifier that carries an encounter's id in its source.
SOURCE_ID_SYSTEM = "urn:askonce:source:{source_id}:Encounter"
ENCOUNTER_SEARCH_PARAMS: dict[str, tuple[str, str]] = {
    "_id": ("token", "askonce id of the encounter"),
    "_lastUpdated": ("date", "When askonce last received the encounter"),
    "patient": ("reference", "The golden Patient (id or Patient/id); all linked sources"),
    "subject": ("reference", "The same as patient: the golden Patient (id or Patient/id)"),
    "date": ("date", "A date within the period of the encounter"),
    "status": ("token", "planned | arrived | in-progress | finished | cancelled | …"),
    "class": ("token", "Classification of the encounter (v3 ActCode, e.g. AMB, IMP)"),
    "identifier": (
        "token",
        "An identifier of the encounter; its source's own id is"
        " urn:askonce:source:<source id>:Encounter|<id>; :of-type=system|code|value by a"
        " coding of its type",
    ),
    "type": ("token", "Specific type of encounter (a coding of Encounter.type)"),
}
SUPPORTED = {name: frozenset[str]() for name in ENCOUNTER_SEARCH_PARAMS}
#: Modifiers (https://hl7.org/fhir/R4/search.html#modifiers): a code or an identifier that
#: isn't, and an encounter without a period or a type (``status`` and ``class`` are
#: required in R4; an identifier is always served, the one carrying the source's own id).
SUPPORTED |= {
    "status": frozenset({"not"}),
    "class": frozenset({"not"}),
    "type": frozenset({"not", "missing"}),
    "identifier": frozenset({"not", "missing", "of-type"}),
    "date": frozenset({"missing"}),
}
SORTABLE = frozenset({"_id", "_lastUpdated", "date"})
#: ``_include`` values of an Encounter search -> the type they add (every one the subject).
INCLUDES = {
    "Encounter:subject": "Patient",
    "Encounter:patient": "Patient",
    "Encounter:subject:Patient": "Patient",
    "Encounter:patient:Patient": "Patient",
}
#: Reference parameters that take a chained Patient parameter (``patient.identifier=…``).
CHAINS = {"patient": "Patient", "subject": "Patient"}
#: The parameters that refer to the golden Patient: what a Patient search's ``_has``
#: reverse-chains through (``_has:Encounter:patient:status=finished``).
REFERENCES_TO_PATIENT = frozenset(CHAINS)
#: :data:`SOURCE_ID_SYSTEM` as searched: the source's id.
SOURCE_ID_PATTERN = re.compile(r"^urn:askonce:source:([0-9]{1,9}):Encounter$")
#: Encounter ids are askonce row ids: digits that fit a BIGINT.
ROW_ID = re.compile(r"^[0-9]{1,18}$")
#: Sort position of an encounter without a start date (first ascending, last descending).
NO_START = datetime(1, 1, 1, tzinfo=UTC)

_SORT: dict[str, SortColumn] = {
    "_id": (Encounter.id, "int"),
    "_lastUpdated": (Encounter.last_updated, "dt"),
    "date": (func.coalesce(Encounter.period_start, literal(NO_START, UTCDateTime)), "dt"),
}


class EncounterRow(Protocol):
    """What rendering reads of an ``encounter`` row: the ORM object, or a Core row of
    these columns (:data:`RENDER_COLUMNS`, lighter when thousands are rendered)."""

    @property
    def id(self) -> int: ...
    @property
    def source_id(self) -> int: ...
    @property
    def golden_id(self) -> str | None: ...
    @property
    def resource(self) -> dict[str, Any]: ...
    @property
    def last_updated(self) -> datetime | None: ...


RENDER_COLUMNS = (
    Encounter.id,
    Encounter.source_id,
    Encounter.golden_id,
    Encounter.resource,
    Encounter.last_updated,
)


def render_encounter(row: EncounterRow) -> dict[str, Any]:
    resource = dict(row.resource or {})
    source_id = resource.get("id")
    resource["resourceType"] = "Encounter"
    resource["id"] = str(row.id)
    resource["subject"] = {"reference": f"Patient/{row.golden_id}"}
    meta = {k: v for k, v in (resource.get("meta") or {}).items() if k not in ("versionId",)}
    meta["lastUpdated"] = fhir_instant(row.last_updated)
    resource["meta"] = meta
    if source_id:
        system = SOURCE_ID_SYSTEM.format(source_id=row.source_id)
        identifiers = [i for i in resource.get("identifier") or [] if i.get("system") != system]
        identifiers.append({"system": system, "value": str(source_id)})
        resource["identifier"] = identifiers
    return resource


def encounters_of(session: Session, golden_ids: Sequence[str]) -> list[dict[str, Any]]:
    rows = session.scalars(
        select(Encounter)
        .where(Encounter.golden_id.in_(list(golden_ids)))
        .order_by(Encounter.golden_id, Encounter.period_start, Encounter.id)
    ).all()
    return [render_encounter(r) for r in rows]


def read_encounter(session: Session, encounter_id: str) -> dict[str, Any]:
    row = session.get(Encounter, int(encounter_id)) if ROW_ID.match(encounter_id) else None
    if row is None or row.golden_id is None:
        raise OutcomeError(not_found("No such Encounter."))
    return render_encounter(row)


def _period_condition(rng: DateRange) -> ColumnElement[bool]:
    """FHIR date search against a Period (https://hl7.org/fhir/R4/search.html#prefix)."""
    start = Encounter.period_start
    end = func.coalesce(Encounter.period_end, Encounter.period_start)
    eq = and_(start >= rng.low, end < rng.high)
    return and_(
        start.is_not(None),
        {
            "eq": eq,
            "ap": or_(eq, and_(start < rng.high, end >= rng.low)),
            "ne": not_(eq),
            "lt": start < rng.low,
            "le": start < rng.high,
            "gt": end >= rng.high,
            "ge": end >= rng.low,
            "sa": start >= rng.high,
            "eb": end < rng.low,
        }[rng.prefix],
    )


def _code_condition(column: Any, name: str, modifier: str | None, raw: str) -> Any:
    codes = []
    for alt in split_or(raw):
        token = parse_token(alt)
        if token.code is None:
            raise fail(f"Parameter {name} needs a code.", name)
        codes.append(token.code)
    return not_in(column, codes) if modifier == "not" else column.in_(codes)


def _criterion(session: Session, name: str, modifier: str | None, raw: str) -> ColumnElement[bool]:
    reference, chained, param = name.partition(".")
    if chained:  # patient.identifier=…: the encounters of the Patients that search finds
        # Imported here: the Patient search imports this module (for its _revinclude).
        from gateway.operations.search_patient import matching_patients

        return Encounter.golden_id.in_(matching_patients([(param, raw)], reference))
    if name in REFERENCES_TO_PATIENT:
        return Encounter.golden_id.in_(patient_ids(session, raw, name))
    return _condition(name, modifier, raw)


def _condition(name: str, modifier: str | None, raw: str) -> ColumnElement[bool]:
    """A criterion on the encounter's own columns (any but a reference or a chain)."""
    if name == "_id":
        return Encounter.id.in_([int(i) for i in split_or(raw) if ROW_ID.match(i)])
    if name == "date":
        if modifier == "missing":
            return missing_condition(Encounter.period_start.is_not(None), raw, name)
        return or_(*(_period_condition(parse_date(a, name)) for a in split_or(raw)))
    if name == "_lastUpdated":
        ranges = [parse_date(a, name) for a in split_or(raw)]
        return or_(*(date_condition(Encounter.last_updated, r, as_date=False) for r in ranges))
    if name == "status":
        return _code_condition(Encounter.status, name, modifier, raw)
    if name == "identifier":
        if modifier == "missing":  # every encounter is served with its source's own id
            return missing_condition(true(), raw, name)
        if modifier == "of-type":  # the source's identifiers: askonce's own has no type
            typed = [parse_of_type(alt, name) for alt in split_or(raw)]
            return or_(*(identifier_of_type(Encounter.resource, *t) for t in typed))
        found = or_(*(_identifier_condition(parse_token(alt), name) for alt in split_or(raw)))
        # :not, none of them: the ids of those that have one left out (NULL-safe, where
        # a JSON test on an encounter without identifiers is NULL, not false).
        if modifier == "not":
            return Encounter.id.not_in(select(Encounter.id).where(found))
        return found
    if name == "type":
        if modifier == "missing":
            return missing_condition(HasElement(Encounter.resource, "type", {}), raw, name)
        tokens = [parse_token(alt) for alt in split_or(raw)]
        if modifier == "not":  # none of them: no such coding, or no type at all
            return and_(*(_type_condition(token, name).negated() for token in tokens))
        return or_(*(_type_condition(token, name) for token in tokens))
    return _code_condition(Encounter.class_code, name, modifier, raw)


def _token_fields(token: Token, name: str, key: str) -> dict[str, str | None]:
    """What an element matching ``token`` holds: its ``system`` and its ``key`` (the
    identifier's ``value``, the coding's ``code``); a None value must be absent."""
    token.require(name)
    fields: dict[str, str | None] = {} if token.code is None else {key: token.code}
    if token.system is not None or token.no_system:
        fields["system"] = token.system
    return fields


def _identifier_condition(token: Token, name: str) -> ColumnElement[bool]:
    """``identifier``: an identifier the source gave the encounter, or the one askonce
    serves with its source's own id (:data:`SOURCE_ID_SYSTEM`), found by that id."""
    fields = _token_fields(token, name, "value")
    own = SOURCE_ID_PATTERN.match(token.system or "")
    if own is not None:
        source = Encounter.source_id == int(own.group(1))
        return source if token.code is None else and_(source, _with_source_id(token.code))
    stored = HasElement(Encounter.resource, "identifier", fields)
    if token.system is None and not token.no_system and token.code is not None:
        # The value in any system: one id list of both lookups, so that each uses its
        # index (an OR of the two would read every Encounter on PostgreSQL).
        either = union(
            select(Encounter.id).where(stored),
            select(Encounter.id).where(_with_source_id(token.code)),
        )
        return Encounter.id.in_(either)
    return stored


def _with_source_id(resource_id: str) -> ColumnElement[bool]:
    """Encounters whose source calls them ``resource_id`` (the source record's key)."""
    return Encounter.source_record_id.in_(
        select(SourceRecord.id).where(
            SourceRecord.source_id.in_(select(Source.id)),  # the unique index's first column
            SourceRecord.resource_type == "Encounter",
            SourceRecord.resource_id == resource_id,
        )
    )


def _type_condition(token: Token, name: str) -> HasElement:
    return HasElement(Encounter.resource, "type", _token_fields(token, name, "code"), "coding")


def encounter_filter(session: Session, items: Sequence[tuple[str, str]]) -> ColumnElement[bool]:
    """The Encounters an Encounter search with these criteria finds, as a condition on the
    ``encounter`` table; 400 on an unknown or invalid parameter."""
    criteria_only(items, "_typeFilter")
    request = parse_search(
        items,
        SUPPORTED,
        sortable=SORTABLE,
        chains=CHAINS,
        strict=True,
        default_count=1,
        max_count=1,
    )
    return and_(
        Encounter.golden_id.is_not(None),
        *(_criterion(session, name, mod, raw) for name, mod, raw in request.criteria),
    )


def patients_with_encounters(items: Sequence[tuple[str, str]], where: str) -> Select[Any]:
    """The golden ids with an encounter an Encounter search with these criteria finds: a
    Patient search's ``_has:Encounter:patient:…`` (https://hl7.org/fhir/R4/search.html#has).
    400, naming ``where``, on anything but a valid criterion of the encounter's own."""
    criteria_only(items, where)
    own = {k: v for k, v in SUPPORTED.items() if k not in REFERENCES_TO_PATIENT}
    request = parse_search(items, own, sortable=SORTABLE, strict=True, default_count=1, max_count=1)
    stmt = select(Encounter.golden_id).where(Encounter.golden_id.is_not(None))
    for name, modifier, raw in request.criteria:
        stmt = stmt.where(_condition(name, modifier, raw))
    return stmt


def _value_of(row: Encounter, param: str) -> Any:
    if param == "_id":
        return row.id
    return row.last_updated if param == "_lastUpdated" else (row.period_start or NO_START)


def _subjects(session: Session, rows: Sequence[Encounter]) -> list[dict[str, Any]]:
    """The golden Patients a page of encounters points at (``_include=Encounter:subject``)."""
    return patients_by_id(session, [row.golden_id for row in rows if row.golden_id])


ENCOUNTER_KEYSET = Keyset(
    path="Encounter",
    rows=lambda: select(Encounter).where(Encounter.golden_id.is_not(None)),
    supported=SUPPORTED,
    sortable=SORTABLE,
    criterion=_criterion,
    sort=_SORT,
    value_of=_value_of,
    render=render_encounter,
    includes=dict.fromkeys(INCLUDES, _subjects),
    chains=CHAINS,
)
search_encounters = ENCOUNTER_KEYSET.search
