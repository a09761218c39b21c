"""The FastAPI application factory."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from gateway import admin, console, health, intake, metrics
from gateway.audit import AuditLog
from gateway.auth.router import router as auth_router
from gateway.auth.tokens import TokenService
from gateway.errors import install_error_handlers
from gateway.fhir import basic, encounter, export, metadata, patient, questionnaire, subscription
from gateway.limits import BodySizeLimit
from gateway.reads import PatientReader
from gateway.state import GatewayState

API_TITLE = "askonce"
API_VERSION = "0.1.0"


def create_app(state: GatewayState) -> FastAPI:
    """Build the gateway around an already wired :class:`GatewayState`."""
    audit = AuditLog(state.engine, state.audit_flush_interval_s)
    reader = PatientReader(state.engine)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        await reader.open()
        # Everything built at startup lives as long as the process: keep it out of the
        # cyclic collector's full passes, whose pauses would land on request latency.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            gc.unfreeze()
            await reader.close()
            # Drain the write-behind audit queue before the process goes.
            await run_in_threadpool(audit.close)

    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        summary="One golden Patient record per real person, served over FHIR R4.",
        lifespan=lifespan,
    )
    app.state.askonce = state
    app.state.audit = audit
    app.state.reader = reader
    app.state.tokens = TokenService(state.secret_key, state.token_lifetime_s)
    app.state.metrics = metrics.registry_for(state.session_factory)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=state.max_body_bytes)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(auth_router)
    app.include_router(metadata.router)
    # Before the Patient routes: /fhir/Patient/$export is not a read of Patient/$export.
    app.include_router(export.router)
    app.include_router(patient.router)
    app.include_router(encounter.router)
    app.include_router(subscription.router)
    app.include_router(basic.router)
    app.include_router(questionnaire.router)
    app.include_router(admin.router)
    app.include_router(intake.router)
    console.install(app)
    return app
