"""What page and API endpoints share, plugins' included: the services, templates, JSON, audio.

Endpoints are plain Starlette endpoints. Those that query the database are ordinary ``def``
functions, which Starlette runs in its thread pool, so a slow query never blocks the loop.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson
from jinja2 import ChoiceLoader, Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import FileResponse, HTMLResponse, Response

from receiver.service import Services
from receiver.ui.auth import Guard
from receiver.ui.plugins import NavEntry

TEMPLATES = Path(__file__).parent / "templates"
AUDIO_TYPES = {".mp3": "audio/mpeg", ".wav": "audio/wav", ".ogg": "audio/ogg", ".m4a": "audio/mp4"}


class UI:
    """The inspector's shared state: its template environment, navigation and guard."""

    def __init__(
        self,
        guard: Guard,
        template_dirs: list[Path],
        nav: list[NavEntry],
        sources: list[str],
        subjects: dict[str, str] | None = None,
    ) -> None:
        self.guard = guard
        self.nav = nav
        self.sources = sources
        # "<source> <event type>" -> the page path a subject id is appended to (plugins').
        self.subjects = subjects or {}
        self.env = Environment(
            loader=ChoiceLoader([FileSystemLoader(str(d)) for d in [TEMPLATES, *template_dirs]]),
            autoescape=select_autoescape(["html"], default_for_string=True),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.env.filters["clock"] = clock
        self.env.filters["nbytes"] = nbytes
        self.env.filters["when"] = when
        self.env.globals["subject_link"] = self.subject_link

    def subject_link(self, source: str, event_type: str | None, subject_id: str | None) -> str:
        """The page about a delivery's subject, or "" when no plugin has one."""
        prefix = self.subjects.get(f"{source} {event_type}")
        return f"{prefix}{quote(subject_id, safe='')}" if prefix and subject_id else ""


def services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def ui(request: Request) -> UI:
    ui: UI = request.app.state.ui
    return ui


def render(
    request: Request, name: str, context: dict[str, Any] | None = None, status_code: int = 200
) -> HTMLResponse:
    """A page from a template (autoescaped), with the navigation and the CSRF token."""
    state = ui(request)
    template = state.env.get_template(name)
    html = template.render(
        request=request,
        nav=state.nav,
        csrf=state.guard.csrf_token(),
        path=request.url.path,
        **(context or {}),
    )
    return HTMLResponse(html, status_code=status_code)


def not_found_page(request: Request, what: str) -> HTMLResponse:
    return render(request, "not_found.html", {"what": what}, status_code=404)


class JSON(Response):
    """JSON with datetimes as ISO 8601 (orjson), the shape ``--json`` prints."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, default=str, option=orjson.OPT_NON_STR_KEYS)


def api_error(status: int, code: str, detail: str) -> JSON:
    """The one error shape of the service: ``{"error": code, "detail": sentence}``."""
    return JSON({"error": code, "detail": detail}, status_code=status)


def audio_file(path: Path, media_type: str | None = None) -> Response:
    """A stored recording, with HTTP range requests (206, ``Accept-Ranges``) so players seek.

    Starlette's ``FileResponse`` answers ``Range`` headers itself (single and multiple ranges,
    416 for unsatisfiable ones).
    """
    if not path.is_file():
        return api_error(404, "not_found", "the audio file is missing from the blob store")
    if media_type is None or not media_type.startswith("audio/"):
        media_type = AUDIO_TYPES.get(path.suffix.lower(), "audio/mpeg")
    return FileResponse(path, media_type=media_type, headers={"Cache-Control": "private"})


def clock(seconds: float | None) -> str:
    """``75.2`` -> ``"1:15"``."""
    if seconds is None:
        return "-"
    whole = int(seconds)
    return f"{whole // 60}:{whole % 60:02d}"


def when(value: datetime | str | None) -> str:
    """A timestamp (or its ISO 8601 text, as the JSON shapes carry it) to the second, UTC."""
    if value is None or value == "":
        return "-"
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value)
        except ValueError:
            return str(value)
    return value.strftime("%Y-%m-%d %H:%M:%S")


def nbytes(size: int | None) -> str:
    if size is None:
        return "-"
    for unit in ("bytes", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:,} {unit}" if unit == "bytes" else f"{size:,.1f} {unit}"
        size /= 1024  # type: ignore[assignment]
    return str(size)
