"""``voicehooks serve``, ``worker`` and ``migrate``: the long-running processes."""

from __future__ import annotations

from typing import Annotated

import typer

from receiver.cli.output import console, literal
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
    from rich.text import Text

    from receiver.app import create_app, server_options
    from receiver.cli import listen
    from receiver.cli.output import masked_url
    from receiver.cli.store import open_services

    settings = Settings()
    configure_logging(settings.log_level)
    # Everything that can be wrong is found before serving: the port, then the settings and
    # the store (each one line). The store is migrated here, so start-up cannot fail later.
    sock = listen.bind(host, port)
    port = sock.getsockname()[1]  # the one the system chose for --port 0
    try:
        services = open_services(settings, create=True, migrate=settings.migrate_on_start)
    except BaseException:
        sock.close()
        raise
    services.settings = settings.model_copy(update={"migrate_on_start": False})
    store = masked_url(settings.database_url)
    console.print(literal(f"voicehooks store: {store} (data: {settings.data_dir})"), soft_wrap=True)
    app_ = create_app(services=services, run_worker=not no_worker)
    freeze_startup_objects()
    announcement = Text(f"voicehooks listening on http://{host}:{port}")
    listen.run(app_, sock, announcement, **server_options(settings))


def worker() -> None:
    """Run workers only (scale out: several `worker` processes on one Postgres)."""
    import asyncio

    services = load_services(create=True)
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
    services = load_services(migrate=True, create=True)
    services.close()
    console.print("database is up to date", highlight=False)
