"""The steward console: HTML pages over the admin API's functions, at ``/console``.

A data steward signs in with the credentials of a consumer that has ``askonce.admin``
(``askonce consumers add NAME --kind steward --scopes askonce.admin``). The session is a
signed token in an ``HttpOnly``, ``SameSite=Strict`` cookie whose audience is the
console's own, so it is no bearer token for the API (nor the reverse); it is renewed
while the steward works and ends after :data:`SESSION_S` idle, or at the next page once
the consumer is deactivated or loses ``askonce.admin``. Every form carries a token only
the server can derive (:func:`csrf_token`), checked on each POST.

Pages: the dashboard, the review queue and each item side by side with the match
evidence (decided through the same :func:`gateway.admin.routes.decide` as the API), a
golden record with its links and their history, a search, the sources and the
quarantine. Reads of patient data are audited like the API's (actions ``console-…``);
nothing is logged. Responses are ``no-store`` with a strict Content-Security-Policy: no
script runs on these pages, and the only style is the console's own sheet.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from sqlalchemy import select
from sqlalchemy.orm import Session

from gateway.admin.queries import (
    REVIEW_KINDS,
    links_of,
    list_quarantine,
    list_review,
    list_sources,
)
from gateway.admin.routes import Decision, decide, steward_merge, steward_unmerge
from gateway.audit import audited
from gateway.auth.consumers import authenticate_client
from gateway.auth.scopes import ADMIN_SCOPE, ScopeSet
from gateway.auth.tokens import InvalidTokenError, Principal, TokenService
from gateway.console.views import (
    dashboard_counts,
    disagreements,
    evidence_rows,
    form_title,
    golden_view,
    person_view,
    record_view,
)
from gateway.deps import AuditDep, SessionDep
from gateway.fhir.context import search_context
from gateway.operations.read import FHIR_ID
from gateway.operations.search_patient import search_patients
from gateway.outcomes import OutcomeError
from mpi import (
    GoldenNotFound,
    InvalidOperation,
    check_merge,
    likely_duplicates,
    review_item_dict,
)
from store.models import Consumer, FormResponse, GoldenPatient, Link, ReviewItem, Source
from store.types import as_utc
from sync import check_source

router = APIRouter(prefix="/console", include_in_schema=False)
HERE = Path(__file__).resolve().parent
templates = Jinja2Templates(directory=str(HERE / "templates"))
STYLESHEET = (HERE / "static" / "console.css").read_bytes()

COOKIE = "askonce_console"
#: The console's token audience: its cookie is no API bearer token.
CONSOLE_AUDIENCE = "askonce-console"
#: A session ends this long after the steward's last page.
SESSION_S = 30 * 60
#: Renewed on a page past this much of its life.
RENEW_AFTER_S = 5 * 60
PAGE = 50
#: The latest forms a golden record's page lists.
FORMS_SHOWN = 20
#: Likely duplicates a golden record's page lists.
DUPLICATES_SHOWN = 5
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
}
SEARCH_FIELDS = ("family", "given", "birthdate", "identifier", "phone", "email")


def when(value: Any) -> str:
    """A timestamp (a datetime, or ISO text) as ``2026-11-24 09:30 UTC``; "" for none."""
    if not value:
        return ""
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(str(value))
    return (as_utc(moment) or moment).strftime("%Y-%m-%d %H:%M UTC")


def reasons(error: Any) -> str:
    """A quarantined record's error (``{"issues": [{"path", "reason"}]}``) as one line."""
    if isinstance(error, dict) and isinstance(error.get("issues"), list):
        parts = [
            f"{i.get('path') or '(resource)'}: {i.get('reason', '')}"
            for i in error["issues"]
            if isinstance(i, dict)
        ]
        return "; ".join(parts)
    return str(error or "")


templates.env.filters["when"] = when
templates.env.filters["reasons"] = reasons
templates.env.filters["form_title"] = form_title


class LoginRequired(Exception):
    """No valid console session: the handler sends the browser to the sign-in page."""


async def login_required(_request: Request, _exc: Exception) -> Response:
    return RedirectResponse("/console/login", status_code=303, headers=SECURITY_HEADERS)


def _tokens(request: Request) -> TokenService:
    service: TokenService = request.app.state.tokens
    return service


def steward(request: Request) -> Principal:
    """The signed-in steward, or :class:`LoginRequired`."""
    token = request.cookies.get(COOKIE)
    if not token:
        raise LoginRequired
    try:
        principal = _tokens(request).verify(token, audience=CONSOLE_AUDIENCE)
    except InvalidTokenError as exc:
        raise LoginRequired from exc
    if not principal.scopes.admin:
        raise LoginRequired
    # A consumer deactivated, or no longer a steward, is signed out at its next page.
    state = request.app.state.askonce
    with state.session_factory() as session:
        row = session.execute(
            select(Consumer.active, Consumer.scopes, Consumer.name).where(
                Consumer.client_id == principal.client_id
            )
        ).first()
    if row is None or not row.active or ADMIN_SCOPE not in (row.scopes or []):
        raise LoginRequired
    request.state.steward_name = row.name
    return principal


def csrf_token(request: Request, principal: Principal) -> str:
    """The form token of ``principal``'s pages: a page of another site cannot know it
    (it needs the server's secret), and it survives the session's renewals."""
    secret = request.app.state.askonce.secret_key.encode()
    message = b"console-csrf:" + principal.client_id.encode()
    return hmac.new(secret, message, hashlib.sha256).hexdigest()[:40]


def _csrf_ok(request: Request, principal: Principal, sent: str) -> bool:
    return hmac.compare_digest(csrf_token(request, principal), sent)


def _expired_form(request: Request, principal: Principal) -> HTMLResponse:
    detail = "The form has expired, or came from another page: reload it and try again."
    return page(
        request, "missing.html", {"what": "This form", "detail": detail}, principal, status=403
    )


def _set_session(response: Response, request: Request, principal: Principal) -> None:
    token = _tokens(request).issue(
        principal.client_id,
        list(principal.scopes.raw),
        audience=CONSOLE_AUDIENCE,
        lifetime_s=SESSION_S,
    )
    response.set_cookie(
        COOKIE,
        token,
        max_age=SESSION_S,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )


def page(
    request: Request,
    name: str,
    context: dict[str, Any],
    principal: Principal | None,
    *,
    status: int = 200,
) -> HTMLResponse:
    """A template rendered with the console's headers; the session renewed when due."""
    values = {
        "steward": principal,
        "steward_name": getattr(request.state, "steward_name", None),
        "csrf": csrf_token(request, principal) if principal else "",
        **context,
    }
    response = templates.TemplateResponse(
        request, name, values, status_code=status, headers=SECURITY_HEADERS
    )
    if principal is not None and principal.expires_at - time.time() < SESSION_S - RENEW_AFTER_S:
        _set_session(response, request, principal)
    return response


@router.get("/console.css")
def stylesheet() -> Response:
    return Response(
        STYLESHEET, media_type="text/css", headers={"Cache-Control": "public, max-age=3600"}
    )


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request) -> HTMLResponse:
    return page(request, "login.html", {"error": None}, None)


@router.post("/login", response_class=HTMLResponse)
def login(
    request: Request,
    session: SessionDep,
    client_id: Annotated[str, Form(max_length=200)],
    client_secret: Annotated[str, Form(max_length=500)],
) -> Response:
    consumer = authenticate_client(session, client_id.strip(), client_secret.strip())
    if consumer is None:
        return page(
            request, "login.html", {"error": "Unknown client id or wrong secret."}, None, status=401
        )
    if ADMIN_SCOPE not in (consumer.scopes or []):
        return page(
            request,
            "login.html",
            {"error": "This consumer is not a steward: it needs scope askonce.admin."},
            None,
            status=403,
        )
    response = RedirectResponse("/console", status_code=303, headers=SECURITY_HEADERS)
    principal = Principal(consumer.client_id, ScopeSet.of(consumer.scopes or []), 0.0)
    _set_session(response, request, principal)
    return response


@router.post("/logout")
def logout(request: Request, csrf: Annotated[str, Form()] = "") -> Response:
    principal = steward(request)
    if not _csrf_ok(request, principal, csrf):
        return _expired_form(request, principal)
    response = RedirectResponse("/console/login", status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE, path="/console")
    return response


@router.get("", response_class=HTMLResponse)
def dashboard(request: Request, session: SessionDep) -> HTMLResponse:
    principal = steward(request)
    counts = dashboard_counts(session)
    sources = list_sources(session)
    values = {"counts": counts, "sources": sources, "quarantined": counts["quarantined"]}
    return page(request, "dashboard.html", values, principal)


@router.get("/review", response_class=HTMLResponse)
def review_queue(
    request: Request,
    session: SessionDep,
    audit: AuditDep,
    after: int = 0,
    status: str = "open",
    kind: str | None = None,
    decided: int | None = None,
    outcome: str | None = None,
) -> HTMLResponse:
    principal = steward(request)
    status = status if status in ("open", "resolved") else "open"
    kind = kind if kind in REVIEW_KINDS else None
    with audited(audit, principal, "console-review", request, "ReviewItem") as entry:
        items = list_review(session, status, max(after, 0), PAGE + 1, kind)
        entry["ids"] = [i["id"] for i in items[:PAGE]]
    more = items[PAGE - 1]["id"] if len(items) > PAGE else None
    names = _golden_names(session, [i["golden_id"] for i in items[:PAGE]])
    return page(
        request,
        "review_list.html",
        {
            "items": items[:PAGE],
            "names": names,
            "status": status,
            "kind": kind,
            "kinds": REVIEW_KINDS,
            "next_after": more,
            "decided": decided,
            "outcome": outcome if outcome in ("match", "no-match") else None,
        },
        principal,
    )


def _golden_names(session: Session, golden_ids: list[str | None]) -> dict[str, str]:
    """Each golden record's first name as the queue lists it."""
    ids = [g for g in golden_ids if g]
    out: dict[str, str] = {}
    for golden_id, resource in session.execute(
        select(GoldenPatient.id, GoldenPatient.resource).where(GoldenPatient.id.in_(ids))
    ):
        view = person_view(resource, "")
        out[golden_id] = view.names[0] if view.names else ""
    return out


@router.get("/review/{item_id}", response_class=HTMLResponse)
def review_item(
    item_id: int,
    request: Request,
    session: SessionDep,
    audit: AuditDep,
    decided: int | None = None,
    outcome: str | None = None,
) -> HTMLResponse:
    principal = steward(request)
    with audited(audit, principal, "console-review", request, "ReviewItem", str(item_id)) as entry:
        item = session.get(ReviewItem, item_id) if 0 < item_id < 2**63 else None
        if item is None:
            return page(
                request, "missing.html", {"what": f"Review item {item_id}"}, principal, status=404
            )
        detail = review_item_dict(item)
        if item.kind == "duplicate-golden":
            left = golden_view(session, item.golden_id, "Golden record")
            right = golden_view(session, item.other_golden_id, "Golden record")
        else:
            left = record_view(session, item.source_record_id, "Incoming record")
            right = golden_view(session, item.golden_id, "Golden record")
        closest = (item.evidence or {}).get("record_id")
        member = record_view(session, closest, "Its closest record") if closest else None
        comparisons, notes = evidence_rows(item.evidence)
        differs = disagreements(left, right)
        entry["ids"] = [g for g in (item.golden_id, item.other_golden_id) if g]
    return page(
        request,
        "review_item.html",
        {
            "item": detail,
            "left": left,
            "right": right,
            "member": member,
            "differs": differs,
            "decided": decided,
            "outcome": outcome if outcome in ("match", "no-match") else None,
            "comparisons": comparisons,
            "notes": notes,
            "error": None,
        },
        principal,
    )


@router.post("/review/{item_id}/decision")
def review_decision(
    item_id: int,
    request: Request,
    session: SessionDep,
    decision: Annotated[str, Form(pattern="^(match|no-match)$")],
    csrf: Annotated[str, Form()] = "",
    note: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    principal = steward(request)
    if not _csrf_ok(request, principal, csrf):
        return _expired_form(request, principal)
    try:
        decide(
            session,
            principal,
            Decision(decision=decision, note=note.strip() or None),
            review_item_id=item_id,
        )
    except OutcomeError as exc:
        return page(
            request,
            "missing.html",
            {"what": f"Review item {item_id}", "detail": exc.outcome.diagnostics},
            principal,
            status=exc.status,
        )
    # On to the next open item, as a steward works down the queue.
    following = session.scalar(
        select(ReviewItem.id)
        .where(ReviewItem.status == "open", ReviewItem.id > item_id)
        .order_by(ReviewItem.id)
        .limit(1)
    )
    where = f"/console/review/{following}" if following else "/console/review"
    target = f"{where}?decided={item_id}&outcome={decision}"
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


@router.get("/golden/{golden_id}", response_class=HTMLResponse)
def golden(
    golden_id: str,
    request: Request,
    session: SessionDep,
    audit: AuditDep,
    split: int | None = None,
    to: str | None = None,
    merged: str | None = None,
    unmerged: str | None = None,
) -> HTMLResponse:
    principal = steward(request)
    with audited(audit, principal, "console-golden", request, "Patient", golden_id[:64]) as entry:
        row = session.get(GoldenPatient, golden_id) if len(golden_id) <= 36 else None
        if row is None:
            return page(
                request, "missing.html", {"what": "This golden record"}, principal, status=404
            )
        links = links_of(session, golden_id)
        names = dict(session.execute(select(Source.id, Source.name)).all())
        forms = session.scalars(
            select(FormResponse)
            .join(Link, Link.source_record_id == FormResponse.source_record_id)
            .where(Link.golden_id == golden_id)
            .order_by(FormResponse.received_at.desc())
            .limit(FORMS_SHOWN)
        ).all()
        for link in links["links"]:
            link["comparisons"], link["notes"] = evidence_rows(link.get("explanation"))
        duplicates = (
            [
                (check, golden_view(session, check.source_id, "Golden record"))
                for check in likely_duplicates(session, golden_id, count=DUPLICATES_SHOWN)
            ]
            if row.status == "active"
            else []
        )
        entry["ids"] = [golden_id, *(check.source_id for check, _view in duplicates)]
    return page(
        request,
        "golden.html",
        {
            "person": golden_view(session, golden_id, "Golden record"),
            "row": row,
            "links": links["links"],
            "history": links["history"],
            "forms": forms,
            "duplicates": duplicates,
            "source_names": names,
            "split": split,
            "split_to": to if to and len(to) <= 36 else None,
            "merged": merged if merged and len(merged) <= 36 else None,
            "unmerged": unmerged if unmerged and len(unmerged) <= 36 else None,
        },
        principal,
    )


@router.post("/golden/{golden_id}/split")
def split(
    golden_id: str,
    request: Request,
    session: SessionDep,
    record_id: Annotated[int, Form(ge=1, lt=2**63)],
    csrf: Annotated[str, Form()] = "",
    note: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """ "Not the same person": the record leaves this golden record for one of its own,
    kept apart for good from the record the golden record was built on (a no-match pair
    decision, as ``POST /admin/decisions`` makes)."""
    principal = steward(request)
    if not _csrf_ok(request, principal, csrf):
        return _expired_form(request, principal)
    members = [
        link["source_record_id"]
        for link in links_of(session, golden_id[:36])["links"]
        if link["resource_type"] == "Patient"
    ]
    anchor = next((m for m in members if m != record_id), None)
    if record_id not in members or anchor is None:
        detail = "Only a record linked to this golden record, with others, can be split off."
        return page(
            request, "missing.html", {"what": "This split", "detail": detail}, principal, status=409
        )
    try:
        result = decide(
            session,
            principal,
            Decision(decision="no-match", note=note.strip() or None),
            record_ids=(anchor, record_id),
        )
    except OutcomeError as exc:
        detail = exc.outcome.diagnostics
        return page(
            request,
            "missing.html",
            {"what": "This split", "detail": detail},
            principal,
            status=exc.status,
        )
    target = f"/console/golden/{golden_id}?split={record_id}&to={result.get('golden_id', '')}"
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


def _not_possible(
    request: Request, principal: Principal, what: str, exc: Exception
) -> HTMLResponse:
    if isinstance(exc, OutcomeError):
        status, detail = exc.status, exc.outcome.diagnostics
    else:
        status, detail = (404 if isinstance(exc, GoldenNotFound) else 409), str(exc)
    return page(request, "missing.html", {"what": what, "detail": detail}, principal, status=status)


@router.get("/golden/{golden_id}/merge", response_class=HTMLResponse)
def merge_check(
    golden_id: str, request: Request, session: SessionDep, audit: AuditDep, source: str = ""
) -> HTMLResponse:
    """Before a steward merges ``source`` into this record: both side by side, what their
    records say (best score and grade, the guards that fire, a steward's "no-match")."""
    principal = steward(request)
    source = source.strip()[:36]
    with audited(audit, principal, "console-merge-check", request, "Patient", golden_id[:64]):
        try:
            if not FHIR_ID.match(source):
                raise GoldenNotFound(source)
            check = check_merge(session, source, golden_id[:36])
        except (GoldenNotFound, InvalidOperation) as exc:
            return _not_possible(request, principal, "This merge", exc)
        left = golden_view(session, source, "Merged away:")
        right = golden_view(session, golden_id, "Survives:")
    return page(
        request,
        "merge.html",
        {
            "check": check,
            "left": left,
            "right": right,
            "differs": disagreements(left, right),
        },
        principal,
    )


@router.post("/golden/{golden_id}/merge")
def merge(
    golden_id: str,
    request: Request,
    session: SessionDep,
    audit: AuditDep,
    source: Annotated[str, Form(max_length=36)],
    csrf: Annotated[str, Form()] = "",
    override: Annotated[str, Form(max_length=3)] = "",
    note: Annotated[str, Form(max_length=1000)] = "",
) -> Response:
    """Merge ``source`` into this record (``override``: although its records say two people)."""
    principal = steward(request)
    if not _csrf_ok(request, principal, csrf):
        return _expired_form(request, principal)
    if not FHIR_ID.match(source):
        return _not_possible(request, principal, "This merge", GoldenNotFound(source[:36]))
    try:
        with audited(audit, principal, "console-merge", request, "Patient", golden_id[:64]) as e:
            e["ids"] = [source, golden_id[:36]]
            steward_merge(
                session,
                principal,
                source,
                golden_id[:36],
                override=override == "yes",
                note=note.strip() or None,
            )
    except OutcomeError as exc:
        return _not_possible(request, principal, "This merge", exc)
    target = f"/console/golden/{golden_id[:36]}?merged={source}"
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


@router.post("/golden/{golden_id}/unmerge")
def unmerge(
    golden_id: str,
    request: Request,
    session: SessionDep,
    audit: AuditDep,
    csrf: Annotated[str, Form()] = "",
) -> Response:
    """Undo the last merge of this (merged) record: its records come back to it."""
    principal = steward(request)
    if not _csrf_ok(request, principal, csrf):
        return _expired_form(request, principal)
    try:
        with audited(audit, principal, "console-unmerge", request, "Patient", golden_id[:64]):
            result = steward_unmerge(session, principal, golden_id[:36])
    except OutcomeError as exc:
        return _not_possible(request, principal, "This unmerge", exc)
    target = f"/console/golden/{golden_id[:36]}?unmerged={result['other']}"
    return RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)


@router.get("/search", response_class=HTMLResponse)
def search(request: Request, session: SessionDep, audit: AuditDep) -> HTMLResponse:
    principal = steward(request)
    asked = {k: request.query_params.get(k, "").strip() for k in SEARCH_FIELDS}
    items = [(k, v[:200]) for k, v in asked.items() if v]
    results: list[Any] = []
    error = None
    if items:
        with audited(audit, principal, "console-search", request, "Patient") as entry:
            try:
                bundle = search_patients(
                    session, [*items, ("_count", str(PAGE))], search_context(request)
                )
            except OutcomeError as exc:
                error = exc.outcome.diagnostics
                bundle = {}
            for found in bundle.get("entry", []):
                resource = found["resource"]
                results.append(
                    person_view(resource, resource["id"], link=f"/console/golden/{resource['id']}")
                )
            entry["ids"] = [r.title for r in results]
    return page(
        request,
        "search.html",
        {"asked": asked, "results": results, "searched": bool(items), "error": error},
        principal,
    )


@router.get("/sources", response_class=HTMLResponse)
def sources(request: Request, session: SessionDep) -> HTMLResponse:
    principal = steward(request)
    counts = dashboard_counts(session)
    return page(
        request,
        "sources.html",
        {
            "sources": list_sources(session),
            "quarantined": counts["quarantined"],
            "checkable": True,
        },
        principal,
    )


@router.post("/sources/{source_id}/check", response_class=HTMLResponse)
def source_check(
    source_id: int,
    request: Request,
    session: SessionDep,
    audit: AuditDep,
    csrf: Annotated[str, Form()] = "",
) -> HTMLResponse:
    """The source's preflight (:func:`sync.check_source`), as ``askonce sources check``."""
    principal = steward(request)
    if not _csrf_ok(request, principal, csrf):
        return _expired_form(request, principal)
    with audited(audit, principal, "console-source-check", request, "Source", str(source_id)):
        source = session.get(Source, source_id) if 0 < source_id < 2**31 else None
        if source is None:
            return page(request, "missing.html", {"what": "This source"}, principal, status=404)
        session.expunge(source)
        session.rollback()  # no transaction stays open while the source is asked
        report = check_source(source)
    return page(request, "source_check.html", {"source": source, "report": report}, principal)


@router.get("/quarantine", response_class=HTMLResponse)
def quarantine(
    request: Request,
    session: SessionDep,
    audit: AuditDep,
    source: int | None = None,
    after: int = 0,
) -> HTMLResponse:
    principal = steward(request)
    with audited(audit, principal, "console-quarantine", request, "SourceRecord") as entry:
        rows = list_quarantine(session, source, max(after, 0), PAGE + 1, with_raw=False)
        entry["ids"] = [r["id"] for r in rows[:PAGE]]
    names = dict(session.execute(select(Source.id, Source.name)).all())
    return page(
        request,
        "quarantine.html",
        {
            "rows": rows[:PAGE],
            "source": source,
            "source_names": names,
            "next_after": rows[PAGE - 1]["id"] if len(rows) > PAGE else None,
        },
        principal,
    )


def install(app: Any) -> None:
    """Add the console's routes and its sign-in redirect to ``app``."""
    app.add_exception_handler(LoginRequired, login_required)
    app.include_router(router)
