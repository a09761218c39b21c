"""Bulk Data ``$export`` for consumers: kick-off, status, files, cancellation.

https://hl7.org/fhir/uv/bulkdata/export.html (STU 2). A consumer kicks off an export of
every golden Patient and every Encounter (``[base]/$export``, ``[base]/Patient/$export``;
GET with query parameters or POST with a ``Parameters`` body), polls the status URL it is
given (202 while it runs, then the JSON manifest), downloads the NDJSON files the manifest
lists, and may delete the job. Only the client that kicked a job off sees it.

:func:`run_export` writes the files, one transaction per file together with the job's
``position``; it runs on a worker (services mode) or in the API process (embedded). An
export interrupted anywhere (a worker killed) resumes from its last file once its lease
runs out: the task is redelivered, or the next status poll hands the job out again.

The manifest's ``transactionTime`` is :func:`store.db.settled_time`: every change
stamped up to it was committed before the files are read, however long the sync
transactions that were writing at the kick-off took to commit (the kick-off's own clock
would leave out a change stamped before it and committed after it, from this export and
from the next one, ``_since`` this time, too).

What a file holds is exact as of the manifest's ``transactionTime``: a golden record
changed after it is written as the version it had then (``golden_patient_version``), one
created after it is left out. Encounters keep no versions: one changed during the export
is written as it is now (the next export with ``_since=transactionTime`` has it again).
With ``_since``, ``deleted`` lists the golden records deleted since then (from the golden
record's own row: exact) and the Encounters (from their ``encounter.deleted`` events,
which reach back as far as the outbox retention; an older ``_since`` adds a warning to
the ``error`` file instead of claiming a complete list).
"""

from __future__ import annotations

import gzip
import json
import logging
import re
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, TypeVar
from urllib.parse import parse_qsl

from sqlalchemy import ColumnElement, Select, Text, cast, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from gateway.operations.bundle import shape
from gateway.operations.encounters import RENDER_COLUMNS, encounter_filter, render_encounter
from gateway.operations.read import ACTIVE, DELETED, MERGED, survivor_of, with_replaced_by
from gateway.operations.search_patient import patient_filter
from gateway.outcomes import (
    Outcome,
    OutcomeError,
    bad_request,
    forbidden,
    issue,
    not_found,
    operation_outcome,
    outcome,
)
from store.db import settled_time
from store.models import (
    Encounter,
    ExportFile,
    ExportJob,
    GoldenPatient,
    GoldenPatientVersion,
    Outbox,
)
from store.types import as_utc, fhir_instant, utcnow

log = logging.getLogger(__name__)

#: https://hl7.org/fhir/uv/bulkdata/OperationDefinition-export.html and -patient-export.
EXPORT_DEFINITION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/export"
PATIENT_EXPORT_DEFINITION = "http://hl7.org/fhir/uv/bulkdata/OperationDefinition/patient-export"
NDJSON = "application/fhir+ndjson"
#: The Data Provider SHALL accept these three (``_outputFormat``).
OUTPUT_FORMATS = frozenset({"application/fhir+ndjson", "application/ndjson", "ndjson"})
#: What this server holds, in the order files are written.
EXPORT_TYPES = ("Patient", "Encounter")
SYSTEM, PATIENT = "system", "patient"
ACCEPTED, RUNNING, COMPLETED, FAILED = "accepted", "running", "completed", "failed"
IN_PROGRESS = (ACCEPTED, RUNNING)
OUTPUT, DELETED_KIND, ERROR = "output", "deleted", "error"
#: A worker holds a job this long without writing a file before another may take it.
LEASE_S = 120
#: What a 202 status answer tells the client to wait (s).
RETRY_AFTER_S = 2
DEFAULT_FILE_RESOURCES = 10_000
DEFAULT_RETENTION_HOURS = 24
DEFAULT_MAX_ACTIVE = 4
#: A parameter or type name is echoed this long at most.
MAX_NAME = 64
#: ``patient`` references in one kick-off at most.
MAX_PATIENTS = 1000
#: Elements a resource keeps whatever ``_elements`` says (R4 cardinality 1..1).
MANDATORY = {"Encounter": ("status", "class")}
#: A FHIR instant: https://hl7.org/fhir/R4/datatypes.html#instant
_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:\d{2})$")
_ELEMENT = re.compile(r"^(?:(?P<type>[A-Z][A-Za-z]+)\.)?(?P<name>[a-z][A-Za-z0-9]*)$")
_PATIENT_REF = re.compile(r"^(?:.*/)?Patient/(?P<id>[A-Za-z0-9\-.]{1,64})$")
#: Kick-off parameters this server does not support; asked for, they are a 400, or
#: ignored (with a note in the error file) under ``Prefer: handling=lenient``.
_UNSUPPORTED = frozenset({"includeAssociatedData"})
KICKOFF_PARAMETERS = frozenset(
    {"_outputFormat", "_since", "_type", "_elements", "patient", "_typeFilter"}
)
#: ``_typeFilter`` queries in one kick-off at most.
MAX_TYPE_FILTERS = 20


@dataclass(frozen=True)
class ExportRequest:
    """A parsed kick-off: what to export. Stored as the job's ``params``."""

    level: str
    types: tuple[str, ...]
    since: datetime | None = None
    #: ``_elements``: per type (None: every type), the elements to keep.
    elements: tuple[str, ...] = ()
    patients: tuple[str, ...] = ()
    #: What a lenient kick-off ignored, told in the error file.
    ignored: tuple[str, ...] = ()
    #: ``_typeFilter``: (type, search query) pairs; a type's queries are ORed.
    type_filters: tuple[tuple[str, str], ...] = ()

    def as_params(self) -> dict[str, Any]:
        return {
            "level": self.level,
            "types": list(self.types),
            "since": self.since.isoformat() if self.since else None,
            "elements": list(self.elements),
            "patients": list(self.patients),
            "ignored": list(self.ignored),
            "type_filters": [list(pair) for pair in self.type_filters],
        }

    @classmethod
    def from_params(cls, params: dict[str, Any]) -> ExportRequest:
        since = params.get("since")
        return cls(
            level=str(params.get("level", SYSTEM)),
            types=tuple(params.get("types") or ()),
            since=datetime.fromisoformat(since) if since else None,
            elements=tuple(params.get("elements") or ()),
            patients=tuple(params.get("patients") or ()),
            ignored=tuple(params.get("ignored") or ()),
            type_filters=tuple((t, q) for t, q in params.get("type_filters") or ()),
        )

    def filters_for(self, resource_type: str) -> list[list[tuple[str, str]]]:
        """The ``_typeFilter`` queries of a type, each as its (name, value) pairs."""
        return [
            parse_qsl(query, keep_blank_values=True)
            for t, query in self.type_filters
            if t == resource_type
        ]

    def elements_for(self, resource_type: str) -> tuple[str, ...]:
        """The root elements ``_elements`` keeps of this type (with the type's mandatory
        ones: :func:`gateway.operations.bundle.shape` adds id and meta); () keeps all."""
        names: list[str] = []
        for entry in self.elements:
            match = _ELEMENT.match(entry)
            if match and match.group("type") in (None, resource_type):
                names.append(match.group("name"))
        return (*names, *MANDATORY.get(resource_type, ())) if names else ()


@dataclass(frozen=True)
class ExportSettings:
    file_resources: int = DEFAULT_FILE_RESOURCES
    retention_hours: int = DEFAULT_RETENTION_HOURS
    max_active: int = DEFAULT_MAX_ACTIVE
    #: How far back ``encounter.deleted`` events reach (days; 0: for ever).
    outbox_retention_days: int = 0


def throttled(detail: str, retry_after_s: int) -> Outcome:
    """429: the client has as many exports in progress as it may."""
    return outcome(429, "throttled", detail, headers={"Retry-After": str(retry_after_s)})


# --- kick-off -------------------------------------------------------------------------


def _instant(raw: str, name: str) -> datetime:
    value = raw.strip()
    if " " in value and "+" not in value:  # a "+hh:mm" offset sent unencoded in a query
        value = value.replace(" ", "+")
    if not _INSTANT.match(value):
        raise OutcomeError(bad_request(f"{name} must be a FHIR instant with a time zone.", name))
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError as exc:
        raise OutcomeError(bad_request(f"{name} is not a valid instant.", name)) from exc
    return as_utc(parsed) or parsed


def _split(values: Iterable[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def parameters_from_body(body: Any) -> list[tuple[str, str]]:
    """A POST kick-off's ``Parameters`` as (name, value) pairs, as a GET would send them."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise OutcomeError(bad_request("The body must be a Parameters resource."))
    pairs: list[tuple[str, str]] = []
    for index, parameter in enumerate(body.get("parameter") or []):
        where = f"Parameters.parameter[{index}]"
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise OutcomeError(bad_request("Each parameter needs a name.", where))
        name = parameter["name"]
        values = [
            v for k, v in parameter.items() if k.startswith("value") and k != "valueReference"
        ]
        reference = parameter.get("valueReference")
        if isinstance(reference, dict) and isinstance(reference.get("reference"), str):
            values.append(reference["reference"])
        if len(values) != 1 or not isinstance(values[0], str):
            raise OutcomeError(bad_request(f"Parameter {name} needs one string value.", where))
        pairs.append((name, values[0]))
    return pairs


def parse_kickoff(
    items: Sequence[tuple[str, str]],
    *,
    level: str,
    lenient: bool,
    readable: Callable[[str], bool],
    post: bool = False,
) -> ExportRequest:
    """The export a kick-off asks for. 400 for a malformed or unsupported parameter
    (ignored and noted instead under ``lenient``), 403 for a type the client may not read."""
    ignored: list[str] = []

    def unsupported(detail: str, name: str) -> None:
        if not lenient:
            raise OutcomeError(
                outcome(
                    400,
                    "not-supported",
                    detail + " (Prefer: handling=lenient ignores it)",
                    expression=name,
                )
            )
        ignored.append(detail)

    by_name: dict[str, list[str]] = {}
    for name, value in items:
        # A name is echoed in the answer and the error file: a long one is cut short.
        by_name.setdefault(name[:MAX_NAME], []).append(value)
    for name in by_name:
        if name in _UNSUPPORTED:
            unsupported(f"{name} is not supported.", name)
        elif name not in (
            "_outputFormat",
            "_since",
            "_type",
            "_elements",
            "patient",
            "_typeFilter",
        ):
            unsupported(f"{name} is not a Bulk Data kick-off parameter.", name)
    for name in ("_outputFormat", "_since"):
        if len(by_name.get(name, [])) > 1:
            raise OutcomeError(bad_request(f"{name} may be given once.", name))
    output_format = (by_name.get("_outputFormat") or [NDJSON])[0].strip()
    if output_format not in OUTPUT_FORMATS:
        raise OutcomeError(
            outcome(
                400,
                "not-supported",
                "Only application/fhir+ndjson is produced.",
                expression="_outputFormat",
            )
        )
    since = _instant(by_name["_since"][0], "_since") if "_since" in by_name else None

    requested = _split(by_name.get("_type", []))
    types: list[str] = []
    for name in requested:
        if name not in EXPORT_TYPES:
            unsupported(
                f"_type {name[:MAX_NAME]} is not held by this server (only Patient, Encounter).",
                "_type",
            )
        elif not readable(name):
            raise OutcomeError(forbidden(f"Exporting {name} needs scope system/{name}.rs."))
        elif name not in types:
            types.append(name)
    if not requested:
        types = [t for t in EXPORT_TYPES if readable(t)]
        if not types:
            raise OutcomeError(
                forbidden("An export needs scope system/Patient.rs or system/Encounter.rs.")
            )
    elif not types:
        raise OutcomeError(bad_request("_type names no type this server holds.", "_type"))
    types.sort(key=EXPORT_TYPES.index)

    elements = _split(by_name.get("_elements", []))
    for entry in elements:
        if not _ELEMENT.match(entry):
            raise OutcomeError(
                bad_request("_elements takes root elements: name or Type.name.", "_elements")
            )

    type_filters: list[tuple[str, str]] = []
    for entry in _split(by_name.get("_typeFilter", [])):
        resource_type, mark, query = entry.partition("?")
        if not mark or not query:
            raise OutcomeError(bad_request("_typeFilter takes Type?search-query.", "_typeFilter"))
        if resource_type not in EXPORT_TYPES:
            unsupported(
                f"_typeFilter on {resource_type[:MAX_NAME]} (not held here).", "_typeFilter"
            )
        elif resource_type in types:
            type_filters.append((resource_type, query))
    if len(type_filters) > MAX_TYPE_FILTERS:
        raise OutcomeError(
            bad_request(f"At most {MAX_TYPE_FILTERS} _typeFilter queries.", "_typeFilter")
        )

    patients: list[str] = []
    if "patient" in by_name:
        if level != PATIENT:
            unsupported("patient applies to Patient/$export only.", "patient")
        elif not post:
            unsupported("patient may only be sent in a POST kick-off.", "patient")
        else:
            for reference in by_name["patient"]:
                match = _PATIENT_REF.match(reference.strip())
                if match is None:
                    raise OutcomeError(
                        bad_request("patient must reference Patient/<id>.", "patient")
                    )
                if match.group("id") not in patients:
                    patients.append(match.group("id"))
            if len(patients) > MAX_PATIENTS:
                raise OutcomeError(
                    bad_request(f"At most {MAX_PATIENTS} patients in one kick-off.", "patient")
                )
    return ExportRequest(
        level=level,
        types=tuple(types),
        since=since,
        elements=tuple(elements),
        patients=tuple(patients),
        ignored=tuple(ignored),
        type_filters=tuple(type_filters),
    )


def type_filter(
    session: Session, export: ExportRequest, resource_type: str
) -> ColumnElement[bool] | None:
    """What ``_typeFilter`` lets through of a type (its queries ORed), or None for all.
    Each query is the type's own search (strict): 400 on an unknown or invalid one."""
    queries = export.filters_for(resource_type)
    if not queries:
        return None
    if resource_type == "Patient":
        return or_(*(patient_filter(items) for items in queries))
    return or_(*(encounter_filter(session, items) for items in queries))


def create_job(
    session: Session,
    client_id: str,
    request_url: str,
    export: ExportRequest,
    *,
    now: datetime,
    max_active: int,
) -> str:
    """Store a new job (committed by the caller); 429 past ``max_active`` in progress."""
    active = session.scalar(
        select(func.count())
        .select_from(ExportJob)
        .where(ExportJob.client_id == client_id, ExportJob.status.in_(IN_PROGRESS))
    )
    if (active or 0) >= max_active:
        raise OutcomeError(
            throttled(
                f"This client has {max_active} exports in progress; wait for one or delete it.",
                RETRY_AFTER_S * 5,
            )
        )
    job = ExportJob(
        id=str(uuid.uuid4()),
        client_id=client_id,
        status=ACCEPTED,
        request_url=request_url,
        params=export.as_params(),
        # Not the kick-off's clock: a change stamped before it may not be committed yet,
        # and the next export, _since this time, would never see it.
        transaction_time=settled_time(session),
        position={"step": 0, "after": None},
        owner=None,
        # Not handed out again by a status poll before a worker had its chance.
        lease_until=now + timedelta(seconds=LEASE_S),
        created_at=now,
    )
    session.add(job)
    return job.id


# --- status, files, cancellation ------------------------------------------------------


def owned_job(session: Session, job_id: str, client_id: str) -> ExportJob:
    """The client's job, or 404 (another client's job is not told apart from none)."""
    job = session.get(ExportJob, job_id) if len(job_id) <= 36 else None
    if job is None or job.client_id != client_id:
        raise OutcomeError(not_found("No such export (it may have been deleted or expired)."))
    return job


def status_url(base: str, job_id: str) -> str:
    return f"{base}/fhir/bulk-export/{job_id}"


def file_url(base: str, job_id: str, file_id: int) -> str:
    return f"{status_url(base, job_id)}/{file_id}.ndjson"


@dataclass
class Status:
    """What a status request answers: 202 with progress, or 200 with the manifest."""

    done: bool
    manifest: dict[str, Any] = field(default_factory=dict)
    progress: str = ""
    expires: datetime | None = None
    #: The job's lease ran out before it finished: hand it to a worker again.
    redispatch: bool = False


def job_status(session: Session, job: ExportJob, *, base: str, now: datetime) -> Status:
    """The job's status; raises 500 for a failed job and 404 for an expired one."""
    if job.status == FAILED:
        raise OutcomeError(outcome(500, "exception", job.error or "The export failed."))
    files = session.execute(
        select(ExportFile.id, ExportFile.kind, ExportFile.resource_type, ExportFile.count)
        .where(ExportFile.job_id == job.id)
        .order_by(ExportFile.id)
    ).all()
    if job.status in IN_PROGRESS:
        written = sum(count for _id, kind, _type, count in files if kind == OUTPUT)
        step = _plan(ExportRequest.from_params(job.params))
        index = int(job.position.get("step", 0))
        doing = f"{step[index][0]} {step[index][1]}" if index < len(step) else "finishing"
        lease = as_utc(job.lease_until)
        return Status(
            done=False,
            progress=f"{written} resources written; now: {doing}",
            redispatch=lease is None or lease < now,
        )
    expires = as_utc(job.expires_at)
    if expires is not None and expires < now:
        raise OutcomeError(not_found("This export has expired; kick off a new one."))
    lists: dict[str, list[dict[str, Any]]] = {OUTPUT: [], DELETED_KIND: [], ERROR: []}
    for file_id, kind, resource_type, count in files:
        lists[kind].append(
            {"type": resource_type, "url": file_url(base, job.id, file_id), "count": count}
        )
    manifest = {
        "transactionTime": fhir_instant(job.transaction_time),
        "request": job.request_url,
        "requiresAccessToken": True,
        "output": lists[OUTPUT],
        "deleted": lists[DELETED_KIND],
        "error": lists[ERROR],
    }
    return Status(done=True, manifest=manifest, expires=expires)


def redispatch(session: Session, job_id: str, now: datetime) -> bool:
    """Free a job whose lease ran out, for a new worker (True when this call freed it)."""
    freed = session.execute(
        update(ExportJob)
        .where(
            ExportJob.id == job_id,
            ExportJob.status.in_(IN_PROGRESS),
            ExportJob.lease_until < now,
        )
        .values(owner=None, lease_until=now + timedelta(seconds=LEASE_S))
    )
    return bool(getattr(freed, "rowcount", 0))


def read_file(session: Session, job: ExportJob, file_id: str, now: datetime) -> ExportFile:
    """A completed job's file, or 404."""
    expires = as_utc(job.expires_at)
    if job.status != COMPLETED or (expires is not None and expires < now):
        raise OutcomeError(not_found("This export is not complete, or has expired."))
    row = session.get(ExportFile, int(file_id)) if file_id.isdigit() and len(file_id) < 19 else None
    if row is None or row.job_id != job.id:
        raise OutcomeError(not_found("No such file in this export."))
    return row


# --- writing the files ----------------------------------------------------------------


def _plan(export: ExportRequest) -> list[tuple[str, str]]:
    """The job's steps, in order: (kind, resource type)."""
    steps = [(OUTPUT, t) for t in export.types]
    if export.since is not None:
        steps += [(DELETED_KIND, t) for t in export.types]
    steps.append((ERROR, "OperationOutcome"))
    return steps


def _line(resource: dict[str, Any]) -> str:
    return json.dumps(resource, separators=(",", ":"), ensure_ascii=False)


@dataclass
class _Chunk:
    lines: list[str]
    after: Any
    finished: bool


_Query = TypeVar("_Query", bound=Select)


def _narrowed(
    query: _Query,
    session: Session,
    export: ExportRequest,
    resource_type: str,
    after: Any,
    *,
    key: Any,
    updated: Any,
    golden: Any,
) -> _Query:
    """``query`` past the keyset position ``after`` and within what the export asked for:
    changed since ``_since``, of the ``patient`` list, let through by ``_typeFilter``."""
    if after is not None:
        query = query.where(key > after)
    if export.since is not None:
        query = query.where(updated > export.since)
    if export.patients:
        query = query.where(golden.in_(export.patients))
    wanted = type_filter(session, export, resource_type)
    return query if wanted is None else query.where(wanted)


def _patients(
    session: Session, export: ExportRequest, txn: datetime, after: Any, limit: int
) -> _Chunk:
    """Golden records as they were at ``txn`` (active and merged; merged ones carry their
    ``replaced-by`` link, as a read does)."""
    query = (
        select(
            GoldenPatient.id,
            GoldenPatient.status,
            GoldenPatient.last_updated,
            cast(GoldenPatient.resource, Text),
        )
        .where(GoldenPatient.status.in_((ACTIVE, MERGED)) | (GoldenPatient.last_updated > txn))
        .order_by(GoldenPatient.id)
        .limit(limit)
    )
    query = _narrowed(
        query,
        session,
        export,
        "Patient",
        after,
        key=GoldenPatient.id,
        updated=GoldenPatient.last_updated,
        golden=GoldenPatient.id,
    )
    rows = session.execute(query).all()
    late = [row[0] for row in rows if (as_utc(row[2]) or txn) > txn]
    as_of = _versions_at(session, late, txn)
    elements = export.elements_for("Patient")
    lines: list[str] = []
    for golden_id, status, updated, text in rows:
        resource: dict[str, Any] | None = None
        if (as_utc(updated) or txn) > txn:
            version = as_of.get(golden_id)
            if version is None:
                continue  # created after the transaction time
            status, recorded, resource = version
            if status == DELETED or (export.since is not None and recorded <= export.since):
                continue
        if status == MERGED:
            resource = resource if resource is not None else json.loads(text)
            survivor = survivor_of(session, golden_id)
            if survivor is not None:
                resource = with_replaced_by(resource, survivor)
        if resource is None and not elements and "\n" not in text:
            lines.append(text)
            continue
        resource = resource if resource is not None else json.loads(text)
        lines.append(_line(shape(resource, elements)))
    return _Chunk(lines, rows[-1][0] if rows else after, len(rows) < limit)


def _versions_at(
    session: Session, golden_ids: Sequence[str], txn: datetime
) -> dict[str, tuple[str, datetime, dict[str, Any]]]:
    """Each record's latest version recorded at or before ``txn``: status, time, resource."""
    if not golden_ids:
        return {}
    latest = (
        select(GoldenPatientVersion.golden_id, func.max(GoldenPatientVersion.version).label("v"))
        .where(
            GoldenPatientVersion.golden_id.in_(list(golden_ids)),
            GoldenPatientVersion.recorded_at <= txn,
        )
        .group_by(GoldenPatientVersion.golden_id)
        .subquery()
    )
    rows = session.execute(
        select(
            GoldenPatientVersion.golden_id,
            GoldenPatientVersion.status,
            GoldenPatientVersion.recorded_at,
            GoldenPatientVersion.resource,
        ).join(
            latest,
            (latest.c.golden_id == GoldenPatientVersion.golden_id)
            & (latest.c.v == GoldenPatientVersion.version),
        )
    ).all()
    return {row[0]: (row[1], as_utc(row[2]) or txn, dict(row[3])) for row in rows}


def _encounters(session: Session, export: ExportRequest, after: Any, limit: int) -> _Chunk:
    query = (
        select(*RENDER_COLUMNS)
        .where(Encounter.golden_id.is_not(None))
        .order_by(Encounter.id)
        .limit(limit)
    )
    query = _narrowed(
        query,
        session,
        export,
        "Encounter",
        None if after is None else int(after),
        key=Encounter.id,
        updated=Encounter.last_updated,
        golden=Encounter.golden_id,
    )
    rows = session.execute(query).all()
    elements = export.elements_for("Encounter")
    lines = [_line(shape(render_encounter(row), elements)) for row in rows]
    return _Chunk(lines, rows[-1].id if rows else after, len(rows) < limit)


def _deletion(resource_type: str, resource_id: str, at: datetime) -> str:
    """One line of a ``deleted`` file: a transaction Bundle with one DELETE entry."""
    return _line(
        {
            "resourceType": "Bundle",
            "type": "transaction",
            "meta": {"lastUpdated": fhir_instant(at)},
            "entry": [{"request": {"method": "DELETE", "url": f"{resource_type}/{resource_id}"}}],
        }
    )


def _deleted_patients(
    session: Session, export: ExportRequest, txn: datetime, after: Any, limit: int
) -> _Chunk:
    assert export.since is not None
    query = (
        select(GoldenPatient.id, GoldenPatient.last_updated)
        .where(
            GoldenPatient.status == DELETED,
            GoldenPatient.last_updated > export.since,
            GoldenPatient.last_updated <= txn,
        )
        .order_by(GoldenPatient.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(GoldenPatient.id > after)
    if export.patients:
        query = query.where(GoldenPatient.id.in_(export.patients))
    rows = session.execute(query).all()
    lines = [_deletion("Patient", row[0], as_utc(row[1]) or txn) for row in rows]
    return _Chunk(lines, rows[-1][0] if rows else after, len(rows) < limit)


def _deleted_encounters(
    session: Session, export: ExportRequest, txn: datetime, after: Any, limit: int
) -> _Chunk:
    assert export.since is not None
    query = (
        select(Outbox.id, Outbox.aggregate_id, Outbox.created_at, Outbox.payload)
        .where(
            Outbox.event_type == "encounter.deleted",
            Outbox.created_at > export.since,
            Outbox.created_at <= txn,
        )
        .order_by(Outbox.id)
        .limit(limit)
    )
    if after is not None:
        query = query.where(Outbox.id > int(after))
    rows = session.execute(query).all()
    wanted = set(export.patients)
    lines = [
        _deletion("Encounter", row[1], as_utc(row[2]) or txn)
        for row in rows
        if not wanted or (row[3] or {}).get("golden_id") in wanted
    ]
    return _Chunk(lines, rows[-1][0] if rows else after, len(rows) < limit)


def _notes(export: ExportRequest, txn: datetime, settings: ExportSettings) -> list[str]:
    """The error file: what a lenient kick-off ignored, and what may be incomplete."""
    issues = [issue("not-supported", text, severity="warning") for text in export.ignored]
    days = settings.outbox_retention_days
    if (
        export.since is not None
        and "Encounter" in export.types
        and days > 0
        and export.since < txn - timedelta(days=days)
    ):
        issues.append(
            issue(
                "incomplete",
                f"Encounter deletions are kept {days} days: deleted may miss Encounters "
                "deleted before then.",
                severity="warning",
                expression="_since",
            )
        )
    return [_line(operation_outcome([entry])) for entry in issues]


def next_file(
    session: Session, job: ExportJob, settings: ExportSettings
) -> tuple[tuple[str, str, list[str]] | None, dict[str, Any]]:
    """The job's next file (kind, type, lines), or None when a step ended with nothing
    more to write, and the position after it. The position's step past the plan's end
    means the job is done."""
    export = ExportRequest.from_params(job.params)
    steps = _plan(export)
    step = int(job.position.get("step", 0))
    after = job.position.get("after")
    kind, resource_type = steps[step]
    txn = as_utc(job.transaction_time) or job.transaction_time
    limit = settings.file_resources
    if kind == ERROR:
        lines = _notes(export, txn, settings)
        chunk = _Chunk(lines, None, True)
    elif kind == OUTPUT and resource_type == "Patient":
        chunk = _patients(session, export, txn, after, limit)
    elif kind == OUTPUT:
        chunk = _encounters(session, export, after, limit)
    elif resource_type == "Patient":
        chunk = _deleted_patients(session, export, txn, after, limit)
    else:
        chunk = _deleted_encounters(session, export, txn, after, limit)
    position = (
        {"step": step + 1, "after": None}
        if chunk.finished
        else {"step": step, "after": chunk.after}
    )
    written = (kind, resource_type, chunk.lines) if chunk.lines else None
    return written, position


@dataclass
class ExportReport:
    job_id: str
    claimed: bool = False
    files: int = 0
    resources: int = 0
    status: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "claimed": self.claimed,
            "files": self.files,
            "resources": self.resources,
            "status": self.status,
        }


def _finish(
    session: Session,
    job_id: str,
    owner: str,
    now: datetime,
    settings: ExportSettings,
    status: str,
    error: str | None = None,
) -> None:
    """End the job ``owner`` holds: completed or failed, kept ``retention_hours``."""
    session.execute(
        update(ExportJob)
        .where(ExportJob.id == job_id, ExportJob.owner == owner)
        .values(
            status=status,
            owner=None,
            lease_until=None,
            error=error,
            finished_at=now,
            expires_at=now + timedelta(hours=settings.retention_hours),
        )
    )
    session.commit()


def run_export(
    session_factory: sessionmaker[Session],
    job_id: str,
    settings: ExportSettings | None = None,
    *,
    clock: Callable[[], datetime] = utcnow,
) -> ExportReport:
    """Write a job's files to the end, one transaction per file. Returns without doing
    anything when another worker holds the job, and stops when the job is deleted (or
    taken over by another worker after this one's lease ran out)."""
    settings = settings or ExportSettings()
    report = ExportReport(job_id)
    owner = str(uuid.uuid4())
    with session_factory() as session:
        now = clock()
        claimed = session.execute(
            update(ExportJob)
            .where(
                ExportJob.id == job_id,
                ExportJob.status.in_(IN_PROGRESS),
                ExportJob.owner.is_(None) | (ExportJob.lease_until < now),
            )
            .values(owner=owner, status=RUNNING, lease_until=now + timedelta(seconds=LEASE_S))
        )
        session.commit()
        if not getattr(claimed, "rowcount", 0):
            return report
    report.claimed = True
    try:
        while True:
            with session_factory() as session:
                job = session.get(ExportJob, job_id)
                if job is None or job.owner != owner:
                    report.status = "lost"
                    return report
                if int(job.position.get("step", 0)) >= len(
                    _plan(ExportRequest.from_params(job.params))
                ):
                    _finish(session, job_id, owner, clock(), settings, COMPLETED)
                    report.status = COMPLETED
                    log.info(
                        "export completed",
                        extra={"job": job_id, "files": report.files, "resources": report.resources},
                    )
                    return report
                written, position = next_file(session, job, settings)
                now = clock()
                moved = session.execute(
                    update(ExportJob)
                    .where(ExportJob.id == job_id, ExportJob.owner == owner)
                    .values(position=position, lease_until=now + timedelta(seconds=LEASE_S))
                )
                if not getattr(moved, "rowcount", 0):
                    session.rollback()
                    report.status = "lost"
                    return report
                if written is not None:
                    kind, resource_type, lines = written
                    session.add(
                        ExportFile(
                            job_id=job_id,
                            kind=kind,
                            resource_type=resource_type,
                            count=len(lines),
                            content_gzip=gzip.compress(
                                ("\n".join(lines) + "\n").encode(), compresslevel=1, mtime=0
                            ),
                        )
                    )
                    report.files += 1
                    report.resources += len(lines) if kind == OUTPUT else 0
                session.commit()
    except Exception as exc:
        # The type only: a database error's text can carry bound values.
        log.error("export failed", extra={"job": job_id, "error": type(exc).__name__})
        with session_factory() as session:
            error = f"The export failed ({type(exc).__name__}); kick off a new one."
            _finish(session, job_id, owner, clock(), settings, FAILED, error)
        report.status = FAILED
        return report
