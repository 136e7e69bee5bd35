"""Periodic reconciliation with the ElevenLabs API: whose turn it is, across processes.

Revision ID: elevenlabs_0003
"""

import sqlalchemy as sa
from alembic import op

from receiver.store.types import UTCDateTime

revision = "elevenlabs_0003"
down_revision = "elevenlabs_0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "elevenlabs_reconcile_turns",
        sa.Column("name", sa.String(64), primary_key=True),
        sa.Column("due_at", UTCDateTime, nullable=False),
        sa.Column("holder", sa.String(256)),
        sa.Column("claimed_at", UTCDateTime),
        sa.Column("finished_at", UTCDateTime),
        sa.Column("summary", sa.JSON(none_as_null=True)),
    )


def downgrade() -> None:
    op.drop_table("elevenlabs_reconcile_turns")
