"""The inspector: pages under ``/ui/`` and the JSON API under ``/api/v1/``.

``mount(app, services)`` adds both to the app, with the core's pages (overview, deliveries, dead
jobs) and every plugin's pages from the entry-point group ``voicehooks.pages``
(``receiver.ui.plugins``). Both mounts sit behind ``AdminOnly`` (admin token, CSRF, CSP).
"""

from __future__ import annotations

import secrets

import structlog
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from receiver.service import Services
from receiver.ui import api, pages
from receiver.ui.auth import Guard
from receiver.ui.middleware import AdminOnly
from receiver.ui.plugins import NavEntry, Pages, load_pages
from receiver.ui.render import UI

log = structlog.get_logger(__name__)
STATIC = pages.TEMPLATES.parent / "static"
# The last route of each mount answers what nothing else matched in the mount's own format.
ANY_METHOD = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"]


def mount(app: Starlette, services: Services, plugins: list[Pages] | None = None) -> None:
    """Add ``/ui`` and ``/api`` to ``app``; without an admin token the inspector is locked."""
    token = services.settings.admin_token or services.inspector_token
    if token is None:
        log.warning("inspector_locked", detail="set VOICEHOOKS_ADMIN_TOKEN to use /ui and /api")
        guard = Guard(secrets.token_urlsafe(32))
    else:
        guard = Guard(token.get_secret_value())
    plugins = load_pages() if plugins is None else plugins
    nav = [NavEntry("Overview", ""), NavEntry("Deliveries", "deliveries")]
    nav += [entry for plugin in plugins for entry in plugin.nav]
    nav.append(NavEntry("Dead jobs", "dead"))
    app.state.ui = UI(
        guard,
        [p.templates for p in plugins if p.templates is not None],
        nav,
        sorted(services.sources),
        {
            f"{source} {event_type}": f"/ui/{path}"
            for plugin in plugins
            for (source, event_type), path in plugin.subjects.items()
        },
    )
    static = [
        Mount(f"/static/{p.name}", app=StaticFiles(directory=p.static))
        for p in plugins
        if p.static is not None
    ]
    ui_routes = [
        *static,
        Mount("/static", app=StaticFiles(directory=STATIC), name="static"),
        *pages.routes,
        *(route for p in plugins for route in p.routes),
        Route("/{rest:path}", pages.no_such_page, methods=ANY_METHOD),
    ]
    api_routes = [
        *api.routes,
        *(route for p in plugins for route in p.api_routes),
        Route("/{rest:path}", api.no_such_endpoint, methods=ANY_METHOD),
    ]
    app.router.routes.extend(
        [
            Mount("/ui", routes=ui_routes, middleware=[Middleware(AdminOnly, guard, api=False)]),
            Mount(
                "/api/v1", routes=api_routes, middleware=[Middleware(AdminOnly, guard, api=True)]
            ),
        ]
    )
