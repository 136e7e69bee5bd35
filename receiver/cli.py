"""The ``voicehooks`` command (also ``python -m receiver``)."""

from __future__ import annotations

import json
import sys
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from receiver import admin
from receiver.gc_tuning import freeze_startup_objects
from receiver.logging import configure as configure_logging
from receiver.settings import Settings

app = typer.Typer(
    help="Durable webhook receiver for ElevenLabs and kie.ai.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
deliveries_app = typer.Typer(
    help="Look at stored deliveries and re-queue their jobs.", no_args_is_help=True
)
app.add_typer(deliveries_app, name="deliveries")
console = Console()
err_console = Console(stderr=True)

JsonFlag = Annotated[bool, typer.Option("--json", help="Machine-readable output.")]


def fail(message: str, code: int = 1) -> typer.Exit:
    err_console.print(f"[red]error:[/red] {message}")
    return typer.Exit(code)


def print_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, default=str, ensure_ascii=False) + "\n")


def load_services(*, migrate: bool = True):  # type: ignore[no-untyped-def]
    """Services for a command that works on the store, with the store brought up to date."""
    from receiver.service import Services

    settings = Settings()
    configure_logging(settings.log_level)
    try:
        services = Services.create(settings)
        if migrate:
            services.migrate()
    except Exception as exc:
        raise fail(f"cannot open the store at {settings.database_url!r}: {exc}") from exc
    return services


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    no_worker: Annotated[
        bool, typer.Option("--no-worker", help="Receive only; run `voicehooks worker` apart.")
    ] = False,
) -> None:
    """Run the receiver (with in-process workers unless --no-worker)."""
    import uvicorn

    from receiver.app import create_app, server_options

    settings = Settings()
    configure_logging(settings.log_level)
    console.print(
        f"voicehooks listening on http://{host}:{port}  (store: {settings.database_url})",
        highlight=False,
    )
    app_ = create_app(settings, run_worker=not no_worker)
    freeze_startup_objects()
    uvicorn.run(app_, host=host, port=port, **server_options(settings))


@app.command()
def worker() -> None:
    """Run workers only (scale out: several `worker` processes on one Postgres)."""
    import asyncio

    services = load_services()
    freeze_startup_objects()
    console.print("voicehooks worker running; Ctrl-C to stop", highlight=False)
    try:
        asyncio.run(services.worker.run())
    except KeyboardInterrupt:
        pass
    finally:
        services.close()


@app.command()
def migrate() -> None:
    """Create or upgrade the database schema."""
    services = load_services(migrate=False)
    services.migrate()
    console.print("database is up to date", highlight=False)


@deliveries_app.command("list")
def deliveries_list(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    status: Annotated[
        str | None,
        typer.Option(
            help="pending, running, done, dead, stored (no handler) or invalid (not JSON)."
        ),
    ] = None,
    source: Annotated[str | None, typer.Option(help="elevenlabs or kie.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List deliveries with the state of their jobs."""
    services = load_services()
    rows = admin.list_deliveries(services.engine, limit=limit, status=status, source=source)
    if as_json:
        print_json([r.as_dict() for r in rows])
        return
    table = Table("id", "received", "source", "type", "subject", "size", "status")
    for r in rows:
        table.add_row(
            str(r.id),
            r.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            r.source,
            r.event_type or "-",
            r.subject_id or "-",
            f"{r.size:,}",
            r.status,
        )
    console.print(table)


@deliveries_app.command("show")
def deliveries_show(delivery_id: int, as_json: JsonFlag = False) -> None:
    """Show one delivery and its jobs (with their last errors)."""
    services = load_services()
    info = admin.get_delivery(services.engine, delivery_id)
    if info is None:
        raise fail(f"no delivery with id {delivery_id}")
    if as_json:
        print_json(info)
        return
    jobs = info.pop("jobs")
    for key, value in info.items():
        console.print(f"[bold]{key}[/bold]: {value}", highlight=False)
    table = Table("job", "handler", "status", "attempts", "run at", "last error")
    for job in jobs:
        table.add_row(
            str(job["id"]),
            job["handler"],
            job["status"],
            str(job["attempts"]),
            job["run_at"],
            (job["last_error"] or "")[:200],
        )
    console.print(table)


@deliveries_app.command("retry")
def deliveries_retry(
    delivery_id: Annotated[
        int | None, typer.Argument(help="Delivery whose jobs to re-run.")
    ] = None,
    dead: Annotated[bool, typer.Option("--dead", help="Re-queue every dead job.")] = False,
    as_json: JsonFlag = False,
) -> None:
    """Re-queue a delivery's jobs (or all dead jobs) with a fresh set of attempts."""
    if (delivery_id is None) == (not dead):
        raise fail("give a delivery id or --dead (not both)", code=2)
    services = load_services()
    if dead:
        count = admin.requeue_dead(services.engine)
    else:
        try:
            count = admin.requeue_delivery(services.engine, services.registry, delivery_id)  # type: ignore[arg-type]
        except LookupError as exc:
            raise fail(str(exc)) from exc
    if as_json:
        print_json({"requeued": count})
    else:
        console.print(f"{count} job(s) queued", highlight=False)


# -- subcommands from their own modules (one line each) ------------------------------------
import receiver.cli_replay  # noqa: E402, F401  (registers replay, sign, demo, deliveries export)
from receiver.cli_conversations import conversations_app  # noqa: E402
from receiver.cli_tasks import tasks_app  # noqa: E402

app.add_typer(tasks_app, name="tasks")
app.add_typer(conversations_app, name="conversations")


def main() -> None:
    from pydantic import ValidationError

    try:
        app()
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        # A setting from the environment that does not validate: name it, without a traceback
        # (and without its value, which may be a secret).
        for error in exc.errors():
            name = "VOICEHOOKS_" + "_".join(str(part) for part in error["loc"]).upper()
            err_console.print(
                f"[red]error:[/red] invalid setting {name}: {error['msg']}", soft_wrap=True
            )
        raise SystemExit(2) from None
