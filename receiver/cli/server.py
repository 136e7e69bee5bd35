"""``voicehooks serve``, ``worker`` and ``migrate``: the long-running processes."""

from __future__ import annotations

from typing import Annotated

import typer

from receiver.cli.output import console
from receiver.cli.store import load_services
from receiver.gc_tuning import freeze_startup_objects
from receiver.logging import configure as configure_logging
from receiver.settings import Settings
from receiver.worker_process import WorkerProcess, follow_parent


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
        f"voicehooks listening on http://{host}:{port}  (store: {settings.database_url})",
        highlight=False,
    )
    # Workers in a niced child process by default: processing never slows acknowledging.
    in_child = settings.worker_process and not no_worker
    child = WorkerProcess(nice=settings.worker_nice) if in_child else None
    app_ = create_app(settings, run_worker=not no_worker and not in_child, worker_process=child)
    freeze_startup_objects()
    uvicorn.run(app_, host=host, port=port, **server_options(settings))


def worker() -> None:
    """Run workers only (scale out: several `worker` processes on one Postgres)."""
    import asyncio
    import signal

    follow_parent()
    services = load_services()
    freeze_startup_objects()
    console.print("voicehooks worker running; Ctrl-C to stop", highlight=False)

    async def run_until_signalled() -> None:
        # SIGTERM (how `serve` stops its worker child) and Ctrl-C: finish the jobs in hand.
        loop = asyncio.get_running_loop()
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, services.worker.stop)
        await services.worker.run()

    try:
        asyncio.run(run_until_signalled())
    except KeyboardInterrupt:
        pass
    finally:
        services.close()


def migrate() -> None:
    """Create or upgrade the database schema."""
    services = load_services(migrate=False)
    services.migrate()
    console.print("database is up to date", highlight=False)
