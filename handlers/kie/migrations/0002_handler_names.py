"""Jobs name their handler by ``module:function``; the handler moved into this package.

Pending, retried and dead jobs created before the move keep working: their names are rewritten.

Revision ID: kie_0002
"""

import sqlalchemy as sa
from alembic import op

revision = "kie_0002"
down_revision = "kie_0001"
branch_labels = None
depends_on = None

RENAMED = {
    "handlers.kie_dialogue:record_dialogue_task": "handlers.kie.dialogue:record_dialogue_task"
}
jobs = sa.table("jobs", sa.column("handler", sa.String))


def upgrade() -> None:
    for old, new in RENAMED.items():
        op.execute(jobs.update().where(jobs.c.handler == old).values(handler=new))


def downgrade() -> None:
    for old, new in RENAMED.items():
        op.execute(jobs.update().where(jobs.c.handler == new).values(handler=old))
