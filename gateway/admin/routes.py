"""Admin routes: thin adapters over :mod:`gateway.admin.queries` (JSON, not FHIR).

Errors are still OperationOutcomes. Reads that can show patient data
(quarantined resources, review evidence, link explanations, the crosswalk) are
audited like FHIR reads.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Annotated, Any

from fastapi import APIRouter, BackgroundTasks, Depends, Path, Query, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, Field
from sqlalchemy import select

from gateway.admin.queries import (
    DEFAULT_ADMIN_LIMIT,
    MAX_ADMIN_LIMIT,
    consumer_json,
    crosswalk_csv,
    links_of,
    list_consumers,
    list_quarantine,
    list_review,
    list_runs,
    list_sources,
    list_subscriptions,
    subscription_json,
    subscriptions_query,
)
from gateway.audit import audited
from gateway.auth.consumers import ConsumerExistsError, register_consumer, set_webhook
from gateway.auth.scopes import InvalidScopeError
from gateway.auth.tokens import Principal
from gateway.deps import AdminPrincipal, AuditDep, SessionDep, StateDep
from gateway.operations.read import FHIR_ID
from gateway.outcomes import OutcomeError, bad_request, conflict, not_found
from mpi import (
    GoldenNotFound,
    InvalidOperation,
    MergeRefused,
    RecordNotFound,
    ReviewItemNotFound,
    likely_duplicates,
    merge_patients,
    record_decision,
    unmerge_golden,
)
from mpi.admin import MAX_DUPLICATES
from store import NotFoundError
from store.models import Consumer, GoldenPatient, Subscription
from store.models import Source as SourceRow
from sync import (
    ReprocessError,
    SourceChange,
    SourceRemovingError,
    SourceSettingsError,
    begin_removal,
    check_source,
    refresh_goldens,
    removal_plan,
    reprocess_quarantined,
    update_source,
)
from sync.delivery import SubscriptionSettingsError
from sync.pipeline import MAX_PATIENTS_PER_TRANSACTION, UnknownSourceError

router = APIRouter(prefix="/admin", tags=["admin"])
Limit = Annotated[int, Query(ge=1, le=MAX_ADMIN_LIMIT)]
#: Largest values of the INTEGER and BIGINT id columns.
MAX_INT = 2**31 - 1
MAX_BIGINT = 2**63 - 1
AfterId = Annotated[
    int, Query(ge=0, le=MAX_BIGINT, description="Keyset: return rows with a larger id")
]
SourceId = Annotated[int | None, Query(ge=1, le=MAX_INT)]
HTTP_ACCEPTED = 202


@router.get("/sources", summary="Connected sources, their cursors and latest run")
def sources(session: SessionDep, _principal: AdminPrincipal) -> list[dict[str, Any]]:
    return list_sources(session)


class SourcePatch(BaseModel):
    """The operational settings of a source; a field left out is kept."""

    model_config = {"extra": "forbid"}

    #: False pauses the source (its running sync stops after the page in flight).
    enabled: bool | None = None
    #: Seconds, 15m/2h/1d or a 5-field cron expression; null removes the schedule.
    schedule: str | None = Field(default=None, max_length=100)
    #: Survivorship rank (higher wins); its golden records are rendered again.
    trust_rank: int | None = Field(default=None, ge=-1_000_000, le=1_000_000)


@router.patch(
    "/sources/{source_id}",
    summary="Pause or resume a source, change its schedule or its survivorship rank",
)
def patch_source(
    source_id: Annotated[int, Path(ge=1, le=MAX_INT)],
    body: SourcePatch,
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: AdminPrincipal,
    audit: AuditDep,
    background: BackgroundTasks,
) -> dict[str, Any]:
    if "enabled" in body.model_fields_set and body.enabled is None:
        raise OutcomeError(bad_request("enabled must be true or false.", "enabled"))
    if "trust_rank" in body.model_fields_set and body.trust_rank is None:
        raise OutcomeError(bad_request("trust_rank must be an integer.", "trust_rank"))
    change = SourceChange(enabled=body.enabled, trust_rank=body.trust_rank)
    if "schedule" in body.model_fields_set:
        change.schedule = body.schedule
    with audited(audit, principal, "admin-source-update", request, "Source", str(source_id)):
        try:
            update = update_source(session, source_id, change)
        except NotFoundError as exc:
            raise OutcomeError(not_found(f"No source with id {source_id}.")) from exc
        except SourceRemovingError as exc:
            raise OutcomeError(conflict(str(exc))) from exc
        except SourceSettingsError as exc:
            raise OutcomeError(bad_request(str(exc), "schedule")) from exc
        session.commit()
    if update.survivorship_changed:
        # Every golden record the source feeds is rendered again, after the response.
        background.add_task(refresh_goldens, state.session_factory, source_id)
    return update.as_dict()


@router.post(
    "/sources/{source_id}/check",
    summary="Check a source: its server or folder, credentials, FHIR version and each type",
)
def check(
    source_id: Annotated[int, Path(ge=1, le=MAX_INT)],
    request: Request,
    session: SessionDep,
    principal: AdminPrincipal,
    audit: AuditDep,
) -> dict[str, Any]:
    """The source's preflight (:func:`sync.check_source`): ``ok`` is false when something
    would stop a sync; each finding has a level (ok, warning, error), what was checked
    and what was found; ``counts`` are the resources the server counted per type."""
    with audited(audit, principal, "admin-source-check", request, "Source", str(source_id)):
        source = session.get(SourceRow, source_id)
        if source is None:
            raise OutcomeError(not_found(f"No source with id {source_id}."))
        session.expunge(source)
        session.rollback()  # no transaction stays open while the source is asked
        return {"source_id": source_id, **check_source(source).as_dict()}


Removal = Callable[[int], None]


def queue_removal(source_id: int) -> None:
    """Remove the source through the task queue (a worker in services mode, where a
    redelivered or retried task finishes an interrupted removal; in-process when embedded).
    A removal that failed anyway is finished by the scheduler once its heartbeat is old
    (:func:`sync.retire.stalled_removals`), or by asking for it again."""
    from sync.tasks import remove_source, send_after_answer

    send_after_answer(remove_source, source_id=source_id)


def removal_trigger() -> Removal:
    """The dependency that starts a removal; tests override it."""
    return queue_removal


@router.delete(
    "/sources/{source_id}",
    status_code=HTTP_ACCEPTED,
    summary="Remove a source: its records leave the golden records, then it is erased",
)
def delete_source(
    source_id: Annotated[int, Path(ge=1, le=MAX_INT)],
    request: Request,
    session: SessionDep,
    principal: AdminPrincipal,
    audit: AuditDep,
    background: BackgroundTasks,
    trigger: Annotated[Removal, Depends(removal_trigger)],
    confirm: Annotated[
        str | None,
        Query(
            max_length=100,
            description="The source's name, repeated: nothing is removed by an id alone",
        ),
    ] = None,
) -> dict[str, Any]:
    """The source is disabled (its running sync stopped, ``removing_since`` set:
    :func:`sync.begin_removal`) before the answer; the removal itself
    (:func:`sync.remove_source`) runs after it. ``GET /admin/sources`` lists the
    source, disabled, until it is gone; repeating the request finishes a removal that
    was interrupted."""
    source = session.get(SourceRow, source_id)
    if source is None:
        raise OutcomeError(not_found(f"No source with id {source_id}."))
    if confirm != source.name:
        raise OutcomeError(
            bad_request(
                f"Removing a source erases its records: repeat its name, ?confirm={source.name}.",
                "confirm",
            )
        )
    with audited(audit, principal, "admin-source-remove", request, "Source", str(source_id)):
        begin_removal(session, source_id)
        plan = removal_plan(session, source_id)
        session.commit()
    background.add_task(trigger, source_id)
    return {
        "source_id": source_id,
        "name": source.name,
        "status": "removing",
        "records": plan.records,
        "golden_records": plan.golden_records,
    }


@router.get("/runs", summary="Sync runs, newest first")
def runs(
    session: SessionDep,
    _principal: AdminPrincipal,
    source_id: SourceId = None,
    limit: Limit = DEFAULT_ADMIN_LIMIT,
) -> list[dict[str, Any]]:
    return list_runs(session, source_id, limit)


@router.get("/quarantine", summary="Quarantined resources and why")
def quarantine(
    request: Request,
    session: SessionDep,
    principal: AdminPrincipal,
    audit: AuditDep,
    source_id: SourceId = None,
    after_id: AfterId = 0,
    limit: Limit = DEFAULT_ADMIN_LIMIT,
    raw: bool = False,
) -> list[dict[str, Any]]:
    with audited(audit, principal, "admin-quarantine", request, "SourceRecord") as entry:
        items = list_quarantine(session, source_id, after_id, limit, with_raw=raw)
        entry["ids"] = [i["id"] for i in items]
    return items


class Reprocess(BaseModel):
    source_id: int = Field(ge=1, le=MAX_INT)
    #: Only this type (Patient or Encounter); both when omitted, Patients first.
    resource_type: str | None = Field(default=None, pattern="^(Patient|Encounter)$")
    #: Only these quarantined source records (the ``id`` of ``GET /admin/quarantine``).
    ids: list[Annotated[int, Field(ge=1, le=MAX_BIGINT)]] | None = Field(
        default=None, min_length=1, max_length=MAX_ADMIN_LIMIT
    )
    #: At most this many records in this request; ``remaining`` says how many are left.
    limit: int = Field(default=MAX_PATIENTS_PER_TRANSACTION, ge=1, le=MAX_PATIENTS_PER_TRANSACTION)


@router.post(
    "/quarantine/reprocess",
    summary="Run a source's quarantined resources through the pipeline again (after a fix)",
)
def reprocess(
    body: Reprocess,
    request: Request,
    state: StateDep,
    principal: AdminPrincipal,
    audit: AuditDep,
) -> dict[str, Any]:
    with audited(audit, principal, "admin-reprocess", request, "SourceRecord") as entry:
        try:
            result = reprocess_quarantined(
                state.session_factory,
                body.source_id,
                resource_type=body.resource_type,
                record_ids=body.ids,
                limit=body.limit,
            )
        except UnknownSourceError as exc:
            raise OutcomeError(not_found(f"No source with id {body.source_id}.")) from exc
        except ReprocessError as exc:
            raise OutcomeError(bad_request(str(exc), "resource_type")) from exc
        entry["ids"] = result.record_ids
    return result.as_dict()


@router.get("/review", summary="The review queue (possible matches awaiting a steward)")
def review(
    request: Request,
    session: SessionDep,
    principal: AdminPrincipal,
    audit: AuditDep,
    status: Annotated[str, Query(pattern="^(open|resolved)$")] = "open",
    kind: Annotated[str | None, Query(pattern="^(possible-match|vetoed|duplicate-golden)$")] = None,
    after_id: AfterId = 0,
    limit: Limit = DEFAULT_ADMIN_LIMIT,
) -> list[dict[str, Any]]:
    with audited(audit, principal, "admin-review", request, "ReviewItem") as entry:
        items = list_review(session, status, after_id, limit, kind)
        entry["ids"] = [i["id"] for i in items]
    return items


class Decision(BaseModel):
    decision: str = Field(pattern="^(match|no-match)$")
    note: str | None = Field(default=None, max_length=1000)


class PairDecision(Decision):
    record_a_id: int = Field(ge=1, le=MAX_BIGINT)
    record_b_id: int = Field(ge=1, le=MAX_BIGINT)


def decide(
    session: SessionDep, principal: Principal, decision: Decision, **target: Any
) -> dict[str, Any]:
    """One steward decision through the mpi engine; it commits with its effects."""
    try:
        result = record_decision(
            session, decision.decision, actor=principal.client_id, note=decision.note, **target
        )
    except (ReviewItemNotFound, RecordNotFound, GoldenNotFound) as exc:
        raise OutcomeError(not_found("No such review item or source record.")) from exc
    except InvalidOperation as exc:
        raise OutcomeError(conflict(str(exc))) from exc
    session.commit()
    return result


@router.post(
    "/review/{item_id}/decision",
    summary="Decide a review item: match (link or merge) or no-match (keep apart for good)",
)
def decide_review_item(
    item_id: Annotated[int, Path(ge=1, le=MAX_BIGINT)],
    body: Decision,
    session: SessionDep,
    principal: AdminPrincipal,
) -> dict[str, Any]:
    return decide(session, principal, body, review_item_id=item_id)


@router.post(
    "/decisions",
    summary="Decide a pair of source records: match or no-match (the algorithm never overrides it)",
)
def decide_pair(
    body: PairDecision, session: SessionDep, principal: AdminPrincipal
) -> dict[str, Any]:
    return decide(session, principal, body, record_ids=(body.record_a_id, body.record_b_id))


class MergeBody(BaseModel):
    #: The golden record merged away (it answers ``replaced-by`` afterwards).
    source_id: str = Field(pattern=FHIR_ID.pattern, max_length=36)
    #: Merge although the records say these are two people (a guard, a "no-match" or a
    #: ``certainly-not`` score): the steward has checked the evidence.
    override: bool = False
    note: str | None = Field(default=None, max_length=1000)


def steward_merge(
    session: SessionDep,
    principal: Principal,
    source_id: str,
    target_id: str,
    *,
    override: bool = False,
    note: str | None = None,
) -> dict[str, Any]:
    """A steward's merge of ``source_id`` into ``target_id``; it commits with its effects.
    409 when the records speak against it (unless ``override``) or it does not apply."""
    try:
        survivor, check = merge_patients(
            session,
            source_id,
            target_id,
            actor=principal.client_id,
            override=override,
            note=note,
        )
    except GoldenNotFound as exc:
        raise OutcomeError(not_found(f"Golden record {exc.golden_id} is not known.")) from exc
    except MergeRefused as exc:
        raise OutcomeError(
            conflict(
                "Not merged: their records say these are two people ("
                + "; ".join(exc.reasons)
                + "). Merge with override after checking the evidence."
            )
        ) from exc
    except InvalidOperation as exc:
        raise OutcomeError(conflict(str(exc))) from exc
    session.commit()
    return {
        "action": "merged",
        "golden_id": survivor.id,
        "merged": source_id,
        "grade": check.grade,
        "score": check.score,
        "overridden": check.refusals if override else [],
    }


def steward_unmerge(session: SessionDep, principal: Principal, golden_id: str) -> dict[str, Any]:
    """Undo the last merge of ``golden_id``; it commits with its effects."""
    try:
        survivor = unmerge_golden(session, golden_id, actor=principal.client_id)
    except GoldenNotFound as exc:
        raise OutcomeError(not_found(f"Golden record {exc.golden_id} is not known.")) from exc
    except InvalidOperation as exc:
        raise OutcomeError(conflict(str(exc))) from exc
    session.commit()
    return {"action": "unmerged", "golden_id": golden_id, "other": survivor}


@router.post(
    "/golden/{golden_id}/merge",
    summary="Merge another golden record (source_id) into this one, which survives",
)
def merge_into(
    golden_id: Annotated[str, Path(max_length=36)],
    body: MergeBody,
    request: Request,
    session: SessionDep,
    principal: AdminPrincipal,
    audit: AuditDep,
) -> dict[str, Any]:
    with audited(audit, principal, "admin-merge", request, "Patient", golden_id) as entry:
        entry["ids"] = [body.source_id, golden_id]
        return steward_merge(
            session, principal, body.source_id, golden_id, override=body.override, note=body.note
        )


@router.post(
    "/golden/{golden_id}/unmerge",
    summary="Undo the last merge of this golden record: its records come back to it",
)
def unmerge(
    golden_id: Annotated[str, Path(max_length=36)],
    request: Request,
    session: SessionDep,
    principal: AdminPrincipal,
    audit: AuditDep,
) -> dict[str, Any]:
    with audited(audit, principal, "admin-unmerge", request, "Patient", golden_id):
        return steward_unmerge(session, principal, golden_id)


@router.get(
    "/golden/{golden_id}/duplicates",
    summary="Other golden records that may be this one's person (candidates for a merge)",
)
def duplicates(
    golden_id: Annotated[str, Path(max_length=36)],
    request: Request,
    session: SessionDep,
    principal: AdminPrincipal,
    audit: AuditDep,
    count: Annotated[int, Query(ge=1, le=MAX_DUPLICATES)] = 5,
) -> dict[str, Any]:
    """Each record of the golden record matched as a new one would be, against every other
    golden record's; those whose best pair grades at least ``possible`` and whose records do
    not say two people, best first (see :func:`mpi.likely_duplicates`)."""
    with audited(audit, principal, "admin-duplicates", request, "Patient", golden_id) as entry:
        try:
            found = likely_duplicates(session, golden_id, count=count)
        except GoldenNotFound as exc:
            raise OutcomeError(not_found(f"Golden record {exc.golden_id} is not known.")) from exc
        except InvalidOperation as exc:
            raise OutcomeError(conflict(str(exc))) from exc
        entry["ids"] = [golden_id, *(check.source_id for check in found)]
        return {
            "golden_id": golden_id,
            "duplicates": [
                {
                    "golden_id": check.source_id,
                    "score": check.score,
                    "grade": check.grade,
                    "corroborated": check.corroborated,
                }
                for check in found
            ],
        }


@router.get("/golden/{golden_id}/links", summary="Links of a golden record and their history")
def golden_links(
    golden_id: str,
    request: Request,
    session: SessionDep,
    principal: AdminPrincipal,
    audit: AuditDep,
) -> dict[str, Any]:
    with audited(audit, principal, "admin-links", request, "Patient", golden_id):
        if session.get(GoldenPatient, golden_id) is None:
            raise OutcomeError(not_found(f"Patient/{golden_id} is not known."))
        return links_of(session, golden_id)


@router.get("/crosswalk.csv", summary="Every source id and the golden id it is linked to (CSV)")
def crosswalk(
    request: Request,
    session: SessionDep,
    state: StateDep,
    principal: AdminPrincipal,
    audit: AuditDep,
) -> StreamingResponse:
    with audited(audit, principal, "admin-crosswalk", request, "Patient"):
        pass

    def rows() -> Iterator[str]:
        # Its own session: the request's closes before a streamed body is sent.
        with state.session_factory() as stream_session:
            yield from crosswalk_csv(stream_session)

    return StreamingResponse(
        rows(),
        media_type="text/csv",
        headers={"Content-Disposition": 'attachment; filename="crosswalk.csv"'},
    )


@router.get("/consumers", summary="Registered consumers (never their secrets)")
def consumers(session: SessionDep, _principal: AdminPrincipal) -> list[dict[str, Any]]:
    return list_consumers(session)


class NewConsumer(BaseModel):
    name: str = Field(min_length=1, max_length=100)
    kind: str = Field(pattern="^(crm|portal|messaging|steward)$")
    scopes: list[str] = Field(min_length=1)
    webhook_url: str | None = None


@router.post(
    "/consumers",
    status_code=201,
    summary="Register a consumer; the client secret is shown only in this response",
)
def add_consumer(
    body: NewConsumer, session: SessionDep, state: StateDep, _principal: AdminPrincipal
) -> JSONResponse:
    try:
        creds = register_consumer(
            session,
            body.name,
            body.kind,
            body.scopes,
            body.webhook_url,
            allow_http=state.delivery_allow_http,
        )
    except ConsumerExistsError as exc:
        raise OutcomeError(conflict(f"Consumer {body.name!r} already exists.")) from exc
    except SubscriptionSettingsError as exc:
        raise OutcomeError(bad_request(str(exc), "webhook_url")) from exc
    except (InvalidScopeError, ValueError) as exc:
        raise OutcomeError(bad_request(str(exc), "scopes")) from exc
    session.commit()
    return JSONResponse(
        {
            "id": creds.consumer_id,
            "name": creds.name,
            "client_id": creds.client_id,
            "client_secret": creds.client_secret,
            "scopes": creds.scopes,
            "webhook_secret": creds.webhook_secret,
        },
        status_code=201,
        headers={"Cache-Control": "no-store"},
    )


class WebhookBody(BaseModel):
    #: Where the consumer's change events go; null ends its webhook.
    url: str | None
    rotate_secret: bool = False


@router.put(
    "/consumers/{client_id}/webhook",
    summary="Give a consumer a webhook, move it, rotate its signing secret, or end it (url null)",
)
def put_webhook(
    client_id: str,
    body: WebhookBody,
    session: SessionDep,
    state: StateDep,
    _principal: AdminPrincipal,
) -> JSONResponse:
    consumer = session.scalar(select(Consumer).where(Consumer.client_id == client_id))
    if consumer is None:
        raise OutcomeError(not_found("No such consumer."))
    try:
        change = set_webhook(
            session,
            consumer,
            body.url,
            rotate_secret=body.rotate_secret,
            allow_http=state.delivery_allow_http,
        )
    except SubscriptionSettingsError as exc:
        raise OutcomeError(bad_request(str(exc), "url")) from exc
    session.commit()
    return JSONResponse(
        {"webhook_url": change.url, "webhook_secret": change.secret},
        headers={"Cache-Control": "no-store"},
    )


@router.delete("/consumers/{client_id}", summary="Deactivate a consumer (no new tokens)")
def deactivate_consumer(
    client_id: str, session: SessionDep, _principal: AdminPrincipal
) -> dict[str, Any]:
    consumer = session.scalar(select(Consumer).where(Consumer.client_id == client_id))
    if consumer is None:
        raise OutcomeError(not_found("No such consumer."))
    consumer.active = False
    session.commit()
    return consumer_json(consumer)


@router.get(
    "/subscriptions", summary="Every consumer's Subscriptions and webhooks, with their queues"
)
def subscriptions(
    session: SessionDep,
    _principal: AdminPrincipal,
    status: Annotated[str | None, Query(pattern="^(requested|active|error|off)$")] = None,
) -> list[dict[str, Any]]:
    return list_subscriptions(session, status)


@router.post(
    "/subscriptions/{subscription_id}/retry",
    summary="Send to a subscription now, without waiting out its backoff (its endpoint is fixed)",
)
def retry_subscription(
    subscription_id: str, session: SessionDep, _principal: AdminPrincipal
) -> dict[str, Any]:
    row = session.execute(subscriptions_query().where(Subscription.id == subscription_id)).first()
    if row is None:
        raise OutcomeError(not_found("No such subscription."))
    sub, consumer, oldest_pending = row
    if sub.status == "off":
        raise OutcomeError(conflict("The subscription is off; its owner turns it on."))
    if sub.attempts:  # in a backoff; otherwise it is due already, or a sender holds it
        sub.next_attempt_at = None
        session.commit()
    return subscription_json(sub, consumer, oldest_pending)
