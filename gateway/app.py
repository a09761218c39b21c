"""The FastAPI application factory."""

from __future__ import annotations

import gc
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager

from fastapi import APIRouter, FastAPI
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway import admin, console, health, intake, metrics
from gateway.audit import AuditLog
from gateway.auth.router import router as auth_router
from gateway.auth.tokens import TokenService
from gateway.errors import install_error_handlers, render
from gateway.fhir import basic, encounter, export, metadata, patient, questionnaire, subscription
from gateway.limits import BodySizeLimit
from gateway.outcomes import method_not_allowed
from gateway.reads import PatientReader
from gateway.state import GatewayState

API_TITLE = "askonce"
API_VERSION = "0.1.0"
#: A type-level operation's path: ``/fhir/Patient/$match``.
_TYPE_OPERATION = re.compile(r"^/fhir/[A-Z][A-Za-z]*/\$[A-Za-z-]+$")


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
    fhir_routers = (
        export.router,
        patient.router,
        encounter.router,
        subscription.router,
        basic.router,
        questionnaire.router,
    )
    for router in fhir_routers:
        app.include_router(router)
    app.include_router(admin.router)
    app.include_router(intake.router)
    console.install(app)
    _operations_answer_get(app, fhir_routers)
    return app


def _operations_answer_get(app: FastAPI, routers: Sequence[APIRouter]) -> None:
    """``GET /fhir/Patient/$match`` is a 405 that names the methods the operation takes,
    not a read of a Patient whose id would be ``$match`` (a 404): a route for each
    type-level operation of ``routers`` that has no ``GET``, ahead of the reads."""
    allowed: dict[str, set[str]] = {}
    for router in routers:
        for route in router.routes:
            if isinstance(route, APIRoute) and _TYPE_OPERATION.match(route.path):
                allowed.setdefault(route.path, set()).update(route.methods or ())
    for path, methods in allowed.items():
        if "GET" not in methods:
            app.router.routes.insert(
                0, Route(path, _refuse(path, sorted(methods)), methods=["GET"])
            )


def _refuse(path: str, allow: list[str]) -> Callable[[Request], Awaitable[Response]]:
    outcome = method_not_allowed(f"{path} is invoked with {', '.join(allow)}, not GET.", allow)

    async def refuse(_request: Request) -> Response:
        return render(outcome)

    return refuse
