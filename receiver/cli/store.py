"""Opening the store for a command, with one-line answers for everything that can be wrong.

A bad setting (an unusable data directory, a plugin that does not load) exits with status 2, like
a setting that does not validate; a store that is not there or cannot be reached exits with 1.
Admin commands never create a store: run from the wrong directory, an SQLite URL relative to it
would otherwise silently create an empty one and show nothing.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError

from receiver.cli.output import fail
from receiver.logging import configure as configure_logging
from receiver.registry import PluginError, load_registry
from receiver.service import Services
from receiver.settings import Settings
from receiver.store.db import shown_url


def sqlite_path(database_url: str) -> Path | None:
    """The file an SQLite URL names (absolute), or None for other databases and ``:memory:``."""
    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
        return None
    return Path(url.database).resolve()


def check_data_dir(settings: Settings) -> None:
    """Make sure the blob and spool directories can be created and written, before anything
    is accepted that would need them."""
    try:
        for directory in (settings.blob_dir, settings.spool_dir):
            directory.mkdir(parents=True, exist_ok=True)
            with tempfile.TemporaryFile(dir=directory):
                pass
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise fail(
            f"invalid setting VOICEHOOKS_DATA_DIR: {settings.data_dir} must be a directory this "
            f"user can write ({reason}: {exc.filename or directory})",
            code=2,
        ) from None


def database_error(settings: Settings, exc: Exception) -> str:
    """One line saying why the database cannot be used (the driver's first line, no password)."""
    cause = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    return f"cannot use the database {shown_url(settings.database_url)}: {first}"


def open_services(settings: Settings, *, create: bool = False, migrate: bool = True) -> Services:
    """Services over the configured store, checked and (with ``migrate``) brought up to date.

    Without ``create``, an SQLite store that does not exist is an error that says where it
    was looked for, instead of a new empty store.
    """
    try:  # settings first (exit 2), then the store (exit 1)
        registry = load_registry(settings.plugins)
    except PluginError as exc:
        raise fail(str(exc), code=2) from None
    path = sqlite_path(settings.database_url)
    if not create and path is not None and not path.exists():
        raise fail(
            f"no store at {path} (VOICEHOOKS_DATABASE_URL={shown_url(settings.database_url)}, "
            f"relative to {os.getcwd()}); run where the store is, set VOICEHOOKS_DATABASE_URL, "
            "or create it with `voicehooks migrate`"
        )
    check_data_dir(settings)
    services = Services.create(settings, registry)
    try:
        with services.engine.connect() as connection:
            connection.execute(text("SELECT 1"))
            connection.rollback()
        if migrate:
            services.migrate()
    except (SQLAlchemyError, OSError) as exc:
        services.close()
        raise fail(settings.redact(database_error(settings, exc))) from None
    return services


def load_services(*, migrate: bool = True, create: bool = False) -> Services:
    """Services for a command that works on an existing store (see ``open_services``)."""
    settings = Settings()
    configure_logging(settings.log_level)
    return open_services(settings, create=create, migrate=migrate)
