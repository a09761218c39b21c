"""``askonce sources subscribe`` and ``unsubscribe``: the Subscriptions askonce keeps on an
EHR so that it pushes its changes (see :mod:`sync.subscriptions`)."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

from askonce.cli_sources import _runtime, console, print_subscriptions, sources_app
from connectors import ConnectorError
from connectors.subscriptions import SubscriptionRequestError
from sync.runner import SourceUnavailableError
from sync.subscriptions import Plan, Subscribed, SubscribeError, subscribe, unsubscribe


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
            help="A classic R4 criteria such as 'Patient?' (repeatable). Default, when neither"
            " is given: for each type the source syncs, a topic the EHR offers that pushes"
            " every create and update of it, else 'Type?'."
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
    plan = Plan(
        endpoint=_endpoint(name, endpoint, runtime.settings.public_base_url),
        topics=tuple(topic or ()),
        criteria=tuple(criteria or ()),
        content=content or "",
        heartbeat_s=heartbeat,
        filters=tuple(filter_ or ()),
    )
    try:
        done = subscribe(runtime.session_factory, name, token, plan)
    except (SubscriptionRequestError, SubscribeError, SourceUnavailableError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    except ConnectorError as exc:
        console.print(f"[red]error:[/red] the EHR refused: {exc}")
        raise typer.Exit(code=1) from exc
    out = Console(soft_wrap=True)
    if done.token_set:
        out.print(f"push intake switched on for {name} with this token")
    _print_choice(out, done)
    print_subscriptions(out, [*done.created, *done.kept])
    out.print(
        f"[green]{len(done.created)} subscription(s) created[/green], notifying {plan.endpoint}"
        + (f"; {len(done.kept)} already there, left as they are" if done.kept else "")
    )
    classic = [m.what for m in [*done.created, *done.kept] if not m.topic_based]
    if classic and not done.scheduled:
        out.print(
            f"[yellow]note:[/yellow] classic Subscriptions ({', '.join(classic)}) do not number"
            " their events, so a lost notification cannot be seen; a schedule reads what they"
            f" miss: askonce sources update {name} --schedule 1h"
        )


def _print_choice(out: Console, done: Subscribed) -> None:
    """What an automatic plan chose for each type, and why."""
    if done.choice is None:
        return
    if done.topics_unread:
        out.print(
            f"the EHR's topic definitions could not be read ({done.topics_unread}):"
            " classic Subscriptions only"
        )
    for rtype, url in done.choice.topics.items():
        out.print(f"{rtype}: topic {url} (every create and update, numbered events)")
    for rtype in done.choice.uncovered:
        out.print(
            f"{rtype}: no topic the EHR offers pushes every change; classic criteria {rtype}?"
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
