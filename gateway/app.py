"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from gateway import admin, health
from gateway.auth.router import router as auth_router
from gateway.auth.tokens import TokenService
from gateway.errors import install_error_handlers
from gateway.fhir import encounter, metadata, patient
from gateway.limits import BodySizeLimit
from gateway.state import GatewayState

API_TITLE = "askonce"
API_VERSION = "0.1.0"


def create_app(state: GatewayState) -> FastAPI:
    """Build the gateway around an already wired :class:`GatewayState`."""
    app = FastAPI(
        title=API_TITLE,
        version=API_VERSION,
        summary="One golden Patient record per real person, served over FHIR R4.",
    )
    app.state.askonce = state
    app.state.tokens = TokenService(state.secret_key, state.token_lifetime_s)
    install_error_handlers(app)
    app.add_middleware(BodySizeLimit, max_bytes=state.max_body_bytes)
    app.include_router(health.router)
    app.include_router(auth_router)
    app.include_router(metadata.router)
    app.include_router(patient.router)
    app.include_router(encounter.router)
    app.include_router(admin.router)
    return app
