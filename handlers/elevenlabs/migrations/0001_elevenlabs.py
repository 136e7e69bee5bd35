"""ElevenLabs handlers: conversations, turns, analysis, audio, call failures, workspace notices.

Revision ID: elevenlabs_0001
"""

import sqlalchemy as sa
from alembic import op

from receiver.store.types import UTCDateTime

revision = "elevenlabs_0001"
down_revision = None
branch_labels = ("elevenlabs_handlers",)
depends_on = "core_0001"


def _json() -> sa.JSON:
    return sa.JSON(none_as_null=True)


def _conversation_fk() -> sa.Column:
    return sa.Column(
        "conversation_id",
        sa.String(256),
        sa.ForeignKey("conversations.conversation_id"),
        nullable=False,
    )


def upgrade() -> None:
    op.create_table(
        "conversations",
        sa.Column("conversation_id", sa.String(256), primary_key=True),
        sa.Column("agent_id", sa.String(256)),
        sa.Column("user_id", sa.String(256)),
        sa.Column("status", sa.String(64)),
        sa.Column("start_time", UTCDateTime),
        sa.Column("duration_secs", sa.Float),
        sa.Column("cost", sa.Float),
        sa.Column("termination_reason", sa.Text),
        sa.Column("call_successful", sa.String(64)),
        sa.Column("transcript_summary", sa.Text),
        sa.Column("call_summary_title", sa.Text),
        sa.Column("dynamic_variables", _json()),
        sa.Column("data", _json()),
        sa.Column("has_audio", sa.Boolean),
        sa.Column("has_user_audio", sa.Boolean),
        sa.Column("has_response_audio", sa.Boolean),
        sa.Column("transcript_event_time", UTCDateTime),
        sa.Column("last_delivery_id", sa.Integer),
        sa.Column("created_at", UTCDateTime, nullable=False),
        sa.Column("updated_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_conversations_agent_id", "conversations", ["agent_id"])
    op.create_index("ix_conversations_start_time", "conversations", ["start_time"])

    op.create_table(
        "conversation_turns",
        sa.Column("id", sa.Integer, primary_key=True),
        _conversation_fk(),
        sa.Column("turn_index", sa.Integer, nullable=False),
        sa.Column("role", sa.String(32)),
        sa.Column("message", sa.Text),
        sa.Column("time_in_call_secs", sa.Float),
        sa.Column("tool_calls", _json()),
        sa.Column("tool_results", _json()),
        sa.Column("metrics", _json()),
        sa.UniqueConstraint("conversation_id", "turn_index", name="uq_conversation_turns_index"),
    )

    op.create_table(
        "conversation_evaluations",
        sa.Column("id", sa.Integer, primary_key=True),
        _conversation_fk(),
        sa.Column("criteria_id", sa.String(256), nullable=False),
        sa.Column("result", sa.String(64)),
        sa.Column("rationale", sa.Text),
        sa.UniqueConstraint("conversation_id", "criteria_id", name="uq_conversation_evaluations"),
    )
    op.create_index("ix_conversation_evaluations_result", "conversation_evaluations", ["result"])

    op.create_table(
        "conversation_data_collection",
        sa.Column("id", sa.Integer, primary_key=True),
        _conversation_fk(),
        sa.Column("field_id", sa.String(256), nullable=False),
        sa.Column("value", _json()),
        sa.Column("json_schema", _json()),
        sa.Column("rationale", sa.Text),
        sa.UniqueConstraint("conversation_id", "field_id", name="uq_conversation_data_collection"),
    )

    op.create_table(
        "conversation_audio",
        sa.Column(
            "conversation_id",
            sa.String(256),
            sa.ForeignKey("conversations.conversation_id"),
            primary_key=True,
        ),
        sa.Column("blob_path", sa.String(256), nullable=False),
        sa.Column("size", sa.Integer, nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("delivery_id", sa.Integer, nullable=False),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )

    op.create_table(
        "call_failures",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("delivery_id", sa.Integer, nullable=False, unique=True),
        sa.Column("agent_id", sa.String(256)),
        sa.Column("conversation_id", sa.String(256)),
        sa.Column("failure_reason", sa.String(64)),
        sa.Column("provider_type", sa.String(32)),
        sa.Column("sip_status_code", sa.Integer),
        sa.Column("sip_reason", sa.Text),
        sa.Column("twilio_call_sid", sa.String(64)),
        sa.Column("twilio_call_status", sa.String(32)),
        sa.Column("raw_metadata", _json()),
        sa.Column("event_time", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_call_failures_agent_id", "call_failures", ["agent_id"])
    op.create_index("ix_call_failures_conversation_id", "call_failures", ["conversation_id"])

    op.create_table(
        "workspace_notices",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("delivery_id", sa.Integer, nullable=False, unique=True),
        sa.Column("event_type", sa.String(128), nullable=False),
        sa.Column("voice_id", sa.String(256)),
        sa.Column("data", _json()),
        sa.Column("event_time", UTCDateTime),
        sa.Column("created_at", UTCDateTime, nullable=False),
    )
    op.create_index("ix_workspace_notices_voice_id", "workspace_notices", ["voice_id"])


def downgrade() -> None:
    for table in (
        "workspace_notices",
        "call_failures",
        "conversation_audio",
        "conversation_data_collection",
        "conversation_evaluations",
        "conversation_turns",
        "conversations",
    ):
        op.drop_table(table)
