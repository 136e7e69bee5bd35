"""Retention: forget the stored bodies of old, finished deliveries (``voicehooks prune``).

Call transcripts and recordings are personal data; keeping every body forever is a liability.
A delivery older than the retention period whose jobs are all done loses its body (the row
stays, marked ``pruned_at``, as the audit trail) and its body blob, unless another delivery still
refers to that blob. What handlers stored in their own tables (conversations, call audio, task
results) is theirs and is not touched. ``VOICEHOOKS_RETENTION_DAYS`` runs this once a day in
every worker (serve's in-process ones and ``voicehooks worker``); running it twice, or in two
processes at once, is harmless: a pruned delivery is not selected again.
"""

from __future__ import annotations

from datetime import timedelta

import anyio
import structlog
from sqlalchemy import Engine

from receiver import jobs
from receiver.store.blobs import BlobStore
from receiver.store.types import utcnow

log = structlog.get_logger(__name__)
DAY_SECONDS = 24 * 3600.0


def prune(engine: Engine, blobs: BlobStore, days: float, *, dry_run: bool = False) -> jobs.Pruned:
    """Prune deliveries older than ``days``; the blob files go after the rows are committed, so
    a crash in between leaves an unreferenced file, never a row pointing at nothing."""
    result = jobs.prune_deliveries(engine, utcnow() - timedelta(days=days), dry_run=dry_run)
    if not dry_run:
        for relpath in result.blob_paths:
            blobs.path(relpath).unlink(missing_ok=True)
    return result


async def prune_daily(engine: Engine, blobs: BlobStore, days: float) -> None:
    """Prune now and then every day, until cancelled; a failed run is logged and retried the
    next day (the deliveries are still there to prune)."""
    while True:
        try:
            result = await anyio.to_thread.run_sync(prune, engine, blobs, days)
        except Exception:
            log.exception("retention_failed", retention_days=days)
        else:
            if result.deliveries:
                log.info(
                    "retention_pruned",
                    deliveries=result.deliveries,
                    bytes=result.bytes,
                    blobs=len(result.blob_paths),
                    retention_days=days,
                )
        await anyio.sleep(DAY_SECONDS)
