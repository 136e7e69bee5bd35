"""Opening the store for a command."""

from __future__ import annotations

from receiver.cli.output import fail
from receiver.logging import configure as configure_logging
from receiver.service import Services
from receiver.settings import Settings
from receiver.store.db import shown_url


def load_services(*, migrate: bool = True) -> Services:
    """Services for a command that works on the store, with the store brought up to date."""
    settings = Settings()
    configure_logging(settings.log_level)
    try:
        services = Services.create(settings)
        if migrate:
            services.migrate()
    except Exception as exc:
        shown = shown_url(settings.database_url)
        raise fail(f"cannot open the store at {shown}: {settings.redact(str(exc))}") from exc
    return services
