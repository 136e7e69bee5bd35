"""A plugin loaded through VOICEHOOKS_PLUGINS=tests.plugins_inline (crash test, plugin tests)."""

import time

from receiver.registry import Blueprint

blueprint = Blueprint("plugins_inline")


@blueprint.handler("elevenlabs", "plugin_probe")
def slow_ack(event, ctx) -> None:  # type: ignore[no-untyped-def]
    # Slow enough that a backlog of jobs exists when the receiver is killed.
    time.sleep(0.02)
