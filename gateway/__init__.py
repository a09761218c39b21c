"""Gateway: the FastAPI app serving the FHIR R4 API, the admin API and health probes.

FHIR operations are plain functions in :mod:`gateway.operations`; the routers in
:mod:`gateway.fhir` and :mod:`gateway.admin` adapt them. Every error a client sees
is an OperationOutcome built by :mod:`gateway.outcomes`.

Errors::

    Exception
     ├── OutcomeError            (an HTTP status + OperationOutcome; rendered as FHIR JSON)
     └── ValueError
          ├── InvalidScopeError  (not a SMART scope nor the admin scope)
          ├── InvalidTokenError  (bad signature, audience, issuer or expiry: 401)
          └── ConsumerExistsError
"""

from __future__ import annotations

from gateway.app import create_app
from gateway.audit import AuditLog
from gateway.auth import ADMIN_SCOPE, TokenService, register_consumer
from gateway.outcomes import Outcome, OutcomeError
from gateway.state import GatewayState

__all__ = [
    "ADMIN_SCOPE",
    "AuditLog",
    "GatewayState",
    "Outcome",
    "OutcomeError",
    "TokenService",
    "create_app",
    "register_consumer",
]
