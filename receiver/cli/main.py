"""The ``voicehooks`` command (also ``python -m receiver``): every command, listed once.

The core's commands are listed here explicitly. Plugins add theirs (the built-in handlers add
``conversations`` and ``tasks``) through the entry-point group ``voicehooks.commands``, each
naming a typer app, so nothing here knows a plugin.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Annotated

import typer

from receiver.cli import deliveries, gc, prune, replay, server
from receiver.cli.output import fail
from receiver.settings import Settings

COMMANDS_GROUP = "voicehooks.commands"


def installed_version() -> str:
    try:
        return version("voicehooks")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown (not installed)"


def _show_version(value: bool) -> None:
    if value:
        typer.echo(f"voicehooks {installed_version()}")
        raise typer.Exit()


def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version",
            help="Show the installed version and exit.",
            callback=_show_version,
            is_eager=True,
        ),
    ] = False,
) -> None:
    """Durable webhook receiver for ElevenLabs and kie.ai.

    Settings come from VOICEHOOKS_* environment variables or a .env file in the working
    directory. Shell completion: voicehooks --install-completion.
    """


def build_app() -> typer.Typer:
    app = typer.Typer(
        no_args_is_help=True,
        pretty_exceptions_enable=False,
        add_completion=True,
    )
    app.callback()(_root)
    app.command()(server.serve)
    app.command()(server.worker)
    app.command()(server.migrate)
    app.command()(replay.replay)
    app.command()(replay.sign)
    app.command()(replay.demo)
    app.command()(prune.prune)
    app.add_typer(deliveries.app, name="deliveries")
    app.command(name="gc")(gc.gc)
    for ep in entry_points(group=COMMANDS_GROUP):
        try:
            commands = ep.load()
        except Exception as exc:
            raise SystemExit(
                f"error: cannot load the commands {ep.name!r} ({ep.value}): "
                f"{type(exc).__name__}: {exc}"
            ) from None
        app.add_typer(commands, name=ep.name)
    return app


app = build_app()


def main() -> None:
    from pydantic import ValidationError

    from receiver.registry import PluginError

    try:
        app()
    except PluginError as exc:
        fail(str(exc))
        raise SystemExit(2) from None
    except ValidationError as exc:
        if exc.title != Settings.__name__:
            raise
        # A setting from the environment that does not validate: name it, without a traceback
        # (and without its value, which may be a secret).
        for error in exc.errors():
            name = "VOICEHOOKS_" + "_".join(str(part) for part in error["loc"]).upper()
            message = error["msg"].removeprefix("Value error, ")
            fail(f"invalid setting {name}: {message}")
        raise SystemExit(2) from None
