"""``voicehooks gc``: free the disk held by blob and spool files that no row references."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from receiver.blob_gc import DEFAULT_GRACE_SECONDS, collect
from receiver.cli.output import JsonFlag, console, err_console, literal, print_json
from receiver.cli.store import load_services


def gc(
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List what would be removed; remove nothing.")
    ] = False,
    grace_seconds: Annotated[
        float,
        typer.Option(
            min=0, help="Keep files younger than this, referenced or not (ingest in flight)."
        ),
    ] = DEFAULT_GRACE_SECONDS,
    json_: JsonFlag = False,
) -> None:
    """Remove blob and spool files that no row references and that are older than the grace
    period. Safe while the receiver runs."""
    services = load_services()
    try:
        with err_console.status("scanning the blob store…") as status:
            result = collect(
                services.engine,
                services.blobs,
                services.registry,
                grace_seconds=grace_seconds,
                dry_run=dry_run,
                progress=lambda n: status.update(f"scanning the blob store… {n} files"),
            )
    finally:
        services.close()
    if json_:
        print_json(result.as_dict())
        return
    if result.removed:
        table = Table("kind", "file", "bytes")
        for c in result.removed:
            table.add_row(c.kind, literal(c.relpath), str(c.size))
        console.print(table)
    verb = "would remove" if dry_run else "removed"
    console.print(
        f"{verb} {len(result.removed)} files ({result.removed_bytes} bytes) of "
        f"{result.scanned} scanned; kept {result.referenced} referenced and "
        f"{result.too_young} younger than {grace_seconds:g} s",
        highlight=False,
    )
