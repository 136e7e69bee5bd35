"""``voicehooks deliveries list|show|retry|export``: look at the inbox, re-queue its jobs."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from receiver import jobs
from receiver.cli.output import JsonFlag, console, err_console, fail, literal, print_json, short
from receiver.cli.store import load_services
from receiver.replay import export_delivery, export_to_file

app = typer.Typer(help="Look at stored deliveries and re-queue their jobs.", no_args_is_help=True)


@app.command("list")
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
    rows = jobs.list_deliveries(services.engine, limit=limit, status=status, source=source)
    if as_json:
        print_json([r.as_dict() for r in rows])
        return
    table = Table("id", "received", "source", "type", "subject", "size", "status")
    for column in table.columns[2:5]:  # ids and names fold onto more lines, never get cut
        column.overflow = "fold"
    for r in rows:
        table.add_row(
            str(r.id),
            r.received_at.strftime("%Y-%m-%d %H:%M:%S"),
            literal(r.source),
            literal(r.event_type),
            literal(r.subject_id),
            f"{r.size:,}",
            literal(r.status),
        )
    console.print(table)


@app.command("show")
def deliveries_show(delivery_id: int, as_json: JsonFlag = False) -> None:
    """Show one delivery and its jobs (with their last errors)."""
    services = load_services()
    info = jobs.get_delivery(services.engine, delivery_id)
    if info is None:
        raise fail(f"no delivery with id {delivery_id}")
    if as_json:
        print_json(info)
        return
    job_rows = info.pop("jobs")
    for key, value in info.items():
        console.print(Text.assemble((key, "bold"), ": ", str(value)))
    table = Table("job", "handler", "status", "attempts", "run at", "last error")
    for job in job_rows:
        table.add_row(
            str(job["id"]),
            literal(job["handler"]),
            literal(job["status"]),
            str(job["attempts"]),
            literal(job["run_at"]),
            short(job["last_error"] or "", 200),
        )
    console.print(table)


@app.command("retry")
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
    if delivery_id is None:  # then --dead was given (checked above)
        count = jobs.requeue_dead(services.engine)
    else:
        try:
            count = jobs.requeue_delivery(services.engine, services.registry, delivery_id)
        except LookupError as exc:
            raise fail(str(exc)) from exc
    if as_json:
        print_json({"requeued": count})
    else:
        console.print(f"{count} job(s) queued", highlight=False)


@app.command("export")
def deliveries_export(
    delivery_id: Annotated[int, typer.Argument(help="The delivery to export.")],
    output: Annotated[Path, typer.Option("--output", "-o", help="File to write ('-' for stdout).")],
) -> None:
    """Write a delivery's body byte for byte (no headers, no secrets): a replayable fixture."""
    services = load_services()
    try:
        if str(output) == "-":
            info = export_delivery(services.engine, services.blobs, delivery_id, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            info = export_to_file(services.engine, services.blobs, delivery_id, output)
    except (LookupError, ValueError, OSError) as exc:
        raise fail(str(exc)) from exc
    finally:
        services.close()
    where = "stdout" if str(output) == "-" else str(output)
    err_console.print(
        literal(
            f"delivery {delivery_id} ({info['source']} {info['event_type'] or '-'}): "
            f"{info['size']:,} bytes, sha256 {info['sha256']} -> {where}"
        )
    )
