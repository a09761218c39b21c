"""Patient read, vread and ``_history`` on the golden record.

https://hl7.org/fhir/R4/http.html#read, #vread and #history. The read returns the
stored JSON text as is (it was rendered and validated when written), so the hot
path is one indexed query and no JSON round trip. A golden record merged into
another still answers, with ``active: false`` and a ``Patient.link`` of type
``replaced-by`` pointing at the survivor (https://hl7.org/fhir/R4/patient.html#links).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any

from sqlalchemy import Connection, Select, Text, bindparam, cast, func, literal, select, tuple_
from sqlalchemy.orm import Session

from gateway.operations.bundle import page_url, shape
from gateway.operations.paging import decode_cursor, encode_cursor
from gateway.operations.params import fail, parse_since, split_or
from gateway.outcomes import OutcomeError, bad_request, gone, not_found
from store.db import settled_time
from store.models import GoldenPatient, GoldenPatientVersion
from store.types import UTCDateTime, fhir_instant

#: A merge chain (A merged into B merged into C) is followed at most this far.
MAX_MERGE_HOPS = 16
REPLACED_BY = "replaced-by"
#: https://hl7.org/fhir/R4/datatypes.html#id
FHIR_ID = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
OPERATION_NAME = re.compile(r"^\$[A-Za-z-]{1,64}$")
ACTIVE, MERGED, DELETED = "active", "merged", "deleted"


@dataclass(frozen=True, slots=True)
class StoredResource:
    """A resource ready to send: its JSON text (or parsed form) and its version."""

    resource_type: str
    id: str
    version: int
    text: str | None = None
    resource: dict[str, Any] | None = None

    def as_dict(self) -> dict[str, Any]:
        if self.resource is not None:
            return self.resource
        return dict(json.loads(self.text or "{}"))


#: Built once: the read is the hottest query (the JSON comes back as text, unparsed).
_READ = select(
    GoldenPatient.version,
    GoldenPatient.status,
    cast(GoldenPatient.resource, Text).label("text"),
).where(GoldenPatient.id == bindparam("golden_id"))


def check_id(resource_type: str, raw: str) -> str:
    """``raw`` if it is a valid FHIR id; otherwise no such resource can exist (404)."""
    if not FHIR_ID.match(raw):
        if OPERATION_NAME.match(raw):  # GET /fhir/Patient/$nosuch: not an id, an operation
            detail = f"{resource_type} has no operation {raw} (GET /fhir/metadata lists them)."
            raise OutcomeError(not_found(detail))
        raise OutcomeError(not_found(f"{resource_type}/<id>: not a valid FHIR id."))
    return raw


def survivor_of(session: Session | Connection, golden_id: str) -> str | None:
    """The active golden record ``golden_id`` was merged into, following chains."""
    current, seen = golden_id, {golden_id}
    for _ in range(MAX_MERGE_HOPS):
        row = session.execute(
            select(GoldenPatient.status, GoldenPatient.merged_into).where(
                GoldenPatient.id == current
            )
        ).first()
        if row is None or row.status != MERGED or row.merged_into is None:
            return current if current != golden_id else None
        if row.merged_into in seen:
            return None
        current = row.merged_into
        seen.add(current)
    return None


def patient_ids(session: Session | Connection, raw: str, parameter: str) -> list[str]:
    """The golden ids a reference search parameter (``patient=<id>,Patient/<id>``) names,
    each with the survivor it was merged into; 400 for a reference to anything else."""
    ids = []
    for alt in split_or(raw):
        ref = alt.removeprefix("Patient/")
        if "/" in ref or not ref:
            raise fail(f"{parameter} takes a Patient id or Patient/<id>.", parameter)
        ids.append(ref)
        survivor = survivor_of(session, ref)
        if survivor is not None:
            ids.append(survivor)
    return ids


def with_replaced_by(resource: dict[str, Any], survivor: str) -> dict[str, Any]:
    """Mark a merged record: inactive, and linked ``replaced-by`` to its survivor."""
    out = dict(resource)
    out["active"] = False
    links = [link for link in out.get("link") or [] if link.get("type") != REPLACED_BY]
    links.insert(0, {"other": {"reference": f"Patient/{survivor}"}, "type": REPLACED_BY})
    out["link"] = links
    return out


def stored_from_row(
    golden_id: str,
    row: Sequence[Any] | None,
    survivor: Callable[[], str | None] | None,
) -> StoredResource:
    """Apply the status rules to a ``(version, status, json text)`` row: 404 when there is
    none, 410 when deleted, ``replaced-by`` (via ``survivor()``) when merged."""
    if row is None:
        raise OutcomeError(not_found(f"Patient/{golden_id} is not known."))
    version, status, text = row
    if status == DELETED:
        raise OutcomeError(gone(f"Patient/{golden_id} was deleted."))
    if status == MERGED:
        resource = json.loads(text)
        target = survivor() if survivor is not None else None
        if target is not None:
            resource = with_replaced_by(resource, target)
        return StoredResource("Patient", golden_id, version, resource=resource)
    return StoredResource("Patient", golden_id, version, text=text)


def read_patient(session: Session | Connection, golden_id: str) -> StoredResource:
    """The current version; 404 if unknown, 410 if deleted, replaced-by if merged."""
    check_id("Patient", golden_id)
    row = session.execute(_READ, {"golden_id": golden_id}).first()
    return stored_from_row(
        golden_id,
        tuple(row) if row is not None else None,
        survivor=lambda: survivor_of(session, golden_id),
    )


def patients_by_id(
    session: Session | Connection, golden_ids: Sequence[str]
) -> list[dict[str, Any]]:
    """The current version of each of ``golden_ids`` (in their order, each once) as a read
    answers it, for a searchset's included Patients: merged ones ``replaced-by`` their
    survivor; unknown and deleted ones left out (an include finds what exists)."""
    wanted = list(dict.fromkeys(golden_ids))
    if not wanted:
        return []
    rows = {
        row.id: (row.version, row.status, row.text)
        for row in session.execute(
            select(
                GoldenPatient.id,
                GoldenPatient.version,
                GoldenPatient.status,
                cast(GoldenPatient.resource, Text).label("text"),
            ).where(GoldenPatient.id.in_(wanted))
        )
    }
    found = []
    for golden_id in wanted:
        row = rows.get(golden_id)
        if row is None or row[1] == DELETED:
            continue
        stored = stored_from_row(golden_id, row, survivor=partial(survivor_of, session, golden_id))
        found.append(stored.as_dict())
    return found


def parse_version(raw: str) -> int:
    if not raw.isdigit() or len(raw) > 9:
        raise OutcomeError(bad_request("The version id must be a positive integer.", "vid"))
    return int(raw)


def vread_patient(session: Session, golden_id: str, version_raw: str) -> StoredResource:
    check_id("Patient", golden_id)
    version = parse_version(version_raw)
    row = session.get(GoldenPatientVersion, (golden_id, version))
    if row is None:
        if session.get(GoldenPatient, golden_id) is None:
            raise OutcomeError(not_found(f"Patient/{golden_id} is not known."))
        raise OutcomeError(not_found(f"Patient/{golden_id} has no version {version}."))
    if row.status == DELETED:
        raise OutcomeError(gone(f"Patient/{golden_id} version {version} is a deletion."))
    return StoredResource("Patient", golden_id, version, resource=dict(row.resource))


def _history_entry(asked: HistoryPage, row: GoldenPatientVersion) -> dict[str, Any]:
    """One version as a ``history`` entry: created (the first), updated, or a deletion
    (no resource, ``DELETE``), with its version as the ``etag``; the resource cut down as
    ``_elements`` or ``_summary`` ask."""
    base = asked.base
    url = f"Patient/{row.golden_id}"
    response = {"etag": f'W/"{row.version}"', "lastModified": fhir_instant(row.recorded_at)}
    if row.status == DELETED:
        return {
            "fullUrl": f"{base}/fhir/{url}",
            "request": {"method": "DELETE", "url": url},
            "response": {"status": "204 No Content", **response},
        }
    first = row.version == 1
    return {
        "fullUrl": f"{base}/fhir/{url}",
        "resource": shape(row.resource, asked.elements, asked.summary),
        "request": {"method": "POST" if first else "PUT", "url": "Patient" if first else url},
        "response": {"status": "201 Created" if first else "200 OK", **response},
    }


#: History parameters not supported: ignoring one would answer with more than was asked.
UNSUPPORTED_HISTORY_PARAMS = ("_at", "_list")


def check_history_params(names: Iterable[str]) -> None:
    """400 for a ``_history`` parameter askonce does not support (``_at``, ``_list``)."""
    for name in names:
        if name in UNSUPPORTED_HISTORY_PARAMS:
            raise OutcomeError(
                bad_request(
                    f"{name} is not supported on _history; _since, _count, _summary and"
                    " _elements are.",
                    name,
                )
            )


@dataclass(frozen=True, slots=True)
class HistoryPage:
    """What a ``_history`` request asks for (its page size, paging cursor and ``_since``)
    and the base URL its links start with."""

    base: str
    count: int
    cursor: str | None
    secret: str
    since: str | None = None
    #: ``_summary=count``: the number of versions only.
    counted: bool = False
    #: ``_elements`` or ``_summary`` (true, text, data): how each version is cut down.
    elements: tuple[str, ...] = ()
    summary: str | None = None

    def params(self) -> list[tuple[str, str]]:
        """The parameters of the self and next links."""
        params = [("_since", self.since)] if self.since else []
        if self.counted:
            params.append(("_summary", "count"))
        elif self.summary is not None:
            params.append(("_summary", self.summary))
        if self.elements:
            params.append(("_elements", ",".join(self.elements)))
        return [*params, ("_count", str(self.count))]


def history_patient(session: Session, golden_id: str, asked: HistoryPage) -> dict[str, Any]:
    """The ``history-instance`` Bundle of one golden record, newest version first, paged
    by version number; ``_since``: only the versions recorded from then on."""
    check_id("Patient", golden_id)
    stmt = _since_filtered(select(GoldenPatientVersion), asked.since)
    stmt = stmt.where(GoldenPatientVersion.golden_id == golden_id)
    if session.get(GoldenPatient, golden_id) is None:
        raise OutcomeError(not_found(f"Patient/{golden_id} is not known."))
    if asked.counted:
        return _history_total(session, asked, f"Patient/{golden_id}/_history", stmt)
    position, as_of = _history_position(session, asked)
    if position:
        before = position.get("v")
        if not isinstance(before, int):
            raise OutcomeError(bad_request("The paging cursor is invalid.", "_cursor"))
        stmt = stmt.where(GoldenPatientVersion.version < before)
    rows = session.scalars(
        stmt.order_by(GoldenPatientVersion.version.desc()).limit(asked.count + 1)
    ).all()
    return _history_bundle(
        asked, f"Patient/{golden_id}/_history", rows, as_of, lambda row: {"v": row.version}
    )


#: The order of ``history-type``: newest first; ties (one write's records share their
#: time) in a fixed order, so that a keyset cursor is exact.
_TYPE_HISTORY_ORDER = (
    GoldenPatientVersion.recorded_at.desc(),
    GoldenPatientVersion.golden_id.desc(),
    GoldenPatientVersion.version.desc(),
)


def history_patients(session: Session, asked: HistoryPage) -> tuple[dict[str, Any], list[str]]:
    """The ``history-type`` Bundle of every golden record: each version, newest first,
    deletions included (https://hl7.org/fhir/R4/http.html#history), paged by a keyset
    cursor on (time, id, version), read through ``ix_golden_patient_version_recorded``.
    Versions written while a client pages come before its first page, so its pages do
    not shift; a client that follows changes asks again with ``_since`` the Bundle's
    ``meta.lastUpdated`` (see :func:`_history_position`). Returns the Bundle and the
    ids of the records it discloses."""
    stmt = _since_filtered(select(GoldenPatientVersion), asked.since)
    if asked.counted:
        return _history_total(session, asked, "Patient/_history", stmt), []
    position, as_of = _history_position(session, asked)
    if position:
        at, golden_id, version = position.get("t"), position.get("g"), position.get("v")
        if not (isinstance(at, str) and isinstance(golden_id, str) and isinstance(version, int)):
            raise OutcomeError(bad_request("The paging cursor is invalid.", "_cursor"))
        stmt = stmt.where(
            tuple_(
                GoldenPatientVersion.recorded_at,
                GoldenPatientVersion.golden_id,
                GoldenPatientVersion.version,
            )
            < tuple_(
                literal(datetime.fromisoformat(at), UTCDateTime()),
                literal(golden_id),
                literal(version),
            )
        )
    rows = session.scalars(stmt.order_by(*_TYPE_HISTORY_ORDER).limit(asked.count + 1)).all()
    bundle = _history_bundle(
        asked,
        "Patient/_history",
        rows,
        as_of,
        lambda row: {"t": row.recorded_at.isoformat(), "g": row.golden_id, "v": row.version},
    )
    return bundle, list(dict.fromkeys(row.golden_id for row in rows[: asked.count]))


#: The key of a history cursor that carries the first page's ``meta.lastUpdated``.
_AS_OF = "as_of"


def _history_position(session: Session, asked: HistoryPage) -> tuple[dict[str, Any], str]:
    """Where the page starts (the cursor's position; empty on the first page) and the
    instant the Bundle's ``meta.lastUpdated`` gives: on the first page
    :func:`store.db.settled_time` (every version recorded up to it was committed before
    the page was read, so ``_since`` it misses none that commit later), carried by the
    cursor to the next pages."""
    if asked.cursor is None:
        return {}, fhir_instant(settled_time(session))
    position = decode_cursor(asked.secret, asked.cursor)
    as_of = position.pop(_AS_OF, None)
    if not isinstance(as_of, str) or not position:
        raise OutcomeError(bad_request("The paging cursor is invalid.", "_cursor"))
    return position, as_of


def _since_filtered(stmt: Select[Any], since: str | None) -> Select[Any]:
    """``stmt`` limited to the versions recorded at or after ``_since``
    (https://hl7.org/fhir/R4/http.html#history; a date stands for its first instant, UTC)."""
    if since is None:
        return stmt
    return stmt.where(GoldenPatientVersion.recorded_at >= parse_since(since))


def _history_bundle(
    asked: HistoryPage,
    path: str,
    rows: Sequence[GoldenPatientVersion],
    as_of: str,
    position: Callable[[GoldenPatientVersion], dict[str, Any]],
) -> dict[str, Any]:
    """A ``history`` Bundle of the first ``count`` of ``rows`` (one more was read: then a
    next link carries ``position`` of the page's last row, and ``as_of``, in a signed
    cursor)."""
    page = rows[: asked.count]
    params = asked.params()
    links = [{"relation": "self", "url": page_url(asked.base, path, params)}]
    if len(rows) > asked.count:
        token = encode_cursor(asked.secret, {**position(page[-1]), _AS_OF: as_of})
        links.append(
            {"relation": "next", "url": page_url(asked.base, path, [*params, ("_cursor", token)])}
        )
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "meta": {"lastUpdated": as_of},
        "type": "history",
        "link": links,
    }
    if page:
        bundle["entry"] = [_history_entry(asked, row) for row in page]
    return bundle


def _history_total(
    session: Session, asked: HistoryPage, path: str, stmt: Select[Any]
) -> dict[str, Any]:
    """``_summary=count``: a ``history`` Bundle with the number of versions, no entries."""
    total = session.scalar(select(func.count()).select_from(stmt.subquery())) or 0
    return {
        "resourceType": "Bundle",
        "type": "history",
        "total": int(total),
        "link": [{"relation": "self", "url": page_url(asked.base, path, asked.params())}],
    }
