"""A handler that does nothing, for measuring acknowledgement -> handler completion.

Loaded by the benchmark with ``VOICEHOOKS_PLUGINS=bench.probe_handler``. It does no work so that
what is measured is the framework's part: waking a worker, claiming the job, loading the event and
committing the job as done (``jobs.finished_at``). It listens to an event type of its own
(transcription-shaped bodies with ``"type": "bench_probe"``) so that no built-in handler's job
runs next to it and the number is the framework's alone.
"""

from __future__ import annotations

from receiver.events import Event, HandlerContext
from receiver.registry import Blueprint

PROBE_EVENT = "bench_probe"
blueprint = Blueprint("bench_probe")


@blueprint.handler("elevenlabs", PROBE_EVENT)
async def probe(event: Event, ctx: HandlerContext) -> None:
    """Nothing to do: the job's finished_at is the completion time the benchmark reads."""
