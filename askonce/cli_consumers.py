"""``askonce consumers …`` (register the systems that read askonce) and ``askonce openapi``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

consumers_app = typer.Typer(
    help="Register and list the consumers (CRM, portal, messaging) that read the FHIR API.",
    no_args_is_help=True,
)
console = Console(stderr=True, soft_wrap=True)
out = Console(soft_wrap=True)
DEFAULT_SCOPES = "system/Patient.rs system/Encounter.rs"


@consumers_app.command("add")
def add(
    name: Annotated[str, typer.Argument(help="A unique name, e.g. 'crm-main'.")],
    kind: Annotated[str, typer.Option(help="crm | portal | messaging | steward")],
    scopes: Annotated[
        list[str] | None,
        typer.Option(
            help="SMART scopes (repeat, or space-separated), e.g. 'system/Patient.rs'; "
            "askonce.admin grants the admin API."
        ),
    ] = None,
    webhook_url: Annotated[str | None, typer.Option(help="Where change events go.")] = None,
) -> None:
    """Register a consumer and print its client id and secret (shown only once)."""
    from askonce.cli import _runtime, _settings
    from gateway.auth import ConsumerExistsError, InvalidScopeError, register_consumer

    wanted = " ".join(scopes or [DEFAULT_SCOPES]).split()
    settings = _settings()
    runtime = _runtime(settings)
    try:
        with runtime.unit_of_work() as session:
            creds = register_consumer(
                session,
                name,
                kind,
                wanted,
                webhook_url,
                allow_http=settings.delivery_allow_http,
            )
    except (ConsumerExistsError, InvalidScopeError, ValueError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    out.print(f"client_id={creds.client_id}")
    out.print(f"client_secret={creds.client_secret}")
    out.print(f"scopes={' '.join(creds.scopes)}")
    if creds.webhook_secret:
        out.print(f"webhook_secret={creds.webhook_secret}")
    console.print("[yellow]Store the secret now: only its hash is kept.[/yellow]")


@consumers_app.command("list")
def list_() -> None:
    """List registered consumers (never their secrets)."""
    from askonce.cli import _runtime, _settings
    from gateway.admin.queries import list_consumers

    runtime = _runtime(_settings())
    with runtime.unit_of_work() as session:
        rows = list_consumers(session)
    table = Table("name", "kind", "client_id", "scopes", "active")
    for row in rows:
        table.add_row(
            row["name"], row["kind"], row["client_id"], " ".join(row["scopes"]), str(row["active"])
        )
    out.print(table)


@consumers_app.command("webhook")
def webhook(
    name: Annotated[str, typer.Argument(help="The consumer's name.")],
    url: Annotated[
        str | None, typer.Option(help="Where its change events go (a new webhook, or a move).")
    ] = None,
    off: Annotated[
        bool, typer.Option("--off", help="End its webhook (and drop its queue).")
    ] = False,
    rotate_secret: Annotated[
        bool,
        typer.Option("--rotate-secret", help="Replace its signing secret (printed once)."),
    ] = False,
) -> None:
    """Give a consumer a webhook, move it, rotate its signing secret or end it."""
    from sqlalchemy import select

    from askonce.cli import _runtime, _settings
    from gateway.auth.consumers import set_webhook
    from store.models import Consumer
    from sync.delivery import SubscriptionSettingsError

    if (off and (url or rotate_secret)) or not (off or url or rotate_secret):
        console.print("[red]error:[/red] give --url URL and/or --rotate-secret, or --off alone")
        raise typer.Exit(code=2)
    settings = _settings()
    runtime = _runtime(settings)
    try:
        with runtime.unit_of_work() as session:
            consumer = session.scalar(select(Consumer).where(Consumer.name == name))
            if consumer is None:
                console.print(f"[red]error:[/red] no consumer named {name!r}")
                raise typer.Exit(code=2)
            target = None if off else (url or consumer.webhook_url)
            if target is None and not off:
                console.print(f"[red]error:[/red] {name!r} has no webhook; give --url URL")
                raise typer.Exit(code=2)
            change = set_webhook(
                session,
                consumer,
                target,
                rotate_secret=rotate_secret,
                allow_http=settings.delivery_allow_http,
            )
    except SubscriptionSettingsError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    out.print(f"webhook_url={change.url or ''}")
    if change.secret:
        out.print(f"webhook_secret={change.secret}")
        console.print("[yellow]Store the signing secret now: it is not shown again.[/yellow]")


def openapi_command(
    out_path: Annotated[
        Path | None, typer.Option("--out", help="Write here instead of stdout.")
    ] = None,
) -> None:
    """Print (or write) the gateway's OpenAPI document, as committed in openapi/openapi.json."""
    from gateway.openapi import render_openapi

    text = render_openapi()
    if out_path is None:
        out.print(text, end="", markup=False, highlight=False)
        return
    out_path.parent.mkdir(parents=True, exist_ok=True)
    out_path.write_text(text, encoding="utf-8")
    console.print(f"[green]wrote[/green] {out_path}")
