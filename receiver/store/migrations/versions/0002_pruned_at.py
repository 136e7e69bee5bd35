"""Deliveries remember when retention removed their body (``voicehooks prune``).

Revision ID: core_0002
"""

import sqlalchemy as sa
from alembic import op

from receiver.store.types import UTCDateTime

revision = "core_0002"
down_revision = "core_0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.add_column(sa.Column("pruned_at", UTCDateTime, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("deliveries") as batch:
        batch.drop_column("pruned_at")
