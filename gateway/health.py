"""Liveness and readiness probes (no authentication, no patient data)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from sqlalchemy import text

from store.migrate import check_schema_at_head

router = APIRouter(tags=["health"])


@router.get("/healthz", summary="Liveness: the process answers")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get("/readyz", summary="Readiness: database reachable, schema at head, broker reachable")
def readyz(request: Request) -> JSONResponse:
    state = request.app.state.askonce
    checks: dict[str, Any] = {}
    ok = True
    try:
        with state.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        checks["database"] = "ok"
    except Exception as exc:
        ok = False
        checks["database"] = f"unreachable: {type(exc).__name__}"
    if checks["database"] == "ok":
        try:
            check_schema_at_head(state.engine)
            checks["schema"] = "ok"
        except Exception as exc:
            ok = False
            checks["schema"] = str(exc)
    if state.broker_check is None:
        checks["broker"] = "embedded"
    else:
        try:
            state.broker_check()
            checks["broker"] = "ok"
        except Exception as exc:
            ok = False
            checks["broker"] = f"unreachable: {type(exc).__name__}"
    return JSONResponse(
        {"status": "ok" if ok else "unavailable", "checks": checks}, status_code=200 if ok else 503
    )
