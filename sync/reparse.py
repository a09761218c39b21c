"""Read a source's stored Patients again when what reads them changed.

A sync skips a resource whose content did not change (its content hash), so what is
stored of it, the ``normalized`` record and the match features, stays what the reading
of its time made of it. Two things change that reading without the EHR touching the
record: an upgrade whose :data:`fhir_mapping.MAPPING_VERSION` (what ``parse_patient``
keeps) or :data:`mpi.features.FEATURES_VERSION` (what the MPI compares) is newer, and
a new ``mrn_system`` or ``default_region`` of the source (or the process's default
region). Each source keeps the stamp of the reading its records were last read with
(``source.parsed_with``, migration 0017); where it is not the current one,
:func:`reparse_source` reads the source's active Patients again from their stored
resources, in transactions of :data:`REPARSE_BATCH` under the source's writer lock
(:func:`sync.runner.lock_source`), and keeps its place (``through``: the last record
id done), so that an interrupted pass goes on where it stopped. Of each record:

- read the same as before: nothing is written;
- read differently, with the same match features (a new element kept: marital status,
  an identifier's type): its ``normalized`` record is rewritten, and its golden record
  rendered again (:func:`mpi.recompute_goldens`: a new version and a
  ``patient.updated`` event only where the served record changed);
- read with other match features (an MRN now recognized as such, a phone number read in
  another region): the record goes through the pipeline as a new version of itself
  would (:func:`sync.pipeline.ingest_page`), so the MPI checks its link again;
- no longer valid (the newer validation refuses what the older took): it is left as it
  was, linked and served, and counted (``failed``), never quarantined by an upgrade
  alone; a new version from its EHR is judged like any other.

Records written by a sync while a pass is under way are read by the current reading
already. Who runs it: the scheduler's tick (:func:`sync.scheduling.dispatch_due`), a
bounded slice of work per tick, on a worker or embedded; ``askonce sources reparse``
in the foreground; ``askonce sources update`` after a change of a parse option.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import orjson
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from connectors import Page
from fhir_mapping import MAPPING_VERSION, parse_patient
from mpi import recompute_goldens
from mpi.features import (
    FEATURES_VERSION,
    decode_features,
    encode_features,
    extract_features,
    features_from_normalized,
)
from store.bulk import chunks
from store.jsontext import json_text
from store.models import Link, SourceRecord
from store.models import Source as SourceRow
from sync.patients import PatientOptions
from sync.pipeline import ingest_page
from sync.records import LOOKUP_CHUNK, STATUS_ACTIVE
from sync.runner import bound_patient_options, lock_source

log = logging.getLogger(__name__)

#: The source options that change what is read of a Patient.
PARSE_OPTIONS = ("default_region", "mrn_system")
#: Patients read again per transaction.
REPARSE_BATCH = 500
#: Seconds of reading again per scheduler tick (a task on a worker, or the embedded
#: scheduler's turn), so that a large source holds a worker, or the embedded syncs, for
#: no longer: the next tick goes on from where it stopped.
REPARSE_SLICE_S = 20.0


def parse_stamp(options: PatientOptions) -> dict[str, Any]:
    """What a Patient of a source with ``options`` is read with: the mapping's and the
    match features' versions and the source's parse options."""
    return {
        "mapping": MAPPING_VERSION,
        "features": FEATURES_VERSION,
        "default_region": options.default_region,
        "mrn_system": options.mrn_system,
    }


def parsed_with(options: PatientOptions) -> dict[str, Any]:
    """``source.parsed_with`` of a source whose Patients are all read with ``options``
    (a new source: it has none yet)."""
    return {"stamp": parse_stamp(options), "through": None}


def is_stale(source: SourceRow, default_region: str | None = None) -> bool:
    """True when some of the source's stored Patients may have been read otherwise than
    the running code reads them with the source's options over this process's defaults
    (:func:`sync.runner.bound_patient_options`), or a pass over them is under way."""
    mark = source.parsed_with or {}
    stamp = parse_stamp(bound_patient_options(source, default_region))
    return mark.get("stamp") != stamp or mark.get("through") is not None


def stale_sources(session: Session, default_region: str | None = None) -> list[int]:
    """Ids of the sources whose stored Patients are to be read again (not those being
    removed: their records are going)."""
    rows = session.scalars(
        select(SourceRow).where(SourceRow.removing_since.is_(None)).order_by(SourceRow.id)
    )
    return [s.id for s in rows if is_stale(s, default_region)]


@dataclass
class ReparseResult:
    """What :func:`reparse_source` did to one source's stored Patients."""

    source_id: int
    #: Records read again.
    examined: int = 0
    #: Read as before: nothing written.
    unchanged: int = 0
    #: Read differently with the same match features: ``normalized`` rewritten.
    refreshed: int = 0
    #: Read with other match features: through the pipeline and the MPI again.
    rematched: int = 0
    #: No longer valid: left as they were (their ids in ``failed_ids``, never logged).
    failed: int = 0
    #: Golden records of refreshed records that got a new version (their served record
    #: changed).
    goldens_updated: int = 0
    #: Golden records the rematched records created, and the review items they raised.
    golden_created: int = 0
    review_items: int = 0
    #: Every record is read by the current reading (False: stopped at its deadline).
    done: bool = False
    failed_ids: list[int] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def reparse_source(
    session_factory: Callable[[], Session],
    source_id: int,
    *,
    default_region: str | None = None,
    batch: int = REPARSE_BATCH,
    max_seconds: float | None = None,
    stop: Callable[[], bool] | None = None,
    on_batch: Callable[[ReparseResult], None] | None = None,
) -> ReparseResult:
    """Read the source's stored Patients again where its stamp is not current (see the
    module), a transaction of ``batch`` records at a time, each committed as it ends.
    Stops between two transactions once ``max_seconds`` have passed or ``stop()`` says
    so (``done`` False: the next call goes on from there). An unknown source, or one
    being removed, has nothing to read: ``done``."""
    result = ReparseResult(source_id)
    deadline = None if max_seconds is None else time.monotonic() + max_seconds
    while True:
        with session_factory() as session:
            lock_source(session, source_id)
            source = session.get(SourceRow, source_id)
            if source is None or source.removing_since is not None:
                result.done = True
                return result
            options = bound_patient_options(source, default_region)
            stamp = parse_stamp(options)
            mark = source.parsed_with or {}
            if mark.get("stamp") == stamp and mark.get("through") is None:
                result.done = True
                break
            # Another stamp than the one of the pass under way: start again from the first.
            through = int(mark.get("through") or 0) if mark.get("stamp") == stamp else 0
            records = session.execute(
                select(
                    SourceRecord.id,
                    SourceRecord.raw,
                    SourceRecord.normalized,
                    SourceRecord.content_hash,
                    SourceRecord.match_features,
                )
                .where(
                    SourceRecord.source_id == source_id,
                    SourceRecord.resource_type == "Patient",
                    SourceRecord.status == STATUS_ACTIVE,
                    SourceRecord.id > through,
                )
                .order_by(SourceRecord.id)
                .limit(max(1, batch))
            ).all()
            # Fewer than asked: the last ones (a record written since is read as now).
            last = len(records) < max(1, batch)
            # Marked first: the writers below see it, and forget the records they cached
            # as the older reading made them (mpi.storage.forget_reread_records).
            _mark(session, source_id, stamp, None if last else records[-1].id)
            if records:
                _reparse(session, source_id, records, options, result)
            session.commit()
        if on_batch is not None:
            on_batch(result)
        if last:
            result.done = True
            break
        if (deadline is not None and time.monotonic() >= deadline) or (stop and stop()):
            break
    if result.examined:
        log.info(
            "stored patients read again",
            extra={
                "source_id": source_id,
                "count": result.examined,
                "changed": result.refreshed + result.rematched,
                "failures": result.failed,
                "complete": result.done,
            },
        )
    return result


def _mark(session: Session, source_id: int, stamp: dict[str, Any], through: int | None) -> None:
    # The settings' own timestamp stays: this is not a change of the source's settings.
    session.execute(
        update(SourceRow)
        .where(SourceRow.id == source_id)
        .values(parsed_with={"stamp": stamp, "through": through}, updated_at=SourceRow.updated_at)
    )


def _reparse(
    session: Session,
    source_id: int,
    records: Sequence[Any],
    options: PatientOptions,
    result: ReparseResult,
) -> None:
    refreshed: list[dict[str, Any]] = []
    rematch: list[tuple[int, dict[str, Any]]] = []
    for record_id, raw, normalized, content_hash, stored_features in records:
        result.examined += 1
        try:
            patient = parse_patient(
                raw, default_region=options.default_region, mrn_system=options.mrn_system
            )
        except Exception:  # refused now (InvalidResource), or a mapping defect: left as is
            result.failed += 1
            result.failed_ids.append(record_id)
            continue
        text = json_text(patient.to_compact_dict())
        features = extract_features(patient)
        encoded = encode_features(features, content_hash)
        if encoded == stored_features and orjson.loads(text) == normalized:
            result.unchanged += 1
            continue
        before = decode_features(stored_features, content_hash) or features_from_normalized(
            normalized or {}
        )
        if before == features:
            refreshed.append(
                {"id": record_id, "normalized": orjson.loads(text), "match_features": encoded}
            )
        else:
            rematch.append((record_id, raw))
    if refreshed:
        result.goldens_updated += _refresh(session, refreshed, options)
        result.refreshed += len(refreshed)
    if rematch:
        # Not skipped as unchanged: the content is the same, what is read of it is not.
        session.execute(
            update(SourceRecord)
            .where(SourceRecord.id.in_([record_id for record_id, _ in rematch]))
            .values(content_hash="")
        )
        ingested = ingest_page(
            session,
            source_id,
            Page("Patient", [dict(raw) for _, raw in rematch], None),
            options=options,
            write_cursor=False,
        )
        result.rematched += len(rematch)
        result.golden_created += ingested.golden_created
        result.review_items += ingested.review_items


def _refresh(session: Session, rows: Sequence[dict[str, Any]], options: PatientOptions) -> int:
    """Rewrite the records' normalized form and features, then render their golden
    records again (a new version only where the served record changed); returns how
    many got one."""
    for chunk in chunks(list(rows), LOOKUP_CHUNK):
        session.execute(update(SourceRecord), chunk)  # by primary key
    golden_ids: set[str] = set()
    for ids in chunks([row["id"] for row in rows], LOOKUP_CHUNK):
        golden_ids.update(
            session.scalars(select(Link.golden_id).where(Link.source_record_id.in_(ids)))
        )
    versions = recompute_goldens(
        session, golden_ids, settings=options.match_settings, skip_unchanged=True
    )
    return len(versions)
