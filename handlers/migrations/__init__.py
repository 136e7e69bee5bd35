"""Alembic versions for the built-in handlers' tables (one branch per handler family)."""
