"""Jobs name their handler by ``module:function``; the handlers moved into this package.

Pending, retried and dead jobs created before the move keep working: their names are rewritten.

Revision ID: elevenlabs_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "elevenlabs_0002"
down_revision = "elevenlabs_0001"
branch_labels = None
depends_on = None

RENAMED = {
    "handlers.elevenlabs_transcription:store_transcription": (
        "handlers.elevenlabs.transcription:store_transcription"
    ),
    "handlers.elevenlabs_audio:store_audio": "handlers.elevenlabs.audio:store_audio",
    "handlers.elevenlabs_call_failure:store_call_failure": (
        "handlers.elevenlabs.call_failure:store_call_failure"
    ),
    "handlers.elevenlabs_workspace:store_workspace_notice": (
        "handlers.elevenlabs.workspace:store_workspace_notice"
    ),
}
jobs = sa.table("jobs", sa.column("handler", sa.String))


def upgrade() -> None:
    for old, new in RENAMED.items():
        op.execute(jobs.update().where(jobs.c.handler == old).values(handler=new))


def downgrade() -> None:
    for old, new in RENAMED.items():
        op.execute(jobs.update().where(jobs.c.handler == new).values(handler=old))
