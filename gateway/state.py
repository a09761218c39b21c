"""What the gateway needs from the composition root, bundled once per app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from fhir_mapping import parse_patient
from gateway.operations.export import ExportSettings
from mpi import match_patient

#: Lifetime of an access token issued by ``/auth/token``.
DEFAULT_TOKEN_LIFETIME_S = 300
#: Largest request body accepted (``$match`` Parameters, admin decisions).
DEFAULT_MAX_BODY_BYTES = 1_048_576
#: Search page size when ``_count`` is not given, and the largest honoured.
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 200
DEFAULT_AUDIT_FLUSH_INTERVAL_S = 0.05


def _now_fhir() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass
class GatewayState:
    engine: Engine
    session_factory: sessionmaker[Session]
    #: Returns normally when the broker answers; raises otherwise. None in embedded mode.
    broker_check: Callable[[], None] | None = None
    secret_key: str = ""
    demo: bool = False
    extras: dict[str, object] = field(default_factory=dict)
    token_lifetime_s: int = DEFAULT_TOKEN_LIFETIME_S
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    default_page_size: int = DEFAULT_PAGE_SIZE
    max_page_size: int = MAX_PAGE_SIZE
    #: The public URL the gateway is reached at (behind a proxy); None: from the request.
    public_base_url: str | None = None
    #: Subscriptions and webhooks may name plain-http endpoints on other hosts.
    delivery_allow_http: bool = False
    #: ``$match`` scoring: ``mpi.match_patient`` (session, patient, count=, only_certain=).
    matcher: Callable[..., Any] = match_patient
    #: Parses the ``$match`` input Patient (``fhir_mapping.parse_patient``).
    patient_parser: Callable[[dict[str, Any]], Any] = parse_patient
    #: How often the write-behind audit queue is written (seconds).
    audit_flush_interval_s: float = DEFAULT_AUDIT_FLUSH_INTERVAL_S
    #: Bulk Data ``$export``: file size, retention, jobs in progress per client.
    export: ExportSettings = field(default_factory=ExportSettings)
    #: Hands an export job to a worker; None: the task queue (``gateway.fhir.export``).
    export_trigger: Callable[[str], None] | None = None
    #: ``CapabilityStatement.date``: when this process started serving.
    started_at: str = field(default_factory=_now_fhir)

    def base_url(self, request: Request) -> str:
        """Scheme, host and root path, without a trailing slash."""
        if self.public_base_url:
            return self.public_base_url.rstrip("/")
        return str(request.base_url).rstrip("/")
