"""The ``askonce`` command line."""

from __future__ import annotations

import errno
import logging
import socket
import sys
import time
import uuid
from collections.abc import Sequence
from contextlib import nullcontext
from typing import Annotated, Any

import typer
import uvicorn
from pydantic import ValidationError
from rich.console import Console
from sqlalchemy import make_url, text

from askonce import cli_subscriptions  # noqa: F401 - registers sources subscribe/unsubscribe
from askonce.cli_consumers import consumers_app, openapi_command
from askonce.cli_match import links_app, match_app
from askonce.cli_sources import mllp_command, sources_app, sync_command
from askonce.logging import configure_logging
from askonce.runtime import Runtime, build_runtime, unreachable_broker
from askonce.settings import ENV_PREFIX, PlaceholderSecretError, Settings, get_settings
from store import SchemaNotAtHeadError
from store import migrate as migrations
from store.errors import unreachable_database
from sync.delivery import DeliveryReport
from sync.mllp_listener import probe
from sync.retention import prune as prune_events

app = typer.Typer(
    name="askonce",
    help="askonce: one golden Patient record per real person, from every connected EHR.",
    no_args_is_help=True,
    rich_markup_mode="rich",
)
db_app = typer.Typer(help="Manage the database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(match_app, name="match")
app.add_typer(links_app, name="links")
app.add_typer(consumers_app, name="consumers")
app.command("openapi")(openapi_command)
app.add_typer(sources_app, name="sources")
app.command("sync")(sync_command)
app.command("mllp")(mllp_command)

console = Console(stderr=True, soft_wrap=True)
log = logging.getLogger("askonce.cli")
#: ``askonce prune`` runs until everything past its retention is gone (a day at most).
PRUNE_UNBOUNDED_S = 86_400.0


def _settings() -> Settings:
    settings = get_settings()
    # JSON lines for log collectors; on a terminal, unless asked for, readable lines.
    json_lines = settings.log_json
    if "log_json" not in settings.model_fields_set and sys.stderr.isatty():
        json_lines = False
    configure_logging(settings.log_level, json_lines=json_lines)
    return settings


def _runtime(settings: Settings) -> Runtime:
    """Wire the process, or exit with the command that fixes a stale schema."""
    try:
        return build_runtime(settings)
    except SchemaNotAtHeadError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc


@db_app.command("upgrade")
def db_upgrade(
    revision: Annotated[str, typer.Argument(help="Target revision.")] = "head",
) -> None:
    """Migrate the database schema up to REVISION (default: the newest)."""
    settings = _settings()
    migrations.upgrade(settings.database_url, revision)
    console.print(f"[green]database at {revision}[/green]")


@db_app.command("downgrade")
def db_downgrade(
    revision: Annotated[str, typer.Argument(help="Target revision; 'base' drops everything.")],
) -> None:
    """Migrate the database schema down to REVISION."""
    settings = _settings()
    migrations.downgrade(settings.database_url, revision)
    console.print(f"[yellow]database at {revision}[/yellow]")


@db_app.command("current")
def db_current() -> None:
    """Show the schema revision of the database and the one this code expects."""
    settings = _settings()
    from store import make_engine

    engine = make_engine(settings.database_url)
    current = migrations.current_revision(engine)
    console.print(f"current: {current or '(empty)'}   head: {migrations.head_revision()}")


def _require_free_port(host: str, port: int) -> None:
    """Exit at once, saying so, when ``host:port`` cannot be listened on (another server
    holds it): before anything is done that the server was for, and before uvicorn's own
    error, a log line among log lines, once everything is done."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
            probe.bind(address)
    except OSError as exc:  # an unknown host name too (socket.gaierror)
        why = str(exc.strerror or exc)
        if exc.errno == errno.EADDRINUSE:
            why += " (another askonce serve or demo?); free it, or use --port"
        console.print(f"[red]error:[/red] cannot listen on {host}:{port}: {why.lower()}")
        raise typer.Exit(code=1) from exc


def _serve(settings: Settings, host: str | None, port: int | None, workers: int = 1) -> None:
    try:
        settings.require_real_secrets()
    except PlaceholderSecretError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    runtime = _runtime(settings)
    host, port = host or settings.host, port or settings.port
    _require_free_port(host, port)
    # Access logs carry query strings (search parameters are patient data): off.
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "access_log": False,
        "log_config": None,
    }
    # Embedded mode has no beat: this process delivers the change events itself.
    delivering = runtime.delivery_loop() if settings.embedded else nullcontext()
    # ... and it syncs the sources whose schedule is due.
    scheduling = runtime.schedule_loop() if settings.embedded else nullcontext()
    with delivering, scheduling:
        if workers > 1:
            # Each worker process builds its own app from the environment.
            uvicorn.run("askonce.asgi:create_app", factory=True, workers=workers, **options)
        else:
            uvicorn.run(runtime.create_app(), **options)


@app.command()
def deliver(
    watch: Annotated[
        bool, typer.Option("--watch", help="Keep delivering every ASKONCE_DELIVERY_INTERVAL_S.")
    ] = False,
) -> None:
    """Send the change events to Subscriptions and webhooks now (until nothing is due), and
    print what was sent."""
    settings = _settings()
    runtime = _runtime(settings)
    total = DeliveryReport()
    while True:
        report = runtime.deliver()
        if watch:
            if report.busy:
                console.print(_delivered(report))
            time.sleep(settings.delivery_interval_s)
            continue
        total.add(report)
        if not report.busy:
            break
    console.print(_delivered(total))


def _delivered(report: DeliveryReport) -> str:
    return (
        f"events handed out {report.events_fanned_out}, notifications {report.notifications} "
        f"({report.events_delivered} events, {report.handshakes} handshakes, "
        f"{report.heartbeats} heartbeats), failed sends {report.failures}"
    )


@app.command()
def prune(
    outbox_days: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="Keep delivered change events this many days (ASKONCE_OUTBOX_RETENTION_DAYS).",
        ),
    ] = None,
    run_days: Annotated[
        int | None,
        typer.Option(
            min=0, help="Keep finished sync runs this many days (ASKONCE_RUN_RETENTION_DAYS)."
        ),
    ] = None,
) -> None:
    """Delete the change events every subscription has received, and the sync runs, that
    are past their retention; print what was deleted and which subscriptions hold older
    events back."""
    settings = _settings()
    runtime = _runtime(settings)
    report = prune_events(
        runtime.session_factory,
        outbox_days=settings.outbox_retention_days if outbox_days is None else outbox_days,
        run_days=settings.run_retention_days if run_days is None else run_days,
        max_seconds=PRUNE_UNBOUNDED_S,
    )
    console.print(
        f"change events deleted {report.outbox_events} (queue rows {report.queue_rows}), "
        f"sync runs deleted {report.sync_runs}"
    )
    if report.held_by:
        console.print(
            "[yellow]kept:[/yellow] older events still unacknowledged by subscription(s) "
            + ", ".join(report.held_by)
            + " (see GET /admin/subscriptions)"
        )


@app.command()
def serve(
    host: Annotated[
        str | None, typer.Option(help="Interface to bind (default from settings).")
    ] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind (default from settings).")] = None,
    workers: Annotated[
        int | None, typer.Option(min=1, help="Server processes (default ASKONCE_SERVE_WORKERS).")
    ] = None,
) -> None:
    """Serve the FHIR API, the admin API, the health probes and the metrics."""
    settings = _settings()
    _serve(settings, host, port, workers or settings.serve_workers)


@app.command()
def worker(
    concurrency: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Run a Celery worker that consumes the sync tasks from Redis."""
    settings = _settings()
    if settings.embedded:
        console.print(
            "[red]error:[/red] ASKONCE_REDIS_URL is not set; embedded mode runs tasks "
            "in-process and needs no worker."
        )
        raise typer.Exit(code=2)
    runtime = _runtime(settings)
    runtime.celery.worker_main(
        [
            "worker",
            f"--loglevel={settings.log_level}",
            f"--queues={settings.task_queue}",
            f"--concurrency={concurrency or settings.worker_concurrency}",
            "--without-gossip",
            "--without-mingle",
        ]
    )


@app.command()
def beat() -> None:
    """Run the scheduler: each source's sync on its schedule, the delivery of change events
    every ASKONCE_DELIVERY_INTERVAL_S, the retention's prune every ASKONCE_PRUNE_INTERVAL_S."""
    settings = _settings()
    if settings.embedded:
        console.print("[red]error:[/red] ASKONCE_REDIS_URL is not set; beat needs the broker.")
        raise typer.Exit(code=2)
    runtime = _runtime(settings)
    runtime.celery.start(["beat", f"--loglevel={settings.log_level}"])


@app.command()
def demo(
    host: Annotated[str | None, typer.Option(help="Interface to bind.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to bind.")] = None,
) -> None:
    """Create the embedded database, load and sync 3 demo EHRs, then serve on :8000."""
    from askonce.demo import (
        demo_credentials,
        print_demo_access,
        register_demo_portal,
        run_demo_sync,
        store_demo_form,
    )

    settings = _settings().model_copy(update={"demo": True})
    # A demo already serving keeps its port and its credentials (a second one would
    # rotate them, then fail to serve).
    _require_free_port(host or settings.host, port or settings.port)
    migrations.upgrade(settings.database_url)
    console.print(f"[green]database ready[/green] ({settings.database_url})")
    runtime = _runtime(settings)
    run_demo_sync(runtime, console)
    base_url = f"http://{host or settings.host}:{port or settings.port}"
    credentials = demo_credentials(runtime)
    register_demo_portal(runtime, credentials.client_id)
    store_demo_form(runtime)
    print_demo_access(console, credentials, base_url)
    console.print(f"serving on {base_url} (Ctrl+C stops)")
    _serve(settings, host, port)


@app.command()
def check(
    worker: Annotated[
        bool, typer.Option("--worker", help="Also round-trip a task through a worker.")
    ] = False,
    mllp: Annotated[
        bool,
        typer.Option(
            "--mllp",
            help="Also connect to the port of every enabled hl7v2 source (askonce mllp's "
            "healthcheck, run beside it).",
        ),
    ] = False,
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="With --mllp: only this hl7v2 source (repeatable)."),
    ] = None,
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the worker, or for a port.")
    ] = 10.0,
) -> None:
    """Check the database, the schema and the broker (a container healthcheck); exit 1 if not ok."""
    settings = _settings()
    try:
        runtime = _runtime(settings)
        broker_check = runtime.broker_check()
        with runtime.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        if broker_check is not None:
            broker_check()
        if worker and not settings.embedded:
            from sync.tasks import ping

            token = uuid.uuid4().hex
            reply = ping.apply_async(args=[token]).get(timeout=timeout)
            if reply.get("token") != token:
                raise RuntimeError("worker answered with the wrong token")
        if mllp:
            _check_ports(runtime, source or (), timeout)
    except typer.Exit:
        raise
    except Exception as exc:
        found = unreachable(exc)
        if found is not None:
            said = f"the {found[0]} is unavailable ({found[1]})"
        elif isinstance(exc, PortsNotListeningError):
            said = str(exc)
        else:  # a worker's error may quote what it carried: its class only
            said = type(exc).__name__
        console.print(f"[red]not ok:[/red] {said}")
        raise typer.Exit(code=1) from exc
    console.print("[green]ok[/green]")


class PortsNotListeningError(RuntimeError):
    """``askonce check --mllp``: some hl7v2 source's port accepts no connection."""


def _check_ports(runtime: Runtime, names: Sequence[str], timeout: float) -> None:
    with runtime.session_factory() as session:
        found = probe(session, names, timeout_s=timeout)
    for port in found:
        if port.trouble is None:
            console.print(f"{port.name}: listening ({port.address})")
        else:
            trouble = f"on {port.address} ({port.trouble})"
            console.print(f"{port.name}: [red]not listening[/red] {trouble}")
    missing = sorted(set(names) - {port.name for port in found})
    if missing:
        console.print(f"no enabled hl7v2 source named {', '.join(missing)}")
    elif not found:
        console.print("no enabled hl7v2 source: no port to check")
    down = len(missing) + sum(1 for port in found if port.trouble)
    if down:
        raise PortsNotListeningError(f"{down} hl7v2 source(s) not listening")


#: What the command line needs and how it tells one cannot be reached: the service's
#: name, the function that says why (or None: that is not the trouble) and its setting.
_SERVICES = (
    ("database", unreachable_database, "database_url"),
    ("broker", unreachable_broker, "redis_url"),
)


def unreachable(exc: BaseException) -> tuple[str, str, str] | None:
    """When ``exc`` says the database or the broker cannot be reached: which, the
    driver's reason and the setting that says where it is. None for any other failure."""
    for name, why, setting in _SERVICES:
        reason = why(exc)
        if reason is not None:
            return name, reason, setting
    return None


def settings_errors(exc: ValidationError) -> list[str]:
    """The settings a :class:`Settings` validation refused, one line each: the variable
    and what is wrong with it, never its value (it may be a secret)."""
    lines = []
    for error in exc.errors(include_url=False, include_input=False):
        where = f"{ENV_PREFIX}{str(error['loc'][0]).upper()}: " if error["loc"] else ""
        lines.append(f"{where}{error['msg']}")
    return lines


def main() -> None:
    """The ``askonce`` command. A setting that is not valid, and a database or a broker
    that cannot be reached, are said in one line each (where it was looked for, too),
    not in a traceback."""
    try:
        app()
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        for line in settings_errors(exc):
            console.print(f"[red]error:[/red] {line}")
        raise SystemExit(2) from None
    except Exception as exc:
        found = unreachable(exc)
        if found is None:
            raise
        name, reason, setting = found
        url = make_url(getattr(get_settings(), setting)).render_as_string(hide_password=True)
        console.print(
            f"[red]error:[/red] the {name} is unavailable ({reason}); "
            f"{ENV_PREFIX}{setting.upper()} is {url}"
        )
        raise SystemExit(1) from None
