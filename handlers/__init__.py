"""Built-in handlers, written exactly as a third-party plugin would be.

Each subpackage is a plugin of its own: ``handlers.elevenlabs`` and ``handlers.kie`` each build a
``Blueprint`` (their handlers, listed explicitly), own their tables and their Alembic branch, and
add their commands to the CLI, all through the entry points in pyproject.toml. Nothing in
``receiver/`` imports from here.
"""
