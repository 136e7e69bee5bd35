"""A handler plugin for the scale-out ledger (``VOICEHOOKS_PLUGINS=bench.scaleout_plugin``).

It records one row per run in ``scaleout_effects`` (delivery id, worker pid), in the job's own
transaction: a delivery whose handler ran twice to completion shows up as two rows. The row
has no unique constraint on purpose, so a double effect is counted rather than refused.
"""

from __future__ import annotations

import os
import time

from sqlalchemy import text

from receiver.events import Event, HandlerContext
from receiver.registry import Blueprint

TABLE = "scaleout_effects"
# Long enough that every worker has jobs in hand most of the time, so a killed one dies mid-job.
SECONDS = float(os.environ.get("SCALEOUT_HANDLER_SECONDS", "0.15"))
CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {TABLE} "
    "(id BIGSERIAL PRIMARY KEY, delivery_id BIGINT NOT NULL, pid INTEGER NOT NULL)"
)

blueprint = Blueprint("scaleout")


@blueprint.handler("elevenlabs", "post_call_transcription")
def count_effect(event: Event, ctx: HandlerContext) -> None:
    """Take a little time (so a killed worker dies mid-job), then record the effect."""
    time.sleep(SECONDS)
    ctx.session.connection().execute(
        text(f"INSERT INTO {TABLE} (delivery_id, pid) VALUES (:delivery_id, :pid)"),
        {"delivery_id": event.delivery_id, "pid": os.getpid()},
    )
