"""``voicehooks call-log list``: the plugin's own command (group ``voicehooks.commands``)."""

from __future__ import annotations

from typing import Annotated

import typer

from receiver.cli.output import JsonFlag, console, literal, print_json
from receiver.cli.store import load_services

app = typer.Typer(help="Calls logged by the call-log example plugin.", no_args_is_help=True)


@app.command("list")
def list_calls(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    as_json: JsonFlag = False,
) -> None:
    """List logged calls."""
    from rich.table import Table

    from call_log.tables import recent

    services = load_services()
    try:
        entries = recent(services.engine, limit)
    finally:
        services.close()
    if as_json:
        print_json([entry.model_dump(mode="json") for entry in entries])
        return
    table = Table("conversation", "agent", "status", "duration", "delivery")
    table.columns[0].overflow = "fold"  # ids are copied, never cut
    for entry in entries:
        table.add_row(
            literal(entry.conversation_id),
            literal(entry.agent_id),
            literal(entry.status),
            literal(entry.duration_secs),
            str(entry.delivery_id),
        )
    console.print(table)
