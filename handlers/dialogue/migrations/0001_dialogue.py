"""Dialogue renders and their voice segments (``handlers.dialogue.tables``).

Depends on the kie.ai branch too: a kie.ai render is followed through ``dialogue_tasks``.

Revision ID: dialogue_0001
"""

import sqlalchemy as sa
from alembic import op

from receiver.store.types import UTCDateTime

revision = "dialogue_0001"
down_revision = None
branch_labels = ("dialogue_handlers",)
depends_on = ("core_0001", "kie_0001")


def upgrade() -> None:
    op.create_table(
        "dialogue_renders",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("state", sa.String(32), nullable=False),
        sa.Column("title", sa.Text),
        sa.Column("script", sa.JSON, nullable=False),
        sa.Column("delivery_id", sa.Integer),
        sa.Column("task_id", sa.String(128), unique=True),
        sa.Column("error_code", sa.String(64)),
        sa.Column("error", sa.Text),
        sa.Column("warning", sa.Text),
        sa.Column("audio_blob_path", sa.String(256)),
        sa.Column("audio_size", sa.BigInteger),
        sa.Column("audio_sha256", sa.String(64)),
        sa.Column("audio_content_type", sa.String(128)),
        sa.Column("audio_seconds", sa.Float),
        sa.Column("alignment", sa.JSON),
        sa.Column("normalized_alignment", sa.JSON),
        sa.Column("submitted_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
        sa.Column("finished_at", UTCDateTime),
    )
    op.create_index("ix_dialogue_renders_state", "dialogue_renders", ["state"])
    op.create_index("ix_dialogue_renders_delivery_id", "dialogue_renders", ["delivery_id"])
    op.create_table(
        "dialogue_voice_segments",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("render_id", sa.Integer, sa.ForeignKey("dialogue_renders.id"), nullable=False),
        sa.Column("position", sa.Integer, nullable=False),
        sa.Column("voice_id", sa.String(128), nullable=False),
        sa.Column("start_seconds", sa.Float, nullable=False),
        sa.Column("end_seconds", sa.Float, nullable=False),
        sa.Column("character_start", sa.Integer, nullable=False),
        sa.Column("character_end", sa.Integer, nullable=False),
        sa.Column("input_index", sa.Integer, nullable=False),
    )
    op.create_index(
        "ix_dialogue_voice_segments_render_id", "dialogue_voice_segments", ["render_id"]
    )


def downgrade() -> None:
    op.drop_table("dialogue_voice_segments")
    op.drop_table("dialogue_renders")
