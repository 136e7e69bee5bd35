"""The gate in front of ``/ui/`` and ``/api/``: admin token, CSRF, security headers.

It wraps the whole mount, so a plugin's page cannot forget to check anything: every route under
it is behind the token, every state-changing request made with the browser's session cookie must
carry the CSRF token (form field ``csrf`` or header ``X-CSRF-Token``), and every answer carries a
Content-Security-Policy without inline script.
"""

from __future__ import annotations

from urllib.parse import parse_qs, quote

from starlette.datastructures import Headers, MutableHeaders
from starlette.requests import HTTPConnection
from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from receiver.ui.auth import CSRF_FIELD, CSRF_HEADER, Guard
from receiver.ui.render import api_error

# No inline script or style, no plugins, no framing; media and fetches only from here.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
    "x-frame-options": "DENY",
}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
MAX_FORM_BYTES = 64 * 1024
# Reachable without signing in: the sign-in page itself and the stylesheet/scripts it needs.
PUBLIC_PREFIXES = ("/ui/login", "/ui/static/")


class AdminOnly:
    """ASGI middleware for one mount; ``api`` mounts answer JSON errors, page mounts redirect
    to the sign-in page."""

    def __init__(self, app: ASGIApp, guard: Guard, *, api: bool) -> None:
        self.app, self.guard, self.api = app, guard, api

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        path: str = scope["path"]
        if not self.api and path.startswith(PUBLIC_PREFIXES):
            await self.app(scope, receive, send_with_headers)
            return
        how = self.guard.authenticate(HTTPConnection(scope))
        if how is None:
            await self._refuse(scope, receive, send_with_headers)
            return
        if scope["method"] not in SAFE_METHODS and how == "session":
            ok, receive = await self._csrf_ok(scope, receive)
            if not ok:
                response = api_error(
                    403, "csrf_failed", "the form is stale or forged; reload the page and retry"
                )
                await response(scope, receive, send_with_headers)
                return
        await self.app(scope, receive, send_with_headers)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response: Response
        if self.api or scope["method"] not in SAFE_METHODS:
            response = api_error(
                401, "unauthorized", "sign in, or send Authorization: Bearer <admin token>"
            )
            if self.api:
                response.headers["www-authenticate"] = "Bearer"
        else:
            target = scope["path"] + (
                "?" + scope["query_string"].decode("latin-1") if scope["query_string"] else ""
            )
            response = RedirectResponse(f"/ui/login?next={quote(target, safe='')}", 303)
        await response(scope, receive, send)

    async def _csrf_ok(self, scope: Scope, receive: Receive) -> tuple[bool, Receive]:
        """Check the header, or the ``csrf`` field of a form body (then handed on intact)."""
        headers = Headers(scope=scope)
        given = headers.get(CSRF_HEADER)
        if given is not None:
            return self.guard.csrf_matches(given), receive
        if not headers.get("content-type", "").startswith("application/x-www-form-urlencoded"):
            return False, receive
        body = b""
        more = True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                return False, receive
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_FORM_BYTES:
                return False, receive
        values = parse_qs(body.decode("latin-1")).get(CSRF_FIELD, [])
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return len(values) == 1 and self.guard.csrf_matches(values[0]), replay
