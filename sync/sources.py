"""A source's settings after it was added: validation, changes, pausing.

:func:`checked_settings` is the one validation of what a source is registered with (the
CLI's ``sources add`` and :func:`update_source` both go through it). :func:`update_source`
changes a registered source under its writer lock (:func:`sync.runner.lock_source`), so
a sync page in flight finishes first, and says what the change means for what is
stored:

- a new **URL** points the source somewhere else: its cursors are cleared (the next
  sync reads every type from the start; what is unchanged is skipped by its content
  hash) and a running run is stopped, so that no cursor of the old place is followed
  at the new one;
- **disabling** a source stops its running run; schedules, push intake and the MLLP
  listener already refuse a disabled source, and ``askonce sync`` refuses to start one;
- a new **trust rank** or ``patient_confirmed`` flag changes survivorship: the golden
  records the source feeds are rendered again by :func:`refresh_goldens` (a new version
  and a ``patient.updated`` event only where the rendered record changed).

Auth, schedule, resource types and the other options take effect at the next chunk of
a run, which reads the source row again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from connectors import (
    PUSH_ONLY_KINDS,
    SOURCE_KINDS,
    PermanentError,
    Source,
    SourceConfig,
    SourceOptions,
    build_source,
)
from connectors.config import HL7V2_KIND, PORTAL_KIND, push_arrival
from connectors.preflight import Preflight, preflight
from mpi import MatchSettings, recompute_goldens
from mpi.storage import PATIENT_CONFIRMED_FLAG
from store import CursorRepository, SourceRepository
from store.models import Link, SourceRecord
from store.models import Source as SourceRow
from sync.forms import portal_options
from sync.hl7intake import (
    Hl7v2ConfigError,
    check_listener,
    listen_address,
    mapping_options,
    tls_context,
)
from sync.intake import hash_intake_token
from sync.records import STATUS_DELETED
from sync.runner import (
    INTAKE_TOKEN_KEY,
    PIPELINE_CONFIG_KEYS,
    RUN_FAILED,
    finish_run,
    lock_source,
    running_run,
    source_config,
)
from sync.scheduling import parse_schedule

log = logging.getLogger(__name__)

#: ``--option intake_token=…`` switches push intake on; only its SHA-256 is stored.
INTAKE_TOKEN_OPTION = "intake_token"  # noqa: S105 - an option name, not a secret
#: Golden records rendered again per transaction by :func:`refresh_goldens`.
REFRESH_BATCH = 500


class SourceSettingsError(ValueError):
    """A source setting that cannot be stored (the message says which and why)."""


class SourceRemovingError(SourceSettingsError):
    """The source is being removed: nothing changes it until the removal is finished."""


@dataclass(frozen=True)
class SourceSettings:
    """What a source is registered with, validated (see :func:`checked_settings`)."""

    url: str
    auth: dict[str, Any]
    schedule: str | None
    resource_types: list[str]
    config: dict[str, Any]


def checked_settings(
    kind: str,
    url: str,
    *,
    auth: dict[str, Any] | None,
    schedule: str | None,
    resource_types: Iterable[str] | None,
    config: Mapping[str, Any] | None,
) -> SourceSettings:
    """Validate a source's settings; raise :class:`SourceSettingsError` naming the bad one.

    An ``intake_token`` option is replaced by its SHA-256 (the sender presents the token);
    an ``ndjson`` folder is stored as an absolute path."""
    if kind not in SOURCE_KINDS:
        raise SourceSettingsError(f"kind must be one of {', '.join(SOURCE_KINDS)}")
    if schedule and kind in PUSH_ONLY_KINDS:
        raise SourceSettingsError(f"a {kind} source is push-only: it takes no schedule")
    default_types = ["Patient"] if kind == PORTAL_KIND else ["Patient", "Encounter"]
    types = list(resource_types) if resource_types is not None else default_types
    if not types:
        raise SourceSettingsError("a source syncs at least one resource type")
    stored = dict(config or {})
    try:
        if schedule:
            parse_schedule(schedule)
        if kind == HL7V2_KIND:
            listen_address(url)
            mapping_options(stored)
            tls_context(stored)
        if kind == PORTAL_KIND:
            stored = portal_options(stored, types)
        if INTAKE_TOKEN_OPTION in stored:
            stored[INTAKE_TOKEN_KEY] = hash_intake_token(str(stored.pop(INTAKE_TOKEN_OPTION)))
        SourceOptions.from_dict({k: v for k, v in stored.items() if k not in PIPELINE_CONFIG_KEYS})
        if kind == "ndjson":
            url = str(Path(url).expanduser().resolve())
        settings = SourceSettings(url, dict(auth or {"kind": "none"}), schedule, types, stored)
        SourceConfig(
            kind=kind,  # type: ignore[arg-type]
            base_url=settings.url,
            auth=settings.auth,
            resource_types=settings.resource_types,
        )
    except (ValueError, TypeError, Hl7v2ConfigError) as exc:  # pydantic's errors are ValueErrors
        raise SourceSettingsError(str(exc)) from exc
    return settings


_KEEP: Any = object()


@dataclass
class SourceChange:
    """The changes asked of a source; a field left at its default is kept as it is."""

    name: str | None = None
    url: str | None = None
    auth: dict[str, Any] | None = None
    #: A schedule, None to remove it (push or on demand only); left out: kept.
    schedule: Any = _KEEP
    resource_types: list[str] | None = None
    #: Options to set (``intake_token`` is stored as its hash, as when added).
    options: dict[str, Any] = field(default_factory=dict)
    #: Options to remove (``intake_token`` switches push intake off).
    unset_options: tuple[str, ...] = ()
    trust_rank: int | None = None
    enabled: bool | None = None

    def keeps_schedule(self) -> bool:
        return self.schedule is _KEEP


@dataclass
class SourceUpdate:
    """What :func:`update_source` changed and what follows from it."""

    source_id: int
    changed: list[str] = field(default_factory=list)
    #: The cursors were cleared (a new URL): the next sync reads from the start.
    cursors_cleared: bool = False
    #: The id of the running run that was stopped (disabled, or a new URL).
    stopped_run: int | None = None
    #: Survivorship inputs changed: the source's golden records need :func:`refresh_goldens`.
    survivorship_changed: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def stop_running(session: Session, source_id: int, reason: str) -> int | None:
    """Fail the source's running run with ``reason`` (its chain of chunks then stops at
    its next claim); the caller holds the source's lock. Returns the run's id."""
    run = running_run(session, source_id)
    if run is None:
        return None
    finish_run(run, RUN_FAILED, reason=reason)
    return run.id


def update_source(session: Session, source_id: int, change: SourceChange) -> SourceUpdate:
    """Apply ``change`` to the source (no commit); raise :class:`SourceSettingsError` for a
    setting that cannot be stored (:class:`SourceRemovingError` for a source whose removal
    began), :class:`store.NotFoundError` for an unknown source."""
    lock_source(session, source_id)
    source = SourceRepository(session).get(source_id)
    if source.removing_since is not None:
        since = source.removing_since.isoformat(timespec="seconds")
        raise SourceRemovingError(
            f"source {source.name!r} is being removed (since {since}): "
            "run the removal again to finish it"
        )
    config = dict(source.config or {})
    for key in change.unset_options:
        stored_key = INTAKE_TOKEN_KEY if key == INTAKE_TOKEN_OPTION else key
        if stored_key not in config:
            raise SourceSettingsError(f"option {key!r} is not set on this source")
        del config[stored_key]
    config.update(change.options)
    settings = checked_settings(
        source.kind,
        change.url if change.url is not None else source.base_url,
        auth=change.auth if change.auth is not None else source.auth,
        schedule=source.schedule if change.keeps_schedule() else change.schedule,
        resource_types=(
            change.resource_types if change.resource_types is not None else source.resource_types
        ),
        config=config,
    )
    update = SourceUpdate(source_id)
    requested = {
        "name": change.name,
        "base_url": settings.url if change.url is not None else None,
        "auth": settings.auth if change.auth is not None else None,
        "schedule": settings.schedule,
        "resource_types": settings.resource_types if change.resource_types is not None else None,
        "config": settings.config if change.options or change.unset_options else None,
        "trust_rank": change.trust_rank,
        "enabled": change.enabled,
    }
    if change.keeps_schedule():
        del requested["schedule"]
    new_values = {k: v for k, v in requested.items() if v is not None or k == "schedule"}
    was_confirmed = bool((source.config or {}).get(PATIENT_CONFIRMED_FLAG))
    for column, value in new_values.items():
        if getattr(source, column) != value:
            setattr(source, column, value)
            update.changed.append(column)
    if not update.changed:
        return update
    if "base_url" in update.changed:
        CursorRepository(session).clear(source_id)
        update.cursors_cleared = True
        update.stopped_run = stop_running(session, source_id, "the source's URL changed")
    if "enabled" in update.changed and not source.enabled:
        update.stopped_run = stop_running(session, source_id, "the source was disabled")
    update.survivorship_changed = "trust_rank" in update.changed or was_confirmed != bool(
        settings.config.get(PATIENT_CONFIRMED_FLAG)
    )
    try:
        session.flush()
    except IntegrityError as exc:
        raise SourceSettingsError(f"a source named {change.name!r} already exists") from exc
    log.info("source updated", extra={"source_id": source_id, "fields": update.changed})
    return update


@dataclass
class RefreshResult:
    """What :func:`refresh_goldens` did: golden records looked at, and rewritten."""

    examined: int = 0
    rewritten: int = 0


def refresh_goldens(
    session_factory: sessionmaker[Session],
    source_id: int,
    *,
    settings: MatchSettings | None = None,
    batch: int = REFRESH_BATCH,
    on_batch: Callable[[RefreshResult], None] | None = None,
) -> RefreshResult:
    """Render again every golden record an active record of the source is linked to, in
    transactions of ``batch``, after the source's survivorship inputs changed. A record
    whose rendering is unchanged keeps its version (its field provenance is brought up
    to date); a changed one gets a new version and a ``patient.updated`` event."""
    settings = settings or MatchSettings()
    result = RefreshResult()
    after = ""
    while True:
        with session_factory() as session:
            golden_ids = list(
                session.scalars(
                    select(Link.golden_id)
                    .join(SourceRecord, SourceRecord.id == Link.source_record_id)
                    .where(
                        SourceRecord.source_id == source_id,
                        SourceRecord.resource_type == "Patient",
                        SourceRecord.status != STATUS_DELETED,
                        Link.golden_id > after,
                    )
                    .group_by(Link.golden_id)
                    .order_by(Link.golden_id)
                    .limit(batch)
                )
            )
            if not golden_ids:
                return result
            lock_source(session, source_id)
            written = recompute_goldens(session, golden_ids, settings=settings, skip_unchanged=True)
            session.commit()
        result.examined += len(golden_ids)
        result.rewritten += len(written)
        after = golden_ids[-1]
        log.info(
            "golden records refreshed",
            extra={"source_id": source_id, "count": result.examined},
        )
        if on_batch is not None:
            on_batch(result)


#: A preflight asks once: a server that does not answer is the finding, not a reason to wait.
PREFLIGHT_ATTEMPTS = 1


def check_source(
    source: SourceRow, *, source_factory: Callable[[SourceConfig], Source] = build_source
) -> Preflight:
    """The preflight of a registered source (:mod:`connectors.preflight`): its server (or
    folder), credentials, FHIR version and each resource type, as a sync would read them;
    writes nothing. A push-only source has nothing to pull: one finding says how its data
    arrives."""
    if source.kind in PUSH_ONLY_KINDS:
        report = Preflight(source.kind)
        report.add("ok", "server", f"nothing is pulled from it: {push_arrival(source.kind)}")
        if source.kind == HL7V2_KIND:
            check_listener(source.base_url, source.config, report)
        return report
    config = source_config(source)
    config = replace(config, options={**config.options, "max_attempts": PREFLIGHT_ATTEMPTS})
    try:
        connector = source_factory(config)
    except (ValueError, PermanentError) as exc:
        report = Preflight(source.kind)
        report.add("error", "server", f"the source's settings: {exc}")
        return report
    with connector:
        return preflight(connector)
