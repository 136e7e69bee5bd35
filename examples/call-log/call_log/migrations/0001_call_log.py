"""The call_log table (``call_log.tables.CallLogEntry``).

Revision ID: call_log_0001
"""

import sqlalchemy as sa
from alembic import op

from receiver.store.types import UTCDateTime

revision = "call_log_0001"
down_revision = None
branch_labels = ("call_log_handlers",)
depends_on = "core_0001"


def upgrade() -> None:
    op.create_table(
        "call_log",
        sa.Column("conversation_id", sa.String(256), primary_key=True),
        sa.Column("agent_id", sa.String(256)),
        sa.Column("status", sa.String(64)),
        sa.Column("duration_secs", sa.Integer),
        sa.Column("delivery_id", sa.Integer, nullable=False),
        sa.Column("logged_at", UTCDateTime, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("call_log")
