"""Built-in handlers, written exactly as a third-party plugin would be.

This package is named in the ``voicehooks.handlers`` entry-point group (see pyproject.toml);
importing it imports each handler module, whose ``@handler`` decorators register them. Their
tables migrate through the ``voicehooks.migrations`` entry point (``handlers/migrations``).
"""

from handlers import (  # noqa: F401  (imported for their @handler registrations)
    elevenlabs_audio,
    elevenlabs_call_failure,
    elevenlabs_transcription,
    elevenlabs_workspace,
    kie_dialogue,
)
