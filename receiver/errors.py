"""The one error shape every endpoint answers with: ``{"error": code, "detail": sentence}``."""

from __future__ import annotations

from starlette.responses import JSONResponse


class WebhookError(Exception):
    """A refusal with a stable machine-readable code and a sentence for humans.

    ``detail`` must never contain a secret or an expected signature: it is sent to whoever asked.
    """

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.status, self.code, self.detail = status, code, detail

    def response(self) -> JSONResponse:
        return JSONResponse({"error": self.code, "detail": self.detail}, status_code=self.status)


class AuthError(WebhookError):
    def __init__(self, code: str, detail: str) -> None:
        super().__init__(401, code, detail)
