"""The long-lived pieces of a running voicehooks, built once from settings.

The HTTP app, ``voicehooks worker``, in-process replay and the tests all assemble the same
objects the same way, so there is exactly one definition of "a configured receiver".
"""

from __future__ import annotations

from dataclasses import dataclass

import structlog
from pydantic import SecretStr
from sqlalchemy import Engine

from receiver.inbox import Inbox
from receiver.ingest_signal import IngestSignal
from receiver.registry import Registry, load_registry
from receiver.settings import Settings
from receiver.sources import load_sources
from receiver.sources.base import Source
from receiver.store import migrate
from receiver.store.blobs import BlobStore
from receiver.store.db import create_db_engine
from receiver.worker import Worker

log = structlog.get_logger(__name__)


@dataclass
class Services:
    settings: Settings
    engine: Engine
    blobs: BlobStore
    registry: Registry
    sources: dict[str, Source]
    inbox: Inbox
    worker: Worker
    # Opens the inspector when VOICEHOOKS_ADMIN_TOKEN is unset: ``serve`` makes one per run and
    # prints a sign-in link. It guards /ui and /api only; /metrics stays as configured.
    inspector_token: SecretStr | None = None

    @classmethod
    def create(cls, settings: Settings, registry: Registry | None = None) -> Services:
        engine = create_db_engine(
            settings.database_url,
            pool_size=settings.db_pool_size,
            store_timeout=settings.store_timeout_seconds,
        )
        blobs = BlobStore(settings.blob_dir, settings.spool_dir)
        blobs.ensure_dirs()
        registry = registry if registry is not None else load_registry(settings.plugins)
        sources = load_sources(settings)
        signal = IngestSignal.in_dir(settings.data_dir)
        worker = Worker(engine, registry, sources, blobs, settings, ingest_signal=signal)
        inbox = Inbox(
            engine,
            registry,
            max_batch=settings.inbox_max_batch,
            on_new_jobs=worker.wake,
            timeout=settings.store_timeout_seconds,
            ingest_signal=signal,
        )
        return cls(settings, engine, blobs, registry, sources, inbox, worker)

    def migrate(self) -> None:
        migrate.upgrade(self.engine)

    def warn_unconfigured(self) -> list[str]:
        """Say loudly which sources will refuse everything, and return those sentences."""
        hints = [s.unconfigured_hint() for s in self.sources.values() if not s.configured()]
        for hint in hints:
            log.warning("source_not_configured", detail=hint)
        return hints

    def close(self) -> None:
        self.engine.dispose()
