"""Logging in one format: human-readable on a terminal, JSON lines otherwise (for log shippers).

structlog renders our own events; records from the standard library (uvicorn, Alembic, httpx,
anything a plugin uses) go through the same processors by way of structlog's
``ProcessorFormatter`` on the root handler, so a log shipper never sees two formats. Alembic's
"Context impl SQLiteImpl" lines are debug chatter: they show only at ``debug``.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog

# Libraries whose INFO lines are noise on every command; shown at debug level only. httpx logs
# every request's full URL at INFO, and a URL can carry a credential (kie.ai's ?token=).
CHATTY_LOGGERS = ("alembic", "httpx", "httpcore")


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    # Looked up per call, not captured once: test runners and daemons swap sys.stderr.
    return structlog.PrintLogger(sys.stderr)


class _StderrHandler(logging.StreamHandler[Any]):
    """A handler that writes to whatever ``sys.stderr`` is at the time (see above)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> Any:
        return sys.stderr

    @stream.setter
    def stream(self, _value: Any) -> None:
        pass


def configure(level: str = "info") -> None:
    numeric = getattr(logging, level.upper(), logging.INFO)
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer: Any
    if sys.stderr.isatty():
        renderer = structlog.dev.ConsoleRenderer()
        tail: list[Any] = []
    else:
        renderer = structlog.processors.JSONRenderer()
        tail = [structlog.processors.format_exc_info]
    structlog.configure(
        processors=[*shared, *tail, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=_stderr_logger,
        cache_logger_on_first_use=False,
    )
    handler = _StderrHandler()
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    for old in list(root.handlers):  # ours from an earlier call; others' (pytest's) stay
        if isinstance(old, _StderrHandler):
            root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(numeric)
    for name in CHATTY_LOGGERS:
        logging.getLogger(name).setLevel(max(numeric, logging.WARNING))
    # uvicorn configures its own handlers unless told not to (``log_config=None``, see
    # receiver.app.server_options); clear any, so its records reach the root handler above.
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
