"""Operator actions on the store: look at deliveries and re-queue their jobs.

Re-queueing is how a fixed handler gets a second chance at events it failed, and how a newly
installed plugin catches up: retrying a delivery resets its existing jobs and creates jobs for
handlers registered since it arrived.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, func, insert, select, update

from receiver.registry import Registry
from receiver.store.db import writer
from receiver.store.models import Delivery, Job, JobStatus
from receiver.store.types import utcnow

deliveries_table = Delivery.__table__  # type: ignore[attr-defined]
jobs_table = Job.__table__  # type: ignore[attr-defined]


@dataclass
class DeliverySummary:
    id: int
    source: str
    event_type: str | None
    subject_id: str | None
    size: int
    received_at: datetime
    status: str
    jobs: dict[str, int]

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "received_at": self.received_at.isoformat()}


def _status(jobs: dict[str, int], parse_error: str | None) -> str:
    """One word for a delivery: the worst state among its jobs."""
    if parse_error:
        return "invalid"
    for state in (JobStatus.dead, JobStatus.running, JobStatus.pending):
        if jobs.get(state):
            return str(state)
    return "done" if jobs else "stored"


def list_deliveries(
    engine: Engine, *, limit: int = 50, status: str | None = None, source: str | None = None
) -> list[DeliverySummary]:
    query = select(deliveries_table).order_by(deliveries_table.c.id.desc())
    if source:
        query = query.where(deliveries_table.c.source == source)
    if status in {s.value for s in JobStatus}:
        query = query.where(
            deliveries_table.c.id.in_(
                select(jobs_table.c.delivery_id).where(jobs_table.c.status == status)
            )
        )
    with engine.connect() as conn:
        rows = conn.execute(query.limit(limit)).all()
        ids = [row.id for row in rows]
        counts: dict[int, dict[str, int]] = {i: {} for i in ids}
        if ids:
            for delivery_id, state, n in conn.execute(
                select(jobs_table.c.delivery_id, jobs_table.c.status, func.count())
                .where(jobs_table.c.delivery_id.in_(ids))
                .group_by(jobs_table.c.delivery_id, jobs_table.c.status)
            ):
                counts[delivery_id][state] = n
    summaries = [
        DeliverySummary(
            row.id,
            row.source,
            row.event_type,
            row.subject_id,
            row.size,
            row.received_at,
            _status(counts[row.id], row.parse_error),
            counts[row.id],
        )
        for row in rows
    ]
    if status and status not in {s.value for s in JobStatus}:
        summaries = [s for s in summaries if s.status == status]
    return summaries


def get_delivery(engine: Engine, delivery_id: int) -> dict[str, Any] | None:
    with engine.connect() as conn:
        row = conn.execute(
            select(deliveries_table).where(deliveries_table.c.id == delivery_id)
        ).first()
        if row is None:
            return None
        jobs = conn.execute(
            select(jobs_table)
            .where(jobs_table.c.delivery_id == delivery_id)
            .order_by(jobs_table.c.id)
        ).all()
    info = {k: v for k, v in row._mapping.items() if k != "body"}
    info["received_at"] = row.received_at.isoformat()
    info["body_stored"] = "blob" if row.blob_path else "inline"
    info["jobs"] = [
        {
            k: (v.isoformat() if isinstance(v, datetime) else v)
            for k, v in job._mapping.items()
            if k != "lease_token"
        }
        for job in jobs
    ]
    return info


def requeue_delivery(engine: Engine, registry: Registry, delivery_id: int) -> int:
    """Re-run every handler of a delivery; returns how many jobs are now pending."""
    now = utcnow()
    with writer(engine).begin() as conn:
        row = conn.execute(
            select(
                deliveries_table.c.source,
                deliveries_table.c.event_type,
                deliveries_table.c.parse_error,
            ).where(deliveries_table.c.id == delivery_id)
        ).first()
        if row is None:
            raise LookupError(f"no delivery with id {delivery_id}")
        if row.parse_error:
            return 0
        existing = set(
            conn.execute(
                select(jobs_table.c.handler).where(jobs_table.c.delivery_id == delivery_id)
            ).scalars()
        )
        conn.execute(
            update(jobs_table)
            .where(
                jobs_table.c.delivery_id == delivery_id, jobs_table.c.status != JobStatus.running
            )
            .values(status=JobStatus.pending, attempts=0, run_at=now, finished_at=None)
        )
        missing = [
            spec.name
            for spec in registry.handlers_for(row.source, row.event_type)
            if spec.name not in existing
        ]
        if missing:
            conn.execute(
                insert(jobs_table),
                [
                    {
                        "delivery_id": delivery_id,
                        "handler": name,
                        "status": JobStatus.pending,
                        "attempts": 0,
                        "run_at": now,
                        "created_at": now,
                    }
                    for name in missing
                ],
            )
        return conn.execute(
            select(func.count())
            .select_from(jobs_table)
            .where(
                jobs_table.c.delivery_id == delivery_id, jobs_table.c.status == JobStatus.pending
            )
        ).scalar_one()


def requeue_dead(engine: Engine) -> int:
    """Give every dead job a fresh set of attempts; returns how many."""
    with writer(engine).begin() as conn:
        result = conn.execute(
            update(jobs_table)
            .where(jobs_table.c.status == JobStatus.dead)
            .values(status=JobStatus.pending, attempts=0, run_at=utcnow(), finished_at=None)
        )
        return result.rowcount  # type: ignore[attr-defined, no-any-return]
