"""Inbox: deliveries and their jobs.

Revision ID: core_0001
"""

import sqlalchemy as sa
from alembic import op

from receiver.store.types import UTCDateTime

revision = "core_0001"
down_revision = None
branch_labels = ("core",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "deliveries",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source", sa.String(32), nullable=False),
        sa.Column("event_type", sa.String(128)),
        sa.Column("dedupe_key", sa.String(512), nullable=False),
        sa.Column("subject_id", sa.String(256)),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("body", sa.LargeBinary),
        sa.Column("blob_path", sa.String(256)),
        sa.Column("content_type", sa.String(128)),
        sa.Column("auth_method", sa.String(32), nullable=False),
        sa.Column("auth_key_index", sa.Integer),
        sa.Column("parse_error", sa.Text),
        sa.Column("received_at", UTCDateTime, nullable=False),
        sa.UniqueConstraint("source", "dedupe_key", name="uq_deliveries_dedupe"),
    )
    op.create_index("ix_deliveries_event_type", "deliveries", ["event_type"])
    op.create_index("ix_deliveries_subject_id", "deliveries", ["subject_id"])
    op.create_table(
        "jobs",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("delivery_id", sa.Integer, sa.ForeignKey("deliveries.id"), nullable=False),
        sa.Column("handler", sa.String(256), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.Column("run_at", UTCDateTime, nullable=False),
        sa.Column("lease_until", UTCDateTime),
        sa.Column("lease_token", sa.String(64)),
        sa.Column("last_error", sa.Text),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
    )
    op.create_index("ix_jobs_delivery_id", "jobs", ["delivery_id"])
    op.create_index("ix_jobs_due", "jobs", ["status", "run_at"])


def downgrade() -> None:
    op.drop_table("jobs")
    op.drop_table("deliveries")
