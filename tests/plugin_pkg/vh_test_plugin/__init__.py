"""A third-party handler: appends each delivery it sees to the file named by VH_PLUGIN_MARKER."""

import os

from receiver.registry import Blueprint

blueprint = Blueprint("vh_test_plugin")


@blueprint.handler("elevenlabs", "post_call_transcription")
def record_delivery(event, ctx) -> None:  # type: ignore[no-untyped-def]
    with open(os.environ["VH_PLUGIN_MARKER"], "a") as marker:
        marker.write(f"{event.delivery_id} {event.subject_id} {event.payload.data.agent_id}\n")
