"""What the gateway needs from the composition root, bundled once per app."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker


@dataclass
class GatewayState:
    engine: Engine
    session_factory: sessionmaker[Session]
    #: Returns normally when the broker answers; raises otherwise. None in embedded mode.
    broker_check: Callable[[], None] | None = None
    secret_key: str = ""
    demo: bool = False
    extras: dict[str, object] = field(default_factory=dict)
