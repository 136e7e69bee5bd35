"""Alembic versions for the dialogue renders' tables (the branch ``dialogue_handlers``)."""
