"""``voicehooks serve``, ``worker`` and ``migrate``: the long-running processes."""

from __future__ import annotations

from typing import Annotated

import typer

from receiver.cli.output import console, fail
from receiver.cli.store import load_services
from receiver.gc_tuning import freeze_startup_objects
from receiver.logging import configure as configure_logging
from receiver.settings import Settings
from receiver.store.db import shown_url


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
    store = shown_url(settings.database_url)
    console.print(
        f"voicehooks listening on http://{host}:{port}  (store: {store})",
        highlight=False,
        markup=False,
    )
    app_ = create_app(settings, run_worker=not no_worker)
    if settings.migrate_on_start:
        # Here rather than only in the app's start-up, which reports a failure as a traceback:
        # a store that cannot be opened is one line (its password masked).
        try:
            app_.state.services.migrate()
        except Exception as exc:
            raise fail(f"cannot open the store at {store}: {settings.redact(str(exc))}") from exc
    freeze_startup_objects()
    uvicorn.run(app_, host=host, port=port, **server_options(settings))


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
    load_services(migrate=True).close()  # a store it cannot reach is a one-line error
    console.print("database is up to date", highlight=False)
