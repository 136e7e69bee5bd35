"""``voicehooks dialogue check|submit|list|show``: render a script with kie.ai, ElevenLabs or
Sonna, and look at the renders.

Registered as a ``voicehooks`` command group through the entry-point group
``voicehooks.commands`` (pyproject.toml). ``check`` and ``submit`` validate first and exit with
status 2, sending nothing, when the provider would refuse the script.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from receiver.cli.output import JsonFlag

dialogue_app = typer.Typer(
    help="Render dialogue scripts with kie.ai, ElevenLabs or Sonna, and follow the renders.",
    no_args_is_help=True,
)
KEY_SETTINGS = {
    "kie": ("kie_api_key", "VOICEHOOKS_KIE_API_KEY"),
    "elevenlabs": ("elevenlabs_api_key", "VOICEHOOKS_ELEVENLABS_API_KEY"),
    "sonna": ("sonna_api_key", "VOICEHOOKS_SONNA_API_KEY"),
}
# How often --wait looks at the render while a worker elsewhere (or the next poll) works on it.
WAIT_INTERVAL_SECONDS = 0.5


class Provider(StrEnum):
    kie = "kie"
    elevenlabs = "elevenlabs"
    sonna = "sonna"


ProviderOption = Annotated[Provider, typer.Option("--provider", "-p", help="Who renders it.")]
ScriptArgument = Annotated[Path, typer.Argument(help="The script, a JSON file.")]


def _checked(path: Path, provider: str, *, as_json: bool) -> Any:
    """The script, or exit 2 naming every reason ``provider`` would refuse it."""
    from rich.text import Text

    from handlers.dialogue.script import ScriptError, check, load_script
    from receiver.cli.output import err_console, fail, print_json

    try:
        script = load_script(path)
    except ScriptError as exc:
        if as_json:
            print_json({"ok": False, "errors": [{"code": "invalid_script", "message": str(exc)}]})
        raise fail(f"invalid_script: {exc}", code=2) from None
    result = check(script, provider)
    if as_json and not result.ok:
        print_json(
            {
                "ok": False,
                "errors": [f.__dict__ for f in result.errors],
                "warnings": [f.__dict__ for f in result.warnings],
            }
        )
    for finding in result.warnings:
        err_console.print(
            Text.assemble(("warning:", "yellow"), f" {finding.code}: {finding.message}")
        )
    for finding in result.errors:
        err_console.print(Text.assemble(("error:", "red"), f" {finding.code}: {finding.message}"))
    if not result.ok:
        raise typer.Exit(2)
    return script, result


@dialogue_app.command("check")
def dialogue_check(
    path: ScriptArgument, provider: ProviderOption, as_json: JsonFlag = False
) -> None:
    """Validate a script for a provider; sends nothing. Exit status 2 when it would be refused."""
    from receiver.cli.output import console, print_json

    script, result = _checked(path, provider.value, as_json=as_json)
    if as_json:
        print_json(
            {
                "ok": True,
                "provider": provider.value,
                "turns": len(script.turns),
                "characters": script.characters,
                "voices": len(script.voices),
                "warnings": [f.__dict__ for f in result.warnings],
            }
        )
        return
    console.print(
        f"ok: {len(script.turns)} turns, {script.characters} characters, "
        f"{len(script.voices)} voices for {provider.value}"
    )


@dialogue_app.command("submit")
def dialogue_submit(
    path: ScriptArgument,
    provider: ProviderOption,
    wait: Annotated[
        bool, typer.Option("--wait", help="Show progress and return when the render is final.")
    ] = False,
    as_json: JsonFlag = False,
) -> None:
    """Check a script, then store it as a render with a job that sends it to the provider."""
    from handlers.dialogue import store
    from receiver.cli.output import console, fail, print_json
    from receiver.cli.store import load_services
    from receiver.settings import Settings

    script, _ = _checked(path, provider.value, as_json=as_json)
    attribute, variable = KEY_SETTINGS[provider.value]
    key = getattr(Settings(), attribute)
    if key is None or not key.get_secret_value():
        raise fail(f"{variable} is not set: cannot submit to {provider.value}", code=2)
    # A submission is new work, like a delivery: it may start a store (listing never does).
    services = load_services(create=True)
    try:
        render_id = store.submit(services.engine, services.registry, script, provider.value)
        if not wait:
            if as_json:
                print_json({"id": render_id, "provider": provider.value, "state": "queued"})
            else:
                console.print(f"render {render_id} queued for {provider.value}")
            return
        render = _wait(services, render_id, quiet=as_json)
    finally:
        services.close()
    if as_json:
        print_json(render)
    else:
        _print_render(render)
    if render["state"] != "succeeded":
        raise typer.Exit(1)


def _wait(services: Any, render_id: int, *, quiet: bool) -> dict[str, Any]:
    """Until the render is final: run its due jobs here (a worker elsewhere may take them
    first; leases keep that safe), and say what it is waiting for."""
    from rich.status import Status

    from handlers.dialogue import store
    from receiver import jobs
    from receiver.cli.output import err_console, literal

    render = store.get(services.engine, str(render_id))
    assert render is not None
    delivery_id = render["delivery_id"]
    status = Status(f"render {render_id}: queued", console=err_console)
    # A terminal gets a live status line; a log or pipe gets one line per change of state.
    live = not quiet and err_console.is_terminal
    said = ""
    if live:
        status.start()
    try:
        while True:
            asyncio.run(services.worker.drain(delivery_id))
            render = store.get(services.engine, str(render_id))
            assert render is not None
            if render["state"] in ("succeeded", "failed"):
                return render
            due = jobs.next_run_at(services.engine, delivery_id)
            wait_for = (
                max(0.0, (due - datetime.now(UTC)).total_seconds()) if due is not None else None
            )
            what = f"render {render_id}: {render['state']}"
            if render["task_id"]:
                what += f" (kie.ai task {render['task_id']})"
            if wait_for is not None and wait_for >= 1:
                what += f", next check in {wait_for:.0f} s"
            status.update(what)
            if not quiet and not live and render["state"] != said:
                said = render["state"]
                err_console.print(literal(what.split(", next check")[0]))
            time.sleep(min(WAIT_INTERVAL_SECONDS, wait_for or WAIT_INTERVAL_SECONDS))
    finally:
        status.stop()


def _print_render(render: dict[str, Any]) -> None:
    from rich.table import Table
    from rich.text import Text

    from receiver.cli.output import console, literal

    skip = {"audio", "error", "script", "alignment", "normalized_alignment", "voice_segments"}
    for key, value in render.items():
        if key not in skip and value is not None:
            console.print(Text.assemble((f"{key}", "bold"), ": ", literal(value)))
    if render.get("error"):
        error = render["error"]
        console.print(
            Text.assemble(
                ("error", "bold red"), ": ", literal(f"{error['code']}: {error['message']}")
            )
        )
    segments = render.get("voice_segments") or []
    if segments:
        table = Table("#", "voice", "start s", "end s", "chars", "turn")
        for seg in segments:
            table.add_row(
                str(seg["position"]),
                literal(seg["voice_id"]),
                f"{seg['start_seconds']:.2f}",
                f"{seg['end_seconds']:.2f}",
                f"{seg['character_start']}-{seg['character_end']}",
                str(seg["input_index"] + 1),
            )
        console.print(table)


@dialogue_app.command("list")
def dialogue_list(
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
    state: Annotated[str | None, typer.Option(help="queued, running, succeeded or failed.")] = None,
    as_json: JsonFlag = False,
) -> None:
    """List renders, newest first."""
    from rich.table import Table

    from handlers.dialogue import store
    from receiver.cli.output import console, literal, print_json, short
    from receiver.cli.store import load_services

    services = load_services()
    try:
        renders = store.list_renders(services.engine, limit=limit, state=state)
    finally:
        services.close()
    if as_json:
        print_json(renders)
        return
    table = Table("id", "provider", "state", "title", "kie task", "submitted", "audio")
    for render in renders:
        table.add_row(
            str(render["id"]),
            render["provider"],
            literal(render["state"]),
            short(render["title"], 30),
            literal(render["task_id"]),
            (render["submitted_at"] or "")[:19].replace("T", " "),
            f"{render['size']} B" if render["size"] else "-",
        )
    console.print(table)


@dialogue_app.command("show")
def dialogue_show(
    ident: Annotated[str, typer.Argument(metavar="ID", help="A render id or a kie.ai taskId.")],
    as_json: JsonFlag = False,
) -> None:
    """Show one render: provider, state, audio (sha256, size, file), voice segments, error."""
    from handlers.dialogue import store
    from receiver.cli.output import fail, print_json
    from receiver.cli.store import load_services

    services = load_services()
    try:
        render = store.show(services.engine, services.blobs, ident)
    finally:
        services.close()
    if render is None:
        raise fail(f"no render with id or kie.ai taskId {ident!r}")
    if as_json:
        print_json(render)
        return
    _print_render(render)
