"""Deliveries remember conflicting copies: the same dedupe key with a different body.

Revision ID: core_0003
"""

import sqlalchemy as sa
from alembic import op

from receiver.store.types import UTCDateTime

revision = "core_0003"
down_revision = "core_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(
            sa.Column("conflicts", sa.Integer, nullable=False, server_default=sa.text("0"))
        )
        batch.add_column(sa.Column("last_conflict_sha256", sa.String(64)))
        batch.add_column(sa.Column("last_conflict_at", UTCDateTime))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("last_conflict_at")
        batch.drop_column("last_conflict_sha256")
        batch.drop_column("conflicts")
