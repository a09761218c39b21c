"""The OpenAPI document of the gateway, as committed in ``openapi/openapi.json``.

Generated from the app itself (no database is touched), written with sorted keys
so the committed file changes only when the API does. ``askonce openapi --out
openapi/openapi.json`` regenerates it; a test fails when it drifts.
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.pool import StaticPool

from gateway.app import create_app
from gateway.state import GatewayState
from store.db import make_engine, make_session_factory

#: A throwaway signing key: the document does not depend on it.
_DOCUMENT_KEY = "openapi-generation-only"


def openapi_document() -> dict[str, Any]:
    engine = make_engine("sqlite://", poolclass=StaticPool)
    try:
        app = create_app(
            GatewayState(
                engine=engine,
                session_factory=make_session_factory(engine),
                secret_key=_DOCUMENT_KEY,
            )
        )
        return app.openapi()
    finally:
        engine.dispose()


def render_openapi() -> str:
    return json.dumps(openapi_document(), indent=2, sort_keys=True, ensure_ascii=False) + "\n"
