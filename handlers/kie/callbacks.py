"""Tasks known only from their stored callbacks: shown by ``voicehooks tasks`` from the first one.

The handler writes a task's row in the same transaction as its job's end, so while the result
audio's download is still being retried (or after the job died before writing) the table has no
row, although the callback itself is stored. Its result URLs expire within a day, so the operator
must see them now: this reads the stored callbacks of unfinished jobs and describes each task
they name that has no row yet, with the job's state and its last error (why the download fails).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import Engine

from handlers.kie.tables import recorded_ids, redact
from receiver import jobs
from receiver.sources.kie.models import parse_callback
from receiver.store.blobs import BlobStore


def _body(delivery: jobs.UnfinishedDelivery, blobs: BlobStore) -> bytes | None:
    if delivery.body is not None:
        return delivery.body
    if delivery.blob_path:
        try:
            return blobs.path(delivery.blob_path).read_bytes()
        except OSError:
            return None
    return None


def pending_tasks(engine: Engine, blobs: BlobStore) -> list[dict[str, Any]]:
    """Tasks named by unfinished callbacks that have no row yet, newest callback first, in the
    same shape as ``tables.task_as_dict`` plus ``job_status``."""
    deliveries = jobs.unfinished_deliveries(engine, "kie")
    known = recorded_ids(engine, {d.subject_id for d in deliveries if d.subject_id})
    tasks: dict[str, dict[str, Any]] = {}
    for delivery in deliveries:
        task_id = delivery.subject_id
        if not task_id or task_id in known or task_id in tasks:
            continue
        body = _body(delivery, blobs)
        try:
            callback = parse_callback(json.loads(body)) if body is not None else None
        except ValueError:
            callback = None
        record = callback.data if callback is not None else None
        received = delivery.received_at.isoformat()
        tasks[task_id] = {
            "task_id": task_id,
            "model": record.model if record else None,
            "state": (record.state if record else None) or "unknown",
            "dialogue": [t.model_dump() for t in record.dialogue] if record else None,
            "result_urls": redact(record.result_urls) if record else None,
            "fail_code": record.fail_code if record else None,
            "fail_msg": record.fail_msg if record else None,
            "audio_blob_path": None,
            "audio_error": delivery.last_error,
            "job_status": delivery.job_status,
            "first_seen_at": received,
            "updated_at": received,
            "last_delivery_id": delivery.id,
        }
    return list(tasks.values())
