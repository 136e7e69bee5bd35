"""Alembic, driven from code: ``voicehooks migrate`` and ``serve`` at start-up.

The core tables are one migration chain. A handler package that owns tables (the built-in ones
included) ships its own chain as an Alembic branch and names its versions directory through the
entry-point group ``voicehooks.migrations``; upgrading to ``heads`` applies them all, in
dependency order, on SQLite and Postgres alike.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
ENTRY_POINT_GROUP = "voicehooks.migrations"


def plugin_version_dirs() -> list[Path]:
    """Versions directories contributed by installed handler packages."""
    dirs = []
    for ep in entry_points(group=ENTRY_POINT_GROUP):
        module = importlib.import_module(ep.value)
        if module.__file__ is None:  # a namespace package has no directory of its own
            raise RuntimeError(f"migrations entry point {ep.name!r} ({ep.value}) is not a package")
        dirs.append(Path(module.__file__).parent)
    return sorted(set(dirs))


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    locations = [MIGRATIONS_DIR / "versions", *plugin_version_dirs()]
    config.set_main_option("version_locations", " ".join(str(p) for p in locations))
    config.set_main_option("path_separator", "space")
    config.attributes["engine"] = engine
    return config


def upgrade(engine: Engine) -> None:
    command.upgrade(alembic_config(engine), "heads")


def pending_revisions(engine: Engine) -> set[str]:
    """Heads the scripts know of that the database has not reached (empty means up to date)."""
    script = ScriptDirectory.from_config(alembic_config(engine))
    with engine.connect() as connection:
        applied = set(MigrationContext.configure(connection).get_current_heads())
        connection.rollback()
    heads = set(script.get_heads())
    reached: set[str] = set()
    for rev in applied:
        reached.update(r.revision for r in script.iterate_revisions(rev, "base"))
    return heads - reached
