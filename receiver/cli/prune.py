"""``voicehooks prune``: delete the stored bodies of old, finished deliveries (retention)."""

from __future__ import annotations

from typing import Annotated

import typer

from receiver.cli.output import JsonFlag, console, print_json
from receiver.cli.store import load_services
from receiver.retention import prune as prune_store


def prune(
    older_than: Annotated[
        float,
        typer.Option(
            "--older-than",
            metavar="DAYS",
            min=0,
            help="Prune deliveries received more than DAYS days ago.",
        ),
    ],
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="Say what would be pruned; change nothing.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Delete stored bodies (and their blobs) of deliveries older than DAYS whose jobs are done.

    The delivery rows stay, marked pruned, with their jobs; what handlers stored (conversations,
    call audio, kie.ai tasks) is kept. VOICEHOOKS_RETENTION_DAYS runs this daily in the workers.
    """
    services = load_services()
    try:
        result = prune_store(services.engine, services.blobs, older_than, dry_run=dry_run)
    finally:
        services.close()
    if as_json:
        print_json(
            {
                "dry_run": dry_run,
                "deliveries": result.deliveries,
                "bytes": result.bytes,
                "blobs": len(result.blob_paths),
            }
        )
        return
    verb = "would prune" if dry_run else "pruned"
    console.print(
        f"{verb} {result.deliveries} delivery bodies ({result.bytes:,} bytes, "
        f"{len(result.blob_paths)} blob files) older than {older_than:g} days",
        highlight=False,
    )
