"""Durable storage: the inbox tables, the database engine, migrations and the blob store."""
