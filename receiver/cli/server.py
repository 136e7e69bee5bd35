"""``voicehooks serve``, ``worker`` and ``migrate``: the long-running processes."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer
from pydantic import SecretStr

from receiver.cli.output import console
from receiver.cli.store import load_services
from receiver.gc_tuning import freeze_startup_objects
from receiver.logging import configure as configure_logging
from receiver.settings import Settings


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
        f"voicehooks listening on http://{host}:{port}  (store: {shown_url(settings)})",
        highlight=False,
    )
    settings = with_admin_token(settings, host, port)
    app_ = create_app(settings, run_worker=not no_worker)
    freeze_startup_objects()
    uvicorn.run(app_, host=host, port=port, **server_options(settings))


def shown_url(settings: Settings) -> str:
    """The database URL without its password, for the terminal."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        return make_url(settings.database_url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparseable VOICEHOOKS_DATABASE_URL)"


def with_admin_token(settings: Settings, host: str, port: int) -> Settings:
    """Make sure the inspector has an admin token, and say how to sign in.

    Without ``VOICEHOOKS_ADMIN_TOKEN`` a fresh random token is made for this run and a sign-in
    link printed to the terminal (not the log), as Jupyter does. The token travels in the URL
    fragment, which browsers never send, so it appears in no access log either.
    """
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
    if ":" in shown_host:
        shown_host = f"[{shown_host}]"
    base = f"http://{shown_host}:{port}/ui/"
    if settings.admin_token is not None:
        console.print(f"inspector: {base}  (sign in with VOICEHOOKS_ADMIN_TOKEN)", highlight=False)
        return settings
    token = secrets.token_urlsafe(32)
    console.print(
        f"inspector: sign in at {base}login#token={token}\n"
        "  (a token made for this run; set VOICEHOOKS_ADMIN_TOKEN to keep one)",
        highlight=False,
        soft_wrap=True,
    )
    return settings.model_copy(update={"admin_token": SecretStr(token)})


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


def migrate() -> None:
    """Create or upgrade the database schema."""
    services = load_services(migrate=False)
    services.migrate()
    console.print("database is up to date", highlight=False)
