"""``askonce sources subscribe`` and ``unsubscribe``: the Subscriptions askonce keeps on an
EHR so that it pushes its changes (see :mod:`sync.subscriptions`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from askonce.cli_sources import _runtime, console, print_subscriptions, sources_app
from connectors import ConnectorError
from connectors.subscriptions import SubscriptionRequest, SubscriptionRequestError
from store import SourceRepository
from sync.runner import SourceUnavailableError
from sync.subscriptions import SubscribeError, subscribe, unsubscribe


def _endpoint(name: str, endpoint: str | None, base: str | None) -> str:
    if endpoint:
        return endpoint
    if not base:
        console.print(
            "[red]error:[/red] give --endpoint (the URL the EHR reaches /intake/NAME at),"
            " or set ASKONCE_PUBLIC_BASE_URL"
        )
        raise typer.Exit(code=2)
    return f"{base.rstrip('/')}/intake/{name}"


@sources_app.command("subscribe")
def sources_subscribe(
    name: Annotated[str, typer.Argument(help="The source (a FHIR server) to subscribe to.")],
    token: Annotated[
        str,
        typer.Option(
            help="The source's intake token (the one it was added with); a source without one"
            " takes this one, and push intake is switched on. The EHR sends it back as"
            " a bearer token."
        ),
    ],
    endpoint: Annotated[
        str | None,
        typer.Option(
            help="Where the EHR sends the notifications: this server's /intake/NAME as the"
            " EHR reaches it (default: ASKONCE_PUBLIC_BASE_URL/intake/NAME)."
        ),
    ] = None,
    topic: Annotated[
        list[str] | None,
        typer.Option(
            help="A SubscriptionTopic canonical URL the EHR offers (Subscriptions Backport;"
            " repeatable). Its events are numbered, so a lost notification shows."
        ),
    ] = None,
    criteria: Annotated[
        list[str] | None,
        typer.Option(
            help="A classic R4 criteria such as 'Patient?' (repeatable). Default, when no"
            " --topic is given: one per resource type the source syncs."
        ),
    ] = None,
    content: Annotated[
        str | None,
        typer.Option(
            help="Payload: empty, id-only or full-resource (default: id-only for a topic,"
            " full-resource for a criteria)."
        ),
    ] = None,
    heartbeat: Annotated[
        int | None,
        typer.Option(help="Topic-based: the heartbeat period the EHR is asked for (s)."),
    ] = None,
    filter_: Annotated[
        list[str] | None,
        typer.Option("--filter", help="Topic-based: a filter the topic allows (repeatable)."),
    ] = None,
) -> None:
    """Create Subscriptions on the source's EHR that push its changes to this server's intake.

    The scheduler then watches them: one the EHR stopped (an error, a restart of askonce)
    is asked to start again, and a catch-up sync reads what it did not send."""
    runtime = _runtime()
    target = _endpoint(name, endpoint, runtime.settings.public_base_url)
    with runtime.session_factory() as session:
        try:
            types = list(SourceRepository(session).get_by_name(name).resource_types)
        except LookupError as exc:
            console.print(f"[red]error:[/red] no source named {name!r}")
            raise typer.Exit(code=2) from exc
    topics, searches = list(topic or []), list(criteria or [])
    if not topics and not searches:
        searches = [f"{rtype}?" for rtype in types]

    def requests(bearer: str) -> list[SubscriptionRequest]:
        made = [
            SubscriptionRequest(
                endpoint=target,
                token=bearer,
                topic=url,
                content=content or "",
                heartbeat_s=heartbeat,
                filters=tuple(filter_ or ()),
            )
            for url in topics
        ]
        return made + [
            SubscriptionRequest(endpoint=target, token=bearer, criteria=q, content=content or "")
            for q in searches
        ]

    try:
        requests("check")  # every request is valid before anything changes
        done = subscribe(runtime.session_factory, name, token, requests)
    except (SubscriptionRequestError, SubscribeError, SourceUnavailableError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    except ConnectorError as exc:
        console.print(f"[red]error:[/red] the EHR refused: {exc}")
        raise typer.Exit(code=1) from exc
    out = Console(soft_wrap=True)
    if done.token_set:
        out.print(f"push intake switched on for {name} with this token")
    print_subscriptions(out, [*done.created, *done.kept])
    out.print(
        f"[green]{len(done.created)} subscription(s) created[/green], notifying {target}"
        + (f"; {len(done.kept)} already there, left as they are" if done.kept else "")
    )


@sources_app.command("unsubscribe")
def sources_unsubscribe(
    name: Annotated[str, typer.Argument(help="The source whose Subscriptions to delete.")],
    subscription_id: Annotated[
        list[str] | None,
        typer.Option("--id", help="Only this Subscription (repeatable); default: all."),
    ] = None,
) -> None:
    """Delete the Subscriptions askonce created on the source's EHR (push intake stays on
    for any other sender with the token)."""
    runtime = _runtime()
    try:
        gone = unsubscribe(runtime.session_factory, name, subscription_id or ())
    except (SubscribeError, SourceUnavailableError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    except ConnectorError as exc:
        console.print(f"[red]error:[/red] the EHR refused: {exc}")
        raise typer.Exit(code=1) from exc
    Console(soft_wrap=True).print(f"{len(gone)} subscription(s) deleted from {name}'s EHR")
