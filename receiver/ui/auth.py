"""Who may see the inspector: the admin token, a session cookie derived from it, CSRF tokens.

The token itself never goes into the cookie: the cookie holds ``HMAC(token, "session")``, so a
stolen cookie jar does not reveal the token (which also opens ``/metrics`` and the API). CSRF
tokens are ``HMAC(token, "csrf:" + session)``: nothing to store server-side, valid exactly as long
as the session. API clients send ``Authorization: Bearer <token>``; a browser cannot attach that
header to a forged cross-site request, so bearer requests need no CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from starlette.requests import HTTPConnection

SESSION_COOKIE = "voicehooks_session"
CSRF_HEADER = "x-csrf-token"
CSRF_FIELD = "csrf"


def _derive(token: str, purpose: str) -> str:
    return hmac.new(token.encode(), purpose.encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Guard:
    """Checks credentials against one admin token, always in constant time."""

    token: str

    @property
    def session_value(self) -> str:
        return _derive(self.token, "voicehooks-session-v1")

    def token_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.token.encode())

    def bearer_matches(self, header: str) -> bool:
        """``Authorization: Bearer <token>``, the scheme in any case (RFC 7235)."""
        scheme, _, credentials = header.strip().partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(credentials.strip())

    def session_matches(self, cookie: str) -> bool:
        return hmac.compare_digest(cookie.encode(), self.session_value.encode())

    def csrf_token(self) -> str:
        return _derive(self.token, "csrf:" + self.session_value)

    def csrf_matches(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self.csrf_token().encode())

    def authenticate(self, conn: HTTPConnection) -> str | None:
        """How the request proved itself: ``"bearer"``, ``"session"``, or None."""
        header = conn.headers.get("authorization")
        if header is not None:
            return "bearer" if self.bearer_matches(header) else None
        cookie = conn.cookies.get(SESSION_COOKIE)
        if cookie is not None and self.session_matches(cookie):
            return "session"
        return None
