"""Alembic versions of the call-log plugin (the branch ``call_log_handlers``)."""
