"""Gateway: the FastAPI app serving the FHIR API, the admin API and health probes."""

from __future__ import annotations

from gateway.app import create_app
from gateway.state import GatewayState

__all__ = ["GatewayState", "create_app"]
