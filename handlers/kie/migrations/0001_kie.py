"""kie.ai dialogue tasks (``handlers.kie.tables.DialogueTask``).

Revision ID: kie_0001
"""

import sqlalchemy as sa
from alembic import op

from receiver.store.types import UTCDateTime

revision = "kie_0001"
down_revision = None
branch_labels = ("kie_handlers",)
depends_on = "core_0001"


def upgrade() -> None:
    op.create_table(
        "dialogue_tasks",
        sa.Column("task_id", sa.String(128), primary_key=True),
        sa.Column("model", sa.String(128)),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("kie_code", sa.Integer),
        sa.Column("kie_msg", sa.Text),
        sa.Column("dialogue", sa.JSON),
        sa.Column("stability", sa.Float),
        sa.Column("language_code", sa.String(32)),
        sa.Column("result_urls", sa.JSON),
        sa.Column("fail_code", sa.String(64)),
        sa.Column("fail_msg", sa.Text),
        sa.Column("cost_time_ms", sa.BigInteger),
        sa.Column("create_time", UTCDateTime),
        sa.Column("complete_time", UTCDateTime),
        sa.Column("raw_record", sa.JSON),
        sa.Column("audio_blob_path", sa.String(256)),
        sa.Column("audio_size", sa.BigInteger),
        sa.Column("audio_sha256", sa.String(64)),
        sa.Column("audio_content_type", sa.String(128)),
        sa.Column("audio_files", sa.JSON),
        sa.Column("audio_error", sa.Text),
        sa.Column("first_seen_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("last_delivery_id", sa.Integer),
    )
    op.create_index("ix_dialogue_tasks_state", "dialogue_tasks", ["state"])


def downgrade() -> None:
    op.drop_table("dialogue_tasks")
