"""The inbox: every authentic delivery, and the jobs that process it.

A delivery is immutable once stored; everything that changes (attempts, errors, leases) lives on
its jobs. That split is what makes replay safe: re-queueing a job never touches the evidence.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Column, Index, LargeBinary, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from receiver.store.types import UTCDateTime, utcnow


class JobStatus(StrEnum):
    pending = "pending"
    running = "running"
    done = "done"
    dead = "dead"


class Delivery(SQLModel, table=True):
    __tablename__ = "deliveries"
    __table_args__ = (UniqueConstraint("source", "dedupe_key", name="uq_deliveries_dedupe"),)

    id: int | None = Field(default=None, primary_key=True)
    source: str = Field(max_length=32)
    event_type: str | None = Field(default=None, max_length=128, index=True)
    dedupe_key: str = Field(max_length=512)
    subject_id: str | None = Field(default=None, max_length=256, index=True)
    sha256: str = Field(max_length=64)
    size: int
    # Small bodies live in the row; large ones in the blob store (path relative to its root).
    body: bytes | None = Field(default=None, sa_column=Column(LargeBinary, nullable=True))
    blob_path: str | None = Field(default=None, max_length=256)
    content_type: str | None = Field(default=None, max_length=128)
    auth_method: str = Field(max_length=32)
    auth_key_index: int | None = None
    parse_error: str | None = Field(default=None, sa_type=Text)
    received_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    # Set by retention (`voicehooks prune`): the body and its blob are gone, the row stays.
    pruned_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
    # Copies that came later with the same dedupe key but a different body (sha256): answered
    # 200 like any duplicate, and counted here so they are never silently dropped.
    conflicts: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    last_conflict_sha256: str | None = Field(default=None, max_length=64)
    last_conflict_at: datetime | None = Field(default=None, sa_type=UTCDateTime)


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_due", "status", "run_at"),)

    id: int | None = Field(default=None, primary_key=True)
    delivery_id: int = Field(foreign_key="deliveries.id", index=True)
    handler: str = Field(max_length=256)
    status: str = Field(default=JobStatus.pending, max_length=16)
    attempts: int = 0
    run_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    lease_until: datetime | None = Field(default=None, sa_type=UTCDateTime)
    lease_token: str | None = Field(default=None, max_length=64)
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = Field(default_factory=utcnow, sa_type=UTCDateTime)
    finished_at: datetime | None = Field(default=None, sa_type=UTCDateTime)
