"""Alembic versions for the ElevenLabs handlers' tables (the branch ``elevenlabs_handlers``)."""
