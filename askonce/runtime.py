"""The composition root: wires settings, database, task queue and gateway together."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial

import redis
from celery import Celery
from fastapi import FastAPI
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from askonce.settings import Settings, get_settings
from fhir_mapping import parse_patient
from gateway import GatewayState, create_app
from gateway.operations.export import ExportSettings, run_export
from gateway.operations.notify import render_focus
from mpi import MatchSettings, match_patient
from store import check_schema_at_head, make_engine, make_session_factory, unit_of_work
from store.errors import error_chain
from sync import TaskContext, bind_task_context, create_celery, current_task_context
from sync.delivery import DEFAULT_DELIVER_S, DeliveryReport, deliver_with
from sync.pipeline import UnknownSourceError
from sync.reparse import REPARSE_SLICE_S, reparse_source
from sync.retention import PruneReport, prune_with
from sync.retire import remove_source
from sync.runner import run_chunked
from sync.scheduling import dispatch_due

log = logging.getLogger(__name__)

#: How long the readiness probe waits for Redis.
BROKER_CHECK_TIMEOUT_S = 2.0
#: How long a stopping server waits for the embedded scheduler's chunk in flight.
SCHEDULER_STOP_WAIT_S = 60.0


@contextmanager
def _ticking(
    name: str,
    interval_s: float,
    tick: Callable[[threading.Event], None],
    *,
    stop_wait_s: float,
) -> Iterator[threading.Event]:
    """A daemon thread named ``name`` that calls ``tick(stop)`` every ``interval_s`` while
    the block runs (what beat does in services mode); the block's end sets ``stop`` and
    waits up to ``stop_wait_s`` for the tick in flight."""
    stop = threading.Event()

    def loop() -> None:
        while not stop.wait(interval_s):
            tick(stop)

    thread = threading.Thread(target=loop, name=name, daemon=True)
    thread.start()
    try:
        yield stop
    finally:
        stop.set()
        thread.join(timeout=stop_wait_s)


@dataclass
class Runtime:
    settings: Settings
    engine: Engine
    session_factory: sessionmaker[Session]
    celery: Celery

    @contextmanager
    def unit_of_work(self) -> Iterator[Session]:
        with unit_of_work(self.session_factory) as session:
            yield session

    def deliver(self, max_seconds: float | None = None) -> DeliveryReport:
        """Hand the outbox's new events to Subscriptions and webhooks and send what is due
        (what beat's tick does on a worker)."""
        return deliver_with(
            current_task_context(),
            max_seconds=DEFAULT_DELIVER_S if max_seconds is None else max_seconds,
        )

    def prune(self) -> PruneReport:
        """Delete what is past its retention (what beat's hourly tick does on a worker)."""
        return prune_with(current_task_context())

    @contextmanager
    def delivery_loop(self) -> Iterator[threading.Event]:
        """Embedded mode has no beat: a daemon thread delivers every
        ``delivery_interval_s``, and prunes every ``prune_interval_s``, while the block
        runs. Set the yielded event to stop it."""
        last_prune: float | None = None

        def tick(_stop: threading.Event) -> None:
            nonlocal last_prune
            try:
                self.deliver()
            except Exception as exc:  # one failed pass must not end delivery for good
                # The type only: a database error's text can carry bound values.
                log.warning("delivery pass failed", extra={"error": type(exc).__name__})
            if last_prune is not None and (
                time.monotonic() - last_prune < self.settings.prune_interval_s
            ):
                return
            last_prune = time.monotonic()
            try:
                self.prune()
            except Exception as exc:
                log.warning("prune failed", extra={"error": type(exc).__name__})

        with _ticking(
            "askonce-delivery",
            self.settings.delivery_interval_s,
            tick,
            stop_wait_s=self.settings.delivery_interval_s + 30,
        ) as stop:
            yield stop

    def run_due(self, stop: threading.Event | None = None) -> list[int]:
        """Sync every source whose schedule is due, one after another in this process (what
        beat's tick and the workers do in services mode); returns the ids of those started.

        A run goes chunk by chunk, so ``stop`` ends it between two chunks (it resumes at
        the next tick, from its cursor). A source that fails is logged by type, and left to
        its next tick (a transient failure) or to a fix (a permanent one fails the run).
        A source removal that stopped half-way is finished here too, and a slice of the
        stored Patients that are to be read again is read (:mod:`sync.reparse`)."""
        context = current_task_context()

        def sync(source_id: int) -> None:
            try:
                run_chunked(context, source_id, stop=lambda: stop is not None and stop.is_set())
            except Exception as exc:  # one source must not stop the others' syncs
                log.warning(
                    "scheduled sync failed",
                    extra={"source_id": source_id, "error": type(exc).__name__},
                )

        def remove(source_id: int) -> None:
            try:
                remove_source(context.session_factory, source_id)
            except UnknownSourceError:
                pass  # finished meanwhile
            except Exception as exc:  # its heartbeat stays old: the next tick tries again
                log.warning(
                    "source removal failed",
                    extra={"source_id": source_id, "error": type(exc).__name__},
                )

        def reread(source_id: int) -> None:
            try:
                reparse_source(
                    context.session_factory,
                    source_id,
                    default_region=context.default_region,
                    max_seconds=REPARSE_SLICE_S,
                    stop=lambda: stop is not None and stop.is_set(),
                )
            except Exception as exc:  # it keeps its place: the next tick goes on
                log.warning(
                    "reading stored patients again failed",
                    extra={"source_id": source_id, "error": type(exc).__name__},
                )

        return dispatch_due(context, sync, remove, reread)

    @contextmanager
    def schedule_loop(self) -> Iterator[threading.Event]:
        """Embedded mode has no beat and no worker: a daemon thread runs the sources whose
        schedule is due every ``schedule_interval_s`` (beat's tick), while the block runs. Set
        the yielded event to stop it (a run in flight stops after its chunk)."""

        def tick(stop: threading.Event) -> None:
            try:
                self.run_due(stop)
            except Exception as exc:  # the tick itself (the database) failed
                log.warning("scheduler tick failed", extra={"error": type(exc).__name__})

        with _ticking(
            "askonce-scheduler",
            self.settings.schedule_interval_s,
            tick,
            stop_wait_s=SCHEDULER_STOP_WAIT_S,
        ) as stop:
            yield stop

    def broker_check(self) -> Callable[[], None] | None:
        url = self.settings.redis_url
        if url is None:
            return None

        def check() -> None:
            client = redis.Redis.from_url(url, socket_connect_timeout=BROKER_CHECK_TIMEOUT_S)
            try:
                client.ping()
            finally:
                client.close()

        return check

    def create_app(self) -> FastAPI:
        return create_app(
            GatewayState(
                engine=self.engine,
                session_factory=self.session_factory,
                broker_check=self.broker_check(),
                secret_key=self.settings.secret_key.get_secret_value(),
                demo=self.settings.demo,
                token_lifetime_s=self.settings.token_lifetime_s,
                max_body_bytes=self.settings.max_body_bytes,
                default_page_size=self.settings.page_size_default,
                max_page_size=self.settings.page_size_max,
                export=export_settings(self.settings),
                public_base_url=self.settings.public_base_url,
                delivery_allow_http=self.settings.delivery_allow_http,
                patient_parser=partial(parse_patient, default_region=self.settings.default_region),
                matcher=partial(match_patient, settings=match_settings(self.settings)),
            )
        )


def unreachable_broker(exc: BaseException) -> str | None:
    """Why the broker (Redis) could not be reached, when that is what ``exc`` (or what it
    was raised from: kombu wraps redis-py's errors) says; None for any other failure.
    redis-py's words name the host and the port, never a task's arguments."""
    for current in error_chain(exc):
        if isinstance(current, redis.ConnectionError | redis.TimeoutError):
            return str(current) or type(current).__name__
    return None


def export_settings(settings: Settings) -> ExportSettings:
    """Bulk Data ``$export``'s settings from the environment's."""
    return ExportSettings(
        file_resources=settings.export_file_resources,
        retention_hours=settings.export_retention_hours,
        max_active=settings.export_max_active,
        outbox_retention_days=settings.outbox_retention_days,
    )


def match_settings(settings: Settings) -> MatchSettings:
    """The matching engine's settings from the environment's."""
    return MatchSettings(
        certain=settings.match_certain,
        probable=settings.match_probable,
        possible=settings.match_possible,
        max_block_size=settings.match_max_block_size,
        lookalike_guards_from_training=settings.match_lookalike_guards_from_training,
    )


def build_runtime(settings: Settings | None = None, *, check_schema: bool = True) -> Runtime:
    """Wire one process. With ``check_schema`` it refuses to start on a stale schema."""
    settings = settings or get_settings()
    engine = make_engine(settings.database_url)
    if check_schema:
        check_schema_at_head(engine)
    session_factory = make_session_factory(engine)
    celery = create_celery(
        settings.redis_url,
        queue=settings.task_queue,
        delivery_interval_s=settings.delivery_interval_s,
        prune_interval_s=settings.prune_interval_s,
        schedule_interval_s=settings.schedule_interval_s,
    )
    bind_task_context(
        TaskContext(
            engine=engine,
            session_factory=session_factory,
            default_region=settings.default_region,
            match_settings=match_settings(settings),
            render_focus=render_focus,
            fhir_base=f"{settings.public_base_url.rstrip('/')}/fhir"
            if settings.public_base_url
            else "",
            outbox_retention_days=settings.outbox_retention_days,
            run_retention_days=settings.run_retention_days,
            stall_after_s=settings.sync_stall_after_s,
            subscription_check_s=settings.subscription_check_s,
            run_export=lambda job_id: run_export(
                session_factory, job_id, export_settings(settings)
            ).as_dict(),
        )
    )
    return Runtime(settings=settings, engine=engine, session_factory=session_factory, celery=celery)
