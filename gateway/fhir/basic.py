"""``Basic`` routes: the topics askonce offers, kept as the Subscriptions Backport IG keeps
topics on an R4 server (:mod:`gateway.operations.topics`). No other kind of Basic exists
here. Reading them needs the ``Basic`` scope, or the ``Subscription`` one: whoever may
subscribe may read what the topics fire on. They hold no patient data.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from gateway.auth.tokens import Principal
from gateway.deps import PrincipalDep, StateDep, check_scope
from gateway.fhir.context import fhir_extra
from gateway.fhir.http import MediaType, fhir_response, known_params_only
from gateway.operations.bundle import every_match
from gateway.operations.read import check_id
from gateway.operations.topics import TOPIC_SEARCH_PARAMS, read_topic, search_topics
from gateway.outcomes import OutcomeError, not_found

router = APIRouter(prefix="/fhir", tags=["SubscriptionTopic"])
RESPONSE: dict[int | str, dict[str, Any]] = {
    200: {"content": {"application/fhir+json": {}}, "description": "A SubscriptionTopic (Basic)"}
}


def _topic_reader(permission: str) -> Any:
    async def check(principal: PrincipalDep) -> Principal:
        try:
            return check_scope(principal, "Basic", permission)
        except OutcomeError:
            return check_scope(principal, "Subscription", permission)

    return check


Reader = Annotated[Principal, Depends(_topic_reader("r"))]
Searcher = Annotated[Principal, Depends(_topic_reader("s"))]


@router.get(
    "/Basic",
    summary="The SubscriptionTopics a consumer can subscribe to (Backport R4 Basic topics)",
    responses=RESPONSE,
    openapi_extra=fhir_extra("Basic", "interaction", "search-type", search=TOPIC_SEARCH_PARAMS),
)
def search(request: Request, state: StateDep, _principal: Searcher, media: MediaType) -> Response:
    items = known_params_only(request, TOPIC_SEARCH_PARAMS)
    found = search_topics([v for k, v in items if k == "code"], [v for k, v in items if k == "_id"])
    bundle = every_match(state.base_url(request), found, self_url=str(request.url))
    return fhir_response(bundle, media)


@router.get(
    "/Basic/{basic_id}",
    summary="Read a SubscriptionTopic (Backport R4 Basic topic)",
    responses=RESPONSE,
    openapi_extra=fhir_extra("Basic", "interaction", "read"),
)
def read(basic_id: str, _principal: Reader, media: MediaType) -> Response:
    topic = read_topic(check_id("Basic", basic_id))
    if topic is None:
        raise OutcomeError(not_found(f"Basic/{basic_id} is not known."))
    return fhir_response(topic, media)
