"""``voicehooks replay``, ``sign`` and ``demo``.

The commands a newcomer and a handler author use: send payload files to a receiver signed as the
provider would, print a signed request to send by hand, and watch a throwaway receiver process
every bundled fixture.
"""

from __future__ import annotations

import asyncio
import shlex
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich import box
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from receiver.cli.output import (
    JsonFlag,
    console,
    err_console,
    fail,
    literal,
    print_json,
)
from receiver.logging import configure as configure_logging
from receiver.replay import (
    DEFAULT_URL,
    Replayer,
    ReplayError,
    ReplayResult,
    collect_paths,
    inspect_payload,
    sign_request,
)
from receiver.settings import Settings
from receiver.sources import load_sources, source_classes
from receiver.store.db import shown_url

SourceOption = Annotated[
    str | None,
    typer.Option(
        help="A source name, such as elevenlabs or kie (default: inferred from each "
        "payload's shape)."
    ),
]


def _check_source(source: str | None) -> None:
    known = source_classes()
    if source is not None and source not in known:
        raise fail(f"unknown source {source!r}; use one of: {', '.join(sorted(known))}", code=2)


def _quiet_logging(settings: Settings) -> None:
    """The in-process app logs like a server; keep replay's own output readable unless the
    operator asked for a log level."""
    level = settings.log_level if "log_level" in settings.model_fields_set else "warning"
    configure_logging(level)


def progress_bar(description: str) -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("{task.fields[current]}", style="dim", markup=False),
        console=err_console,
        transient=True,
    )


async def replay_files(
    replayer: Replayer,
    files: list[tuple[Path, str]],
    *,
    source: str | None = None,
    show_progress: bool = True,
    description: str = "replaying",
) -> list[ReplayResult]:
    """Send ``(path, display name)`` pairs in order, with a progress bar for more than one."""
    results: list[ReplayResult] = []
    if not show_progress or len(files) < 2:
        for path, name in files:
            results.append(await replayer.send(path, source=source, name=name))
        return results
    with progress_bar(description) as progress:
        task = progress.add_task(description, total=len(files), current="")
        for path, name in files:
            progress.update(task, current=name)
            results.append(await replayer.send(path, source=source, name=name))
            progress.advance(task)
    return results


def _flexible_widths(results: list[ReplayResult], width: int | None) -> tuple[int | None, ...]:
    """Widths for the file and type columns when the table would not fit ``width``.

    Rich shrinks every column in proportion and then crops the right-hand ones, which loses the
    result column; instead the short columns keep their width and the two long ones fold: the
    type keeps room for the usual event names (``post_call_transcription`` is 23 characters) and
    the file name, what the reader scans for, gets the rest.
    """
    if width is None:
        return None, None
    fixed = [
        max(len("source"), *(len(r.source or "-") for r in results)),
        len("HTTP"),
        max(len("delivery"), *(len(str(r.delivery_id)) for r in results)),
        max(len("result"), *(len(r.short_outcome) for r in results)),
    ]
    available = width - sum(fixed) - 3 * 5  # padding, separator, padding between six columns
    file_natural = max(len("file"), *(len(r.name) for r in results))
    type_natural = max(len("type"), *(len(r.event_type or "-") for r in results))
    if file_natural + type_natural <= available:
        return None, None
    if available < 16:
        return None, None
    file_width = min(file_natural, available - min(type_natural, 23, available // 2))
    return file_width, available - file_width


def results_table(
    results: list[ReplayResult], title: str | None = None, *, width: int | None = None
) -> Table:
    """One row per payload; long file names and types fold to fit ``width``, never crop."""
    file_width, type_width = _flexible_widths(results, width) if results else (None, None)
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, show_edge=False)
    table.add_column("file", overflow="fold", width=file_width)
    table.add_column("source", no_wrap=True)
    table.add_column("type", overflow="fold", width=type_width)
    table.add_column("HTTP", no_wrap=True)
    table.add_column("delivery", no_wrap=True)
    table.add_column("result", no_wrap=True)
    for r in results:
        if r.acknowledged:
            outcome = Text("duplicate", "yellow") if r.duplicate else Text("new", "green")
        else:
            outcome = Text(r.short_outcome, "red")
        table.add_row(
            literal(r.name),
            literal(r.source),
            literal(r.event_type),
            str(r.status_code) if r.status_code is not None else "-",
            str(r.delivery_id) if r.delivery_id is not None else "-",
            outcome,
        )
    return table


def print_problems(results: list[ReplayResult]) -> None:
    """Why each payload was not acknowledged, one line per distinct reason (a missing secret
    fails every file the same way; saying it once per file helps nobody)."""
    reasons: dict[str, list[str]] = {}
    for r in results:
        if not r.acknowledged:
            reasons.setdefault(r.outcome, []).append(r.name)
    for reason, names in reasons.items():
        who = names[0] if len(names) == 1 else f"{len(names)} files ({names[0]}, ...)"
        console.print(Text.assemble(("not acknowledged", "red"), f" {who}: {reason}"))


def summary_line(results: list[ReplayResult]) -> str:
    ok = [r for r in results if r.acknowledged]
    duplicates = sum(1 for r in ok if r.duplicate)
    refused = len(results) - len(ok)
    line = (
        f"{len(ok)} of {len(results)} acknowledged "
        f"({len(ok) - duplicates} new, {duplicates} duplicate)"
    )
    if refused:
        line += f"; [red]{refused} not acknowledged[/red]"
    return line


def replay(
    paths: Annotated[
        list[str], typer.Argument(help="Payload files, directories (*.json inside) or globs.")
    ],
    url: Annotated[
        str | None,
        typer.Option(help=f"Receiver to send to (default {DEFAULT_URL}, the `serve` address)."),
    ] = None,
    in_process: Annotated[
        bool,
        typer.Option(
            "--in-process",
            help="No HTTP: run the same ingest path here, into the configured store.",
        ),
    ] = False,
    source: SourceOption = None,
    as_json: JsonFlag = False,
) -> None:
    """Sign payload files as their provider would (fresh timestamp) and deliver them."""
    _check_source(source)
    if in_process and url is not None:
        raise fail("give --url or --in-process, not both", code=2)
    try:
        files = collect_paths(paths)
    except ReplayError as exc:
        raise fail(str(exc), code=2) from exc
    if not files:
        raise fail("no payload files found (directories are searched for *.json)", code=2)
    settings = Settings()
    if in_process:
        _quiet_logging(settings)

    async def run() -> list[ReplayResult]:
        async with Replayer(settings, url=url or DEFAULT_URL, in_process=in_process) as replayer:
            await replayer.check_reachable()
            pairs = [(path, str(path)) for path in files]
            return await replay_files(replayer, pairs, source=source, show_progress=not as_json)

    try:
        results = asyncio.run(run())
    except ReplayError as exc:
        raise fail(str(exc)) from exc
    if as_json:
        print_json([r.as_dict() for r in results])
    else:
        console.print(results_table(results, width=console.width))
        print_problems(results)
        console.print(summary_line(results), highlight=False)
        if in_process and any(r.acknowledged and not r.duplicate for r in results):
            console.print(
                literal(
                    f"stored in {shown_url(settings.database_url)}; their jobs run when "
                    "`voicehooks worker` or `voicehooks serve` runs against that store"
                )
            )
    if not all(r.acknowledged for r in results):
        raise typer.Exit(1)


def sign(
    path: Annotated[Path, typer.Argument(help="The payload file to sign.")],
    source: SourceOption = None,
    url: Annotated[str, typer.Option(help="Receiver the curl command posts to.")] = DEFAULT_URL,
    as_json: JsonFlag = False,
) -> None:
    """Print the headers (and a ready curl command) that authenticate PATH right now.

    With only VOICEHOOKS_KIE_URL_TOKEN configured, kie.ai requests authenticate by that token
    in the URL, so the printed URL contains it.
    """
    _check_source(source)
    settings = Settings()
    try:
        sources = load_sources(settings)
        payload = inspect_payload(path, sources, source)
        signed = sign_request(payload, sources)
    except ReplayError as exc:
        raise fail(f"{path}: {exc}") from exc
    target = url.rstrip("/") + signed.path
    if signed.params:
        from urllib.parse import urlencode

        target += "?" + urlencode(signed.params)
    headers = dict(signed.headers)
    if payload.chunked:
        headers["Transfer-Encoding"] = "chunked"
    command = " \\\n  ".join(
        [f"curl -sS -X POST {shlex.quote(target)}"]
        + [f"-H {shlex.quote(f'{k}: {v}')}" for k, v in headers.items()]
        + [f"--data-binary @{shlex.quote(str(path))}"]
    )
    if as_json:
        print_json(
            {
                "source": payload.source,
                "type": payload.event_type,
                "url": target,
                "headers": headers,
                "valid_for_seconds": signed.valid_for,
                "curl": command.replace(" \\\n  ", " "),
            }
        )
        return
    # Plain writes: rich would wrap long header lines, and these are meant to be copied.
    out = sys.stdout
    out.write(f"POST {target}\n")
    for key, value in headers.items():
        out.write(f"{key}: {value}\n")
    if signed.valid_for is not None:
        out.write(f"\n# valid for {signed.valid_for // 60} minutes (the receiver's tolerance)\n")
    else:
        out.write("\n# authenticated by the URL token (it does not expire)\n")
    out.write(command + "\n")


def demo(
    timeout: Annotated[
        float, typer.Option(help="Seconds to wait for the handlers to finish.")
    ] = 45.0,
    keep: Annotated[
        bool, typer.Option("--keep", help="Keep the temporary store to look at afterwards.")
    ] = False,
    fixtures: Annotated[
        Path | None,
        typer.Option(help="Fixture directory (default: the repository's fixtures/)."),
    ] = None,
) -> None:
    """Start a throwaway receiver, replay every bundled fixture, show what was stored."""
    from receiver.demo import DemoError, find_fixtures, run_demo

    directory = fixtures or find_fixtures()
    if directory is None:
        raise fail(
            "the bundled fixtures are not installed with this package: they live in the "
            "repository's fixtures/ directory. Run the demo from a clone, or pass --fixtures DIR."
        )
    configure_logging("critical")  # the demo reports failures itself, as tables
    try:
        ok = run_demo(directory, timeout=timeout, keep=keep, console=console)
    except DemoError as exc:
        raise fail(str(exc)) from exc
    if not ok:
        raise typer.Exit(1)
