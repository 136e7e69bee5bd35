"""ElevenLabs Agents Platform events -> conversations, turns, analysis, call audio, notices.

The plugin's whole surface is listed here, as Starlette lists its routes: which handler runs for
which event, what it adds to the demo report, and its periodic task (reconciliation with the
ElevenLabs API, off unless ``VOICEHOOKS_ELEVENLABS_RECONCILE_SECONDS`` is set). Tables live in
``tables``, their migrations in ``migrations``, the ``conversations`` command in ``cli`` and
``elevenlabs backfill`` in ``cli_backfill``, each named in pyproject.toml.
"""

from handlers.elevenlabs import report
from handlers.elevenlabs.audio import store_audio
from handlers.elevenlabs.backfill import reconcile_interval, reconcile_periodically
from handlers.elevenlabs.call_failure import store_call_failure
from handlers.elevenlabs.tables import SOURCE, blob_paths
from handlers.elevenlabs.transcription import store_transcription
from handlers.elevenlabs.workspace import store_workspace_notice
from receiver.registry import Blueprint
from receiver.sources.elevenlabs.models import (
    CALL_INITIATION_FAILURE,
    POST_CALL_AUDIO,
    POST_CALL_TRANSCRIPTION,
    VOICE_REMOVAL_NOTICE,
    VOICE_REMOVAL_NOTICE_WITHDRAWN,
    VOICE_REMOVED,
)

blueprint = Blueprint("elevenlabs")
blueprint.add(SOURCE, POST_CALL_TRANSCRIPTION, store_transcription)
blueprint.add(SOURCE, POST_CALL_AUDIO, store_audio)
blueprint.add(SOURCE, CALL_INITIATION_FAILURE, store_call_failure)
for notice in (VOICE_REMOVAL_NOTICE, VOICE_REMOVAL_NOTICE_WITHDRAWN, VOICE_REMOVED):
    blueprint.add(SOURCE, notice, store_workspace_notice)
blueprint.report(report.conversations_table)
blueprint.report(report.call_failures_table)
blueprint.report(report.notices_table)
blueprint.periodic(reconcile_interval, reconcile_periodically)
blueprint.blob_references(blob_paths)
