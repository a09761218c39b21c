"""``askonce sources …`` and ``askonce sync NAME``: register sources, run and inspect syncs.

Other tools script these names, so they are a contract:

* ``askonce sources add NAME --kind fhir|history|bulk|ndjson|hl7v2|portal --url URL_OR_PATH
  [--auth ...] [--schedule ...]``
* ``askonce sources list`` and ``askonce sources status [NAME]``
* ``askonce sources reprocess NAME [--type Patient|Encounter] [--id ID ...]``
* ``askonce sources reparse [NAME] [--force]``
* ``askonce sources update NAME [--url ...] [--auth ...] [--schedule ... | --no-schedule]
  [--types ...] [--option K=V ...] [--unset-option K ...] [--trust-rank N] [--rename NEW]``
* ``askonce sources disable NAME`` / ``askonce sources enable NAME``
* ``askonce sources remove NAME [--yes]``
* ``askonce sync NAME [--full]``
* ``askonce mllp [--source NAME ...]``: the MLLP listener of the ``hl7v2`` sources
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    Progress,
    ProgressColumn,
    SpinnerColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from askonce.logging import configure_logging
from askonce.runtime import Runtime, build_runtime, match_settings
from askonce.settings import get_settings
from askonce.sources import (
    DEFAULT_TRUST_RANK,
    add_source,
    parse_auth,
    parse_option,
    record_counts,
)
from connectors import PUSH_ONLY_KINDS, TransientError
from connectors.config import HL7V2_KIND, push_arrival
from store import NotFoundError, SchemaNotAtHeadError, SourceRepository, SyncRunRepository
from store.models import Source as SourceRow
from store.models import SourceRecord, SyncRun
from sync import (
    DatabaseUnavailableError,
    IngestResult,
    ReprocessError,
    SourceChange,
    SourceSettingsError,
    TaskContext,
    catchup,
    check_source,
    refresh_goldens,
    removal_plan,
    remove_source,
    reprocess_quarantined,
    run_source,
    start_or_resume,
    update_source,
)
from sync.feed import Feed, feeds
from sync.hl7intake import Hl7v2ConfigError
from sync.mllp_listener import MllpService, listen_until_signalled, listeners
from sync.reparse import PARSE_OPTIONS, is_stale, reparse_source
from sync.scheduling import InvalidScheduleError
from sync.subscriptions import Managed
from sync.subscriptions import managed as managed_subscriptions

sources_app = typer.Typer(
    help="Register the EHRs askonce pulls from, and see how their syncs went.",
    no_args_is_help=True,
)
console = Console(stderr=True, soft_wrap=True)

#: How many quarantined records ``sources status`` lists per source.
QUARANTINE_LISTED = 10
#: How often ``askonce sync`` polls a run that a worker is doing.
POLL_INTERVAL_S = 0.5


class RateColumn(ProgressColumn):
    """Resources per second since the progress started."""

    def render(self, task: Task) -> Text:
        elapsed = task.elapsed or 0.0
        rate = task.completed / elapsed if elapsed > 0 else 0.0
        return Text(f"{rate:,.0f} resources/s", style="cyan")


@contextmanager
def _counting(label: str) -> Iterator[Callable[[int], None]]:
    """A spinner with a count of what is done so far (no total): the yielded function
    sets the count."""
    with Progress(
        SpinnerColumn(),
        TextColumn(f"[bold]{label}"),
        TextColumn("{task.completed:,.0f}"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(label, total=None)
        yield lambda done: progress.update(task, completed=done)


def _progress() -> Progress:
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed:,.0f} resources"),
        RateColumn(),
        TextColumn("[yellow]{task.fields[quarantined]} quarantined"),
        TimeElapsedColumn(),
        console=console,
    )


def sync_with_progress(runtime: Runtime, source_id: int, name: str, *, full: bool) -> SyncRun:
    """Run one source in the foreground with a progress bar; returns the finished run."""
    with _progress() as progress:
        task = progress.add_task(name, total=None, quarantined=0)
        if runtime.settings.embedded:
            quarantined = 0

            def on_page(_run: SyncRun, page: IngestResult) -> None:
                nonlocal quarantined
                quarantined += page.quarantined
                progress.update(task, advance=page.resources, quarantined=quarantined)

            chunk = run_source(
                TaskContext(engine=runtime.engine, session_factory=runtime.session_factory),
                source_id,
                full=full,
                max_pages=None,
                on_page=on_page,
                default_region=runtime.settings.default_region,
            )
            run_id = chunk.run_id
        else:
            run_id = _dispatch_and_follow(runtime, source_id, full, progress, task)
    with runtime.session_factory() as session:
        run = session.get(SyncRun, run_id)
        assert run is not None
        return run


def _dispatch_and_follow(
    runtime: Runtime, source_id: int, full: bool, progress: Progress, task: Any
) -> int:
    """Services mode: hand the run to the workers and follow it in ``sync_run``."""
    from sync.tasks import run_source as run_source_task

    with runtime.unit_of_work() as session:
        run, token = start_or_resume(session, source_id, full=full)
        run_id = run.id
    run_source_task.apply_async(
        kwargs={"source_id": source_id, "run_id": run_id, "token": token},
        queue=runtime.settings.task_queue,
    )
    while True:
        with runtime.session_factory() as session:
            current = session.get(SyncRun, run_id)
            assert current is not None
            progress.update(task, completed=current.resources, quarantined=current.quarantined)
            if current.status != "running":
                return run_id
        time.sleep(POLL_INTERVAL_S)


def print_run_summary(run: SyncRun, name: str) -> None:
    """The summary printed after ``askonce sync``."""
    colour = {"ok": "green", "failed": "red"}.get(run.status, "yellow")
    elapsed = (
        (run.finished_at - run.started_at).total_seconds() if run.finished_at else float("nan")
    )
    console.print(
        f"[{colour}]{name}: {run.status}[/{colour}]  pages {run.pages:,}  "
        f"resources {run.resources:,}  unchanged {run.skipped:,}  "
        f"quarantined {run.quarantined:,}  errors {run.errors:,}  in {elapsed:.1f}s"
    )
    error = (run.detail or {}).get("last_error")
    if error:
        console.print(
            f"  last error: {error.get('type')} {error.get('status_code') or ''} "
            f"{error.get('url') or ''}".rstrip()
        )


def _runtime() -> Runtime:
    """Wire the process, or exit with the command that fixes a stale schema."""
    settings = get_settings()
    configure_logging(settings.log_level, json_lines=settings.log_json)
    try:
        return build_runtime(settings)
    except SchemaNotAtHeadError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc


@sources_app.command("add")
def sources_add(
    name: Annotated[str, typer.Argument(help="A unique name for the source.")],
    kind: Annotated[str, typer.Option(help="fhir | history | bulk | ndjson | hl7v2 | portal")],
    url: Annotated[
        str,
        typer.Option(
            help="FHIR base URL, a folder of <Type>.ndjson files, mllp://HOST:PORT (hl7v2), "
            "or the portal's address (portal; with --option client_id=<its consumer>)."
        ),
    ],
    auth: Annotated[
        str | None,
        typer.Option(help="none | bearer:TOKEN | basic:USER:PASS | JSON object | @file.json"),
    ] = None,
    schedule: Annotated[
        str | None, typer.Option(help="Seconds, 15m/2h/1d, or a 5-field cron expression.")
    ] = None,
    types: Annotated[
        str, typer.Option(help="Resource types to sync, comma-separated.")
    ] = "Patient,Encounter",
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="Connector or pipeline option KEY=VALUE (repeatable)."),
    ] = None,
    trust_rank: Annotated[int, typer.Option(help="Survivorship rank; higher wins.")] = (
        DEFAULT_TRUST_RANK
    ),
) -> None:
    """Register a source."""
    runtime = _runtime()
    try:
        config = dict(parse_option(item) for item in option or [])
        source_id = add_source(
            runtime,
            name,
            kind=kind,
            url=url,
            auth=parse_auth(auth),
            schedule=schedule,
            resource_types=[t.strip() for t in types.split(",") if t.strip()],
            config=config,
            trust_rank=trust_rank,
        )
    except (ValueError, TypeError, InvalidScheduleError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    except IntegrityError as exc:
        console.print(f"[red]error:[/red] a source named {name!r} already exists")
        raise typer.Exit(code=2) from exc
    console.print(f"[green]source {name} added[/green] (id {source_id})")


@sources_app.command("list")
def sources_list() -> None:
    """List the sources with their last run."""
    runtime = _runtime()
    table = Table("name", "kind", "url", "schedule", "enabled", "last run", "status")
    with runtime.session_factory() as session:
        fed = feeds(session)
        for source in SourceRepository(session).list():
            run = SyncRunRepository(session).latest(source.id)
            last, status = "never", "-"
            if run is not None:
                last, status = run.started_at.isoformat(timespec="seconds"), run.status
            elif source.kind == HL7V2_KIND:  # a feed has no runs: its last message
                at = fed[source.id].last_message_at if source.id in fed else None
                last = f"message {at.isoformat(timespec='seconds')}" if at else "no message"
            table.add_row(
                source.name,
                source.kind,
                source.base_url,
                source.schedule or "-",
                "removing" if source.removing_since else "yes" if source.enabled else "no",
                last,
                status,
            )
    Console(soft_wrap=True).print(table)


@sources_app.command("status")
def sources_status(
    name: Annotated[str | None, typer.Argument(help="One source; all when omitted.")] = None,
) -> None:
    """Each source's last run, record counts and quarantined records."""
    runtime = _runtime()
    out = Console(soft_wrap=True)
    with runtime.session_factory() as session:
        sources = [_source_named(session, name)] if name else list(SourceRepository(session).list())
        for source in sources:
            run = SyncRunRepository(session).latest(source.id)
            counts = record_counts(session, source.id)
            out.print(f"[bold]{source.name}[/bold] ({source.kind} {source.base_url})")
            if source.kind == HL7V2_KIND:
                out.print("  " + describe_feed(feeds(session, source.id).get(source.id)))
            if run is not None:
                started = run.started_at.isoformat(timespec="seconds")
                out.print(
                    f"  last run: {run.status}, started {started}"
                    f", pages {run.pages}, resources {run.resources}, unchanged {run.skipped}, "
                    f"quarantined {run.quarantined}, errors {run.errors}"
                )
            elif source.kind != HL7V2_KIND:  # a feed has no runs to speak of
                out.print("  last run: never")
            owed = catchup.owed_since(session, source.id)
            if owed is not None:
                out.print(
                    f"  [yellow]catch-up owed[/yellow] since {owed.isoformat(timespec='seconds')}"
                    ": its push notifications skipped events, and no sync has read them since"
                    " (the next scheduler tick starts one)"
                )
            out.print(
                "  records: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
            )
            if is_stale(source, runtime.settings.default_region):
                through = (source.parsed_with or {}).get("through")
                out.print(
                    "  [yellow]stored patients being read again[/yellow] with this version and"
                    " the source's options"
                    + (f" (through source record {through})" if through else "")
                    + ": the scheduler reads a slice per tick; `askonce sources reparse`"
                    " finishes it now"
                )
            pushing = managed_subscriptions(session, source.id)
            if pushing:
                out.print("  subscriptions on the EHR:")
                print_subscriptions(out, pushing)
            _print_quarantine(out, session, source.id)


def describe_feed(feed: Feed | None) -> str:
    """One line on an HL7 v2 feed: its last message and how its messages were answered."""
    if feed is None or feed.last_message_at is None:
        return "feed: no message received yet"
    at = feed.last_message_at.isoformat(timespec="seconds")
    return (
        f"feed: last message {at}, {feed.messages} messages (accepted {feed.accepted}, "
        f"quarantined {feed.quarantined}, rejected {feed.rejected})"
    )


def print_subscriptions(out: Console, items: list[Managed]) -> None:
    """A table of the Subscriptions askonce created (or watches) on one source's EHR."""
    table = Table("subscription", "topic or criteria", "content", "status", "checked", "heard")
    for item in items:
        status = item.status or "-"
        colour = "green" if status in ("active", "requested") else "red"
        table.add_row(
            item.id,
            (item.what or "-") + (" (made elsewhere, watched)" if item.adopted else ""),
            item.content or "-",
            f"[{colour}]{status}[/{colour}]" + (f" ({item.error})" if item.error else ""),
            item.checked_at.isoformat(timespec="seconds") if item.checked_at else "never",
            item.heard_at.isoformat(timespec="seconds") if item.heard_at else "never",
        )
    out.print(table)


#: How each finding's level reads in the terminal.
_LEVEL_MARKS = {
    "ok": "[green]ok[/green]",
    "warning": "[yellow]warning[/yellow]",
    "error": "[red]error[/red]",
}


@sources_app.command("check")
def sources_check(
    name: Annotated[str, typer.Argument(help="The source to check.")],
) -> None:
    """Check a source before (or after) syncing it: its server or folder, the credentials,
    the FHIR version, and each resource type as its kind reads it (search by _lastUpdated,
    _history, $export, NDJSON files), with how many resources the first sync will read.
    Exit 1 when something would stop a sync."""
    runtime = _runtime()
    with runtime.session_factory() as session:
        source = _source_named(session, name)
        session.expunge(source)
    report = check_source(source)
    table = Table("", "checked", "finding")
    for finding in report.findings:
        table.add_row(_LEVEL_MARKS[finding.level], finding.subject, finding.message)
    out = Console(soft_wrap=True)
    out.print(f"[bold]{name}[/bold] ({source.kind} {source.base_url})")
    out.print(table)
    if not report.ok:
        out.print(f"[red]{name}: a sync would fail[/red]; fix the errors above first")
        raise typer.Exit(code=1)


@sources_app.command("reprocess")
def sources_reprocess(
    name: Annotated[str, typer.Argument(help="The source whose quarantined records to retry.")],
    resource_type: Annotated[
        str | None, typer.Option("--type", help="Only Patient or only Encounter records.")
    ] = None,
    record_ids: Annotated[
        list[int] | None,
        typer.Option("--id", help="Only this quarantined source record (repeatable)."),
    ] = None,
) -> None:
    """Run the source's quarantined records through the pipeline again, after the cause was
    fixed on this side (a source option, a setting, an upgrade); still invalid ones stay."""
    runtime = _runtime()
    with runtime.session_factory() as session:
        source_id = _source_named(session, name).id
    try:
        result = reprocess_quarantined(
            runtime.session_factory,
            source_id,
            resource_type=resource_type,
            record_ids=record_ids or None,
        )
    except ReprocessError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    done = result.ingest
    colour = "green" if not done.quarantined else "yellow"
    console.print(
        f"[{colour}]{name}: reprocessed {result.reprocessed:,}[/{colour}]  "
        f"stored {done.stored:,}  still quarantined {done.quarantined:,}  "
        f"encounters attached {done.attached:,}  golden records created "
        f"{done.golden_created:,}  review items {done.review_items:,}"
    )


@sources_app.command("reparse")
def sources_reparse(
    name: Annotated[str | None, typer.Argument(help="One source; all when omitted.")] = None,
    force: Annotated[
        bool,
        typer.Option("--force", help="Read them again even where they were read as now."),
    ] = False,
) -> None:
    """Read the stored Patients again with this version's mapping and each source's
    options, where they were read otherwise (an upgrade, a new mrn_system or
    default_region): changed records and their golden records are written again. The
    scheduler does this a slice per tick by itself; this finishes it now."""
    runtime = _runtime()
    with runtime.session_factory() as session:
        sources = [_source_named(session, name)] if name else list(SourceRepository(session).list())
        region = runtime.settings.default_region
        todo = [
            (s.id, s.name)
            for s in sources
            if s.removing_since is None and (force or is_stale(s, region))
        ]
        if force:
            for source in sources:
                source.parsed_with = None
            session.commit()
    if not todo:
        console.print(
            "nothing to read again: every stored Patient is read as this version reads it"
        )
        return
    for source_id, source_name in todo:
        _reread(runtime, source_id, source_name)


def _reread(runtime: Runtime, source_id: int, name: str) -> None:
    """Read the source's stored Patients again to the end, with progress, then say what
    changed."""
    with _counting(f"{name}: stored patients read again") as count:
        result = reparse_source(
            runtime.session_factory,
            source_id,
            default_region=runtime.settings.default_region,
            on_batch=lambda done: count(done.examined),
        )
    colour = "yellow" if result.failed else "green"
    console.print(
        f"[{colour}]{name}: read again {result.examined:,}[/{colour}]  "
        f"unchanged {result.unchanged:,}  refreshed {result.refreshed:,}  "
        f"matched again {result.rematched:,}  golden records updated "
        f"{result.goldens_updated:,}  created {result.golden_created:,}  "
        f"review items {result.review_items:,}"
    )
    if result.failed:
        ids = ", ".join(str(i) for i in result.failed_ids[:20])
        more = f" and {result.failed - 20:,} more" if result.failed > 20 else ""
        console.print(
            f"  [yellow]{result.failed:,} no longer valid[/yellow] as this version reads them,"
            f" kept as they were: source records {ids}{more}"
        )


def _source_named(session: Session, name: str) -> SourceRow:
    """The source called ``name``, or exit 2 saying there is none."""
    try:
        return SourceRepository(session).get_by_name(name)
    except NotFoundError as exc:
        console.print(f"[red]error:[/red] no source named {name!r}")
        raise typer.Exit(code=2) from exc


@sources_app.command("update")
def sources_update(
    name: Annotated[str, typer.Argument(help="The source to change.")],
    url: Annotated[
        str | None,
        typer.Option(help="A new base URL or folder (its cursors are cleared: read again)."),
    ] = None,
    auth: Annotated[
        str | None,
        typer.Option(help="New credentials: none | bearer:TOKEN | basic:USER:PASS | JSON | @file"),
    ] = None,
    schedule: Annotated[
        str | None, typer.Option(help="A new schedule: seconds, 15m/2h/1d, or cron.")
    ] = None,
    no_schedule: Annotated[
        bool, typer.Option("--no-schedule", help="Remove the schedule (on demand or push only).")
    ] = False,
    types: Annotated[
        str | None, typer.Option(help="Resource types to sync, comma-separated.")
    ] = None,
    option: Annotated[
        list[str] | None,
        typer.Option("--option", help="Set a connector or pipeline option KEY=VALUE."),
    ] = None,
    unset_option: Annotated[
        list[str] | None, typer.Option("--unset-option", help="Remove an option (repeatable).")
    ] = None,
    trust_rank: Annotated[
        int | None,
        typer.Option(help="A new survivorship rank; its golden records are rendered again."),
    ] = None,
    rename: Annotated[str | None, typer.Option(help="A new name for the source.")] = None,
) -> None:
    """Change a registered source. A new URL clears its cursors (the next sync reads
    everything again, skipping what is unchanged); a new trust rank or patient_confirmed
    flag renders its golden records again. The rest applies from the next page on."""
    if schedule is not None and no_schedule:
        console.print("[red]error:[/red] --schedule and --no-schedule contradict each other")
        raise typer.Exit(code=2)
    try:
        change = SourceChange(
            name=rename,
            url=url,
            auth=parse_auth(auth) if auth is not None else None,
            resource_types=(
                [t.strip() for t in types.split(",") if t.strip()] if types is not None else None
            ),
            options=dict(parse_option(item) for item in option or []),
            unset_options=tuple(unset_option or ()),
            trust_rank=trust_rank,
        )
    except (ValueError, OSError) as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(code=2) from exc
    if schedule is not None or no_schedule:
        change.schedule = schedule
    _change_source(_runtime(), name, change)


@sources_app.command("disable")
def sources_disable(name: Annotated[str, typer.Argument(help="The source to pause.")]) -> None:
    """Pause a source: its running sync stops after the page in flight, and no schedule,
    push notification, MLLP message or ``askonce sync`` is taken until it is enabled."""
    _change_source(_runtime(), name, SourceChange(enabled=False))


@sources_app.command("enable")
def sources_enable(name: Annotated[str, typer.Argument(help="The source to resume.")]) -> None:
    """Resume a disabled source (its next sync goes on from its cursors)."""
    _change_source(_runtime(), name, SourceChange(enabled=True))


def _change_source(runtime: Runtime, name: str, change: SourceChange) -> None:
    with runtime.unit_of_work() as session:
        source_id = _source_named(session, name).id
        try:
            update = update_source(session, source_id, change)
        except SourceSettingsError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(code=2) from exc
    shown = change.name or name
    if not update.changed:
        console.print(f"{shown}: nothing to change")
        return
    console.print(f"[green]{shown}: changed {', '.join(update.changed)}[/green]")
    if update.stopped_run is not None:
        console.print(f"  run {update.stopped_run} stopped after its last committed page")
    if update.cursors_cleared:
        console.print("  cursors cleared: the next sync reads every type from the start")
    if (set(change.options) | set(change.unset_options)) & set(PARSE_OPTIONS):
        _reread(runtime, source_id, shown)
    if update.survivorship_changed:
        with _counting("golden records rendered again") as count:
            refreshed = refresh_goldens(
                runtime.session_factory,
                source_id,
                settings=match_settings(runtime.settings),
                on_batch=lambda done: count(done.examined),
            )
        console.print(
            f"  golden records: {refreshed.examined:,} rendered again, "
            f"{refreshed.rewritten:,} changed (new version and patient.updated event)"
        )


@sources_app.command("remove")
def sources_remove(
    name: Annotated[str, typer.Argument(help="The source to remove.")],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Remove a source: its records leave the golden records (which are rebuilt from the
    other sources, with events for consumers), then the source and its records are
    erased. An interrupted removal is finished by running it again."""
    runtime = _runtime()
    with runtime.session_factory() as session:
        source_id = _source_named(session, name).id
        plan = removal_plan(session, source_id)
    live = sum(plan.records.values())
    counts = ", ".join(f"{n:,} {rtype}" for rtype, n in sorted(plan.records.items())) or "none"
    console.print(
        f"{name}: live records {counts}; {plan.golden_records:,} golden records are "
        "rebuilt from the other sources (those fed by this source alone become deleted)"
    )
    if not yes and not typer.confirm(f"Remove {name} and erase its records?", default=False):
        console.print("nothing removed")
        raise typer.Exit(code=1)
    with Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        TextColumn("{task.completed:,.0f} of {task.total:,.0f} records"),
        TimeElapsedColumn(),
        console=console,
    ) as progress:
        task = progress.add_task(f"removing {name}", total=live)
        result = remove_source(
            runtime.session_factory,
            source_id,
            on_batch=lambda done: progress.update(task, completed=sum(done.deleted.values())),
        )
    deleted = ", ".join(f"{n:,} {rtype}" for rtype, n in sorted(result.deleted.items()))
    console.print(
        f"[green]{name} removed[/green]: deleted from the golden records {deleted or 'none'}; "
        f"{result.erased:,} source records erased"
    )


def _print_quarantine(out: Console, session: Any, source_id: int) -> None:
    rows = session.scalars(
        select(SourceRecord)
        .where(SourceRecord.source_id == source_id, SourceRecord.status == "quarantined")
        .order_by(SourceRecord.updated_at.desc())
        .limit(QUARANTINE_LISTED)
    ).all()
    if not rows:
        return
    table = Table("quarantined", "path", "reason", box=None, padding=(0, 2))
    for row in rows:
        issues = (row.error or {}).get("issues") or [{}]
        table.add_row(
            f"{row.resource_type}/{row.resource_id}",
            str(issues[0].get("path", "")),
            str(issues[0].get("reason", "")),
        )
    out.print(table)


def sync_command(
    name: Annotated[str, typer.Argument(help="The source to sync.")],
    full: Annotated[
        bool, typer.Option("--full", help="Ignore the cursors and read everything again.")
    ] = False,
) -> None:
    """Sync one source now, in the foreground, with progress; then print a summary."""
    runtime = _runtime()
    with runtime.session_factory() as session:
        source = _source_named(session, name)
        source_id, kind, enabled = source.id, source.kind, source.enabled
    if not enabled:
        console.print(f"[red]error:[/red] {name} is disabled (askonce sources enable {name})")
        raise typer.Exit(code=2)
    if kind in PUSH_ONLY_KINDS:
        console.print(
            f"[red]error:[/red] {name} is a {kind} source: nothing is pulled from it,"
            f" {push_arrival(kind)}"
        )
        raise typer.Exit(code=2)
    broker_check = runtime.broker_check()  # None when embedded
    if broker_check is not None:
        # Before a run is started that no worker could be handed (the askonce command
        # says that the broker is unavailable, and where it was looked for).
        broker_check()
    try:
        run = sync_with_progress(runtime, source_id, name, full=full)
    except TransientError as exc:
        console.print(
            f"[red]{name}: source unavailable[/red] ({type(exc).__name__}"
            f"{' ' + str(exc.status_code) if exc.status_code else ''}); "
            "the next sync resumes from the last committed page"
        )
        raise typer.Exit(code=1) from exc
    except DatabaseUnavailableError as exc:
        console.print(
            f"[red]{name}: database unavailable[/red] ({type(exc.__cause__).__name__});"
            " the next sync resumes from the last committed page"
        )
        raise typer.Exit(code=1) from exc
    print_run_summary(run, name)
    if run.status != "ok":
        raise typer.Exit(code=1)


def mllp_command(
    source: Annotated[
        list[str] | None,
        typer.Option("--source", help="Only this hl7v2 source (repeatable; default: all)."),
    ] = None,
) -> None:
    """Receive HL7 v2 ADT messages over MLLP: listen on the port of every enabled hl7v2
    source, ingest each message and acknowledge it once it is committed. The sources are
    read again every ASKONCE_MLLP_REFRESH_S and on SIGHUP (new, disabled, moved sources;
    replaced certificate files). Ctrl+C or SIGTERM stops, once the messages being taken
    in are acknowledged; a second one at once."""
    runtime = _runtime()
    with runtime.session_factory() as session:
        try:
            targets = listeners(session, source or ())
        except Hl7v2ConfigError as exc:
            console.print(f"[red]error:[/red] {exc}")
            raise typer.Exit(code=2) from exc
    if not targets:
        console.print(
            "[red]error:[/red] no enabled hl7v2 source"
            + (f" named {', '.join(source)}" if source else "")
            + " (askonce sources add NAME --kind hl7v2 --url mllp://0.0.0.0:2575)"
        )
        raise typer.Exit(code=2)
    for target in targets:
        console.print(f"{target.name}: listening on {target.describe()}")

    def announce(name: str, what: str) -> None:
        console.print(f"{name}: {what}")

    service = MllpService(
        runtime.session_factory,
        default_region=runtime.settings.default_region,
        names=source or (),
        announce=announce,
    )
    try:
        cut = asyncio.run(
            listen_until_signalled(service, targets, refresh_s=runtime.settings.mllp_refresh_s)
        )
    except KeyboardInterrupt:  # before the listener's own handlers were in place
        cut = 0
    except OSError as exc:  # the port is taken, or not ours to bind
        console.print(f"[red]error:[/red] cannot listen: {exc.strerror or exc}")
        raise typer.Exit(code=1) from exc
    if cut:
        console.print(f"stopped ({cut} message(s) not acknowledged: their senders send them again)")
    else:
        console.print("stopped")
