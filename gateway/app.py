"""The FastAPI application factory."""

from __future__ import annotations

from fastapi import FastAPI

from gateway import health
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
    app.include_router(health.router)
    return app
