"""``voicehooks serve``, ``worker`` and ``migrate``: the long-running processes."""

from __future__ import annotations

import secrets
from typing import Annotated

import typer
from pydantic import SecretStr

from receiver.cli.output import console, literal
from receiver.cli.store import load_services
from receiver.gc_tuning import freeze_startup_objects
from receiver.logging import configure as configure_logging
from receiver.settings import Settings
from receiver.store.db import shown_url
from receiver.worker_process import WorkerProcess, follow_parent


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
    store = shown_url(settings.database_url)
    console.print(literal(f"voicehooks store: {store} (data: {settings.data_dir})"), soft_wrap=True)
    services.inspector_token = inspector_token(settings, host, port)
    services.settings = settings.model_copy(update={"migrate_on_start": False})
    # Workers in a niced child process by default: processing never slows acknowledging.
    in_child = settings.worker_process and not no_worker
    child = WorkerProcess(nice=settings.worker_nice) if in_child else None
    app_ = create_app(
        services=services,
        run_worker=not no_worker and not in_child,
        worker_process=child,
        inbox_process=settings.inbox_process,
    )
    freeze_startup_objects()
    announcement = Text(f"voicehooks listening on http://{host}:{port}")
    listen.run(app_, sock, announcement, **server_options(settings))


def inspector_token(settings: Settings, host: str, port: int) -> SecretStr | None:
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
        return None
    token = secrets.token_urlsafe(32)
    console.print(
        f"inspector: sign in at {base}login#token={token}\n"
        "  (a token made for this run; set VOICEHOOKS_ADMIN_TOKEN to keep one)",
        highlight=False,
        soft_wrap=True,
    )
    return SecretStr(token)


def worker() -> None:
    """Run workers only (scale out: several `worker` processes on one Postgres)."""
    import asyncio
    import signal

    follow_parent()
    services = load_services(create=True)
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
    services = load_services(migrate=True, create=True)
    services.close()
    console.print("database is up to date", highlight=False)
