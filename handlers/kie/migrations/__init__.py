"""Alembic versions for the kie.ai handlers' tables (the branch ``kie_handlers``)."""
