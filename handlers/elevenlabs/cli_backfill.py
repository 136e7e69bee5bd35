"""``voicehooks elevenlabs backfill``: recover conversations and audio whose webhooks never came.

Progress goes to stderr (a live line on a terminal, a plain line per page otherwise), the summary
to stdout (``--json`` for scripts). Conversation ids and API error texts are untrusted, so they
are printed as ``Text``, never as markup.
"""

from __future__ import annotations

import asyncio
import re
from datetime import UTC, datetime, timedelta
from typing import Annotated

import httpx
import typer
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from handlers.elevenlabs.backfill import Reconciler, Summary
from handlers.elevenlabs.tables import SOURCE
from receiver.cli.output import JsonFlag
from receiver.sources.elevenlabs.conversations_api import ConversationsAPI, ConversationsAPIError

elevenlabs_app = typer.Typer(
    help="ElevenLabs API: recover what its webhooks never delivered.", no_args_is_help=True
)
DEFAULT_LOOKBACK = timedelta(hours=24)
_DURATION = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


@elevenlabs_app.callback()
def elevenlabs() -> None:
    """ElevenLabs API commands (key: VOICEHOOKS_ELEVENLABS_API_KEY)."""


def parse_when(value: str, now: datetime) -> datetime:
    """An ISO date (midnight UTC), an ISO date-time (UTC unless it says otherwise), or a
    duration back from now: ``90m``, ``36h``, ``7d``, ``2w``."""
    text = value.strip()
    match = _DURATION.fullmatch(text.lower())
    if match:
        amount, unit = float(match.group(1)), _UNITS[match.group(2)]
        return now - timedelta(**{unit: amount})
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise typer.BadParameter(
            f"{value!r} is neither an ISO date/time (2026-11-30, 2026-11-30T08:00) "
            "nor a duration (36h, 7d)"
        ) from None
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _counts_line(summary: Summary) -> str:
    c = summary.counts()
    return (
        f"page {summary.pages}: listed {c['listed']}, already stored {c['already_stored']}, "
        f"fetched {c['fetched']}, audio fetched {c['audio_fetched']}, "
        f"skipped (running) {c['skipped_running']}, failed {c['failed']}"
    )


def render_summary(summary: Summary) -> Table:
    table = Table(show_header=False)
    table.add_column(style="bold")
    table.add_column(justify="right")
    labels = {
        "listed": "listed",
        "already_stored": "already stored",
        "fetched": "fetched",
        "audio_fetched": "audio fetched",
        "skipped_running": "skipped (running)",
        "failed": "failed",
    }
    for key, count in summary.counts().items():
        table.add_row(
            labels[key], Text(str(count), style="red" if key == "failed" and count else "")
        )
    return table


@elevenlabs_app.command("backfill")
def backfill(
    since: Annotated[
        str | None,
        typer.Option(help="Start of the window: ISO date/time or a duration (36h, 7d). [24h]"),
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="End of the window: ISO date/time or a duration. [now]")
    ] = None,
    agent: Annotated[str | None, typer.Option(help="Only this agent_id.")] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="List and compare only; fetch and store nothing.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Fetch finished conversations (and their audio) that never arrived by webhook.

    Each goes through the inbox as the webhook's post_call_transcription delivery would have;
    `voicehooks serve` or `voicehooks worker` then stores it.

    Exit status 1 when any conversation failed.
    """
    from receiver.cli.output import console, err_console, fail, print_json
    from receiver.cli.store import load_services

    now = datetime.now(UTC)
    start = parse_when(since, now) if since else now - DEFAULT_LOOKBACK
    end = parse_when(until, now) if until else now
    if start >= end:
        raise fail(f"--since ({start.isoformat()}) must be before --until ({end.isoformat()})", 2)

    # Recovered conversations are new deliveries: the backfill may start a store, as serve does.
    services = load_services(create=True)
    progress: Progress | None = None
    if err_console.is_terminal:
        progress = Progress(
            SpinnerColumn(),
            TextColumn("{task.description}"),
            TimeElapsedColumn(),
            console=err_console,
            transient=True,
        )
        task = progress.add_task("listing conversations…", total=None)

    def on_page(summary: Summary) -> None:
        if progress is not None:
            progress.update(task, description=_counts_line(summary))
        else:
            err_console.print(Text(_counts_line(summary)), soft_wrap=True)

    async def run() -> Summary:
        timeout = httpx.Timeout(60.0, connect=10.0)
        async with httpx.AsyncClient(timeout=timeout) as http:
            api = ConversationsAPI.from_settings(services.settings, http)
            reconciler = Reconciler(
                api,
                engine=services.engine,
                blobs=services.blobs,
                inbox=services.inbox,
                source=services.sources[SOURCE],
                settings=services.settings,
                dry_run=dry_run,
                on_page=on_page,
            )
            return await reconciler.run(start, end, agent)

    try:
        if progress is not None:
            with progress:
                summary = asyncio.run(run())
        else:
            summary = asyncio.run(run())
    except ConversationsAPIError as exc:
        raise fail(str(exc)) from None
    finally:
        services.close()

    if as_json:
        print_json(
            {"since": start.isoformat(), "until": end.isoformat(), "agent_id": agent}
            | summary.as_dict()
        )
    else:
        window = f"{start:%Y-%m-%d %H:%M} - {end:%Y-%m-%d %H:%M} UTC"
        console.print(Text(f"ElevenLabs backfill, calls started {window}"))
        console.print(render_summary(summary))
        if dry_run:
            console.print(
                Text("dry run: nothing was fetched or stored; the counts say what would be")
            )
        for failure in summary.failures:
            console.print(
                Text.assemble(
                    ("failed ", "red"), failure["conversation_id"], ": ", failure["error"]
                ),
                soft_wrap=True,
            )
        if summary.fetched and not dry_run:
            console.print(
                Text(
                    f"{summary.fetched} transcription(s) queued for the workers: "
                    "`voicehooks serve` or `voicehooks worker` stores them."
                )
            )
    if summary.failed:
        raise typer.Exit(1)
