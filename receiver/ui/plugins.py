"""Pages that plugins add to the inspector, found through the entry-point group
``voicehooks.pages``, as the CLI finds plugin commands through ``voicehooks.commands``.

Each entry point names a ``Pages`` object (or a function returning one)::

    [project.entry-points."voicehooks.pages"]
    elevenlabs = "handlers.elevenlabs.pages:pages"

Its ``routes`` are mounted under ``/ui/``, its ``api_routes`` under ``/api/v1/`` (both behind the
admin token, CSRF-checked and served with the pages' Content-Security-Policy), its ``templates``
directory joins the template search path (name templates ``<plugin>/<page>.html`` and extend
``base.html``), its ``static`` directory is served at ``/ui/static/<name>/`` (scripts must be
files: the pages allow no inline script), its ``nav`` entries appear in the top bar, and its
``subjects`` turn a delivery's subject id into a link to the plugin's page about it (a
conversation, a task): ``{("elevenlabs", "post_call_audio"): "conversations/"}`` links subject
``c1`` of such deliveries to ``/ui/conversations/c1``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

from starlette.routing import BaseRoute

PAGES_GROUP = "voicehooks.pages"


@dataclass(frozen=True)
class NavEntry:
    """A link in the top bar: ``path`` is relative to ``/ui/`` (``"conversations"``)."""

    label: str
    path: str


@dataclass
class Pages:
    """What one plugin adds to the inspector."""

    name: str
    routes: Sequence[BaseRoute] = ()
    api_routes: Sequence[BaseRoute] = ()
    templates: Path | None = None
    static: Path | None = None
    nav: Sequence[NavEntry] = field(default_factory=tuple)
    subjects: Mapping[tuple[str, str], str] = field(default_factory=dict)


def load_pages() -> list[Pages]:
    """Every installed plugin's pages, sorted by name; a broken plugin is a clear error."""
    found: list[Pages] = []
    for ep in entry_points(group=PAGES_GROUP):
        try:
            obj: object = ep.load()
            if callable(obj) and not isinstance(obj, Pages):
                obj = obj()
        except Exception as exc:
            raise RuntimeError(
                f"cannot load the pages {ep.name!r} ({ep.value}): {type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(obj, Pages):
            raise RuntimeError(
                f"the pages entry point {ep.name!r} ({ep.value}) gives "
                f"{type(obj).__name__}, not receiver.ui.plugins.Pages"
            )
        found.append(obj)
    return sorted(found, key=lambda pages: pages.name)
